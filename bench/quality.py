"""The shipped small model's measured quality, every figure of issue 14 that `seggpt-ls eval` can give, side by
side in one run on the same held-out episodes (200 by default), with the goal beside each:

1. one-shot mIoU on appearance-class episodes (goal >= 0.75), and random weights of the same config (< 0.1);
2. the prompt swap: mIoU with another class's prompt, as a ratio of the own prompt's (goal <= 0.3);
3. 5-shot against 1-shot on episodes whose instances vary (jitter 32, four times the standard and twice the top
   of one-shot training's range; goal >= +0.03), and at jitters 16 and 24, where one prompt already shows most
   of the spread;
4. prediction score against IoU, Spearman (goal >= 0.5), for both scores (crisp, and agreement);
8. two labels painted in one forward against each label alone (goal >= 0.9x).
Also the harder sets, reported without goals: shape-category episodes, and the held-out family of textures,
shapes and backgrounds that training never draws (own and swapped prompt). The last line holds every figure as
name=value pairs.

    python bench/quality.py [--weights tiny-appearance] [--episodes 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="tiny-appearance")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--varied-jitter", type=float, default=32.0, help="instance brightness spread of the varied episodes: four times the standard 8, twice the top of training's range")
    args = parser.parse_args()

    import torch

    from seggpt_core import SegGptPredictor, build_model, load_model
    from seggpt_core.research.evaluation import evaluate_synthetic

    torch.manual_seed(0)
    model = load_model(args.weights, device="cpu")
    own = SegGptPredictor(model)
    n = args.episodes
    started = time.perf_counter()
    figures: dict[str, float] = {}

    def line(name: str, value: float, goal: str = "") -> None:
        figures[name] = value
        print(f"{name:28s} {value:8.4f}  {goal}", flush=True)

    one = evaluate_synthetic(own, n, prompt_swap=True)
    line("one_shot_miou", one.miou, "goal >= 0.75")
    line("random_weights_miou", evaluate_synthetic(SegGptPredictor(build_model(model.config, seed=0)), n).miou, "goal < 0.1")
    line("swapped_prompt_miou", one.swapped_miou)
    line("swap_ratio", one.swap_ratio, "goal <= 0.3")
    line("score_iou_spearman", one.score_iou_spearman, "(score crisp, the default)")
    agreeing = evaluate_synthetic(SegGptPredictor(model, score="agreement"), n)
    line("agreement_score_spearman", agreeing.score_iou_spearman, "goal >= 0.5 (SEGGPT_SCORE=agreement)")
    varied_one = evaluate_synthetic(own, n, jitter=args.varied_jitter)
    varied_five = evaluate_synthetic(own, n, shots=5, jitter=args.varied_jitter)
    line("varied_1shot_miou", varied_one.miou)
    line("varied_5shot_miou", varied_five.miou)
    line("five_minus_one_shot", varied_five.miou - varied_one.miou, "goal >= 0.03")
    for spread in (16.0, 24.0):
        milder_one = evaluate_synthetic(own, n, jitter=spread)
        milder_five = evaluate_synthetic(own, n, shots=5, jitter=spread)
        line(f"jitter{spread:g}_five_minus_one", milder_five.miou - milder_one.miou, f"(1-shot {milder_one.miou:.4f})")
    plain_five = evaluate_synthetic(own, n, shots=5)
    line("five_shot_miou", plain_five.miou, f"(jitter 8; 1-shot {one.miou:.4f})")
    alone = evaluate_synthetic(SegGptPredictor(model, labels_per_forward=1), n, labels=2)
    together = evaluate_synthetic(SegGptPredictor(model, labels_per_forward=0), n, labels=2)
    line("two_labels_alone_miou", alone.miou)
    line("two_labels_one_forward_miou", together.miou)
    line("one_forward_ratio", together.miou / alone.miou if alone.miou else 0.0, "goal >= 0.9, else labels_per_forward=1")
    held = evaluate_synthetic(own, n, prompt_swap=True, family="heldout")
    line("heldout_family_miou", held.miou, "(no goal: unseen textures, shapes, backgrounds)")
    line("heldout_family_swapped", held.swapped_miou)
    shapes = evaluate_synthetic(own, n, prompt_swap=True, task="shapes")
    line("shape_episodes_miou", shapes.miou, "(no goal: the harder set)")
    line("shape_episodes_swapped", shapes.swapped_miou)
    print("per texture, one-shot: " + ", ".join(f"{k} {v:.3f}" for k, v in one.class_means.items()))
    print(f"weights={args.weights} episodes={n} {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} thread(s)")
    print(" ".join(f"{k}={v:.4f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
