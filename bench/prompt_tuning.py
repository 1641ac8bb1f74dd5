"""Does a tuned prompt beat one-shot? Measured side by side, per shape category, on the same held-out targets.

For each category: `--examples` labeled scenes (the project's labeled tasks). Baselines: one-shot from the first
example (where tuning starts), and the K-shot feature ensemble of the first K examples. Then the prompt is tuned on
all examples, SegGPT frozen. Prints mIoU per method and category; the last line is
`ratio=<tuned mIoU / one-shot mIoU>`.

    python bench/prompt_tuning.py [--weights tiny-shapes] [--examples 16] [--targets 40] [--steps 150]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="tiny-shapes")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()

    import torch

    from seggpt_core import Prompt, SegGptPredictor, load_model
    from seggpt_core.evaluation import HELD_OUT_SEED, EvalReport, iou
    from seggpt_core.prompt_tuning import TuneSettings, tune_prompt
    from seggpt_core.synthetic import CATEGORIES, category_scenes

    torch.manual_seed(0)
    model = load_model(args.weights, device="cpu")
    predictor = SegGptPredictor(model)
    reports = {name: EvalReport() for name in ("one-shot", f"{args.k}-shot", "tuned")}
    seconds = 0.0
    for offset, category in enumerate(CATEGORIES):
        examples = [Prompt(s.image, {category: s.masks[category]})
                    for s in category_scenes(category, args.examples, HELD_OUT_SEED + 1_200_000 + 1000 * offset)]
        targets = category_scenes(category, args.targets, HELD_OUT_SEED + 1_300_000 + 1000 * offset)
        started = time.perf_counter()
        learned = tune_prompt(model, examples, TuneSettings(steps=args.steps))
        seconds += time.perf_counter() - started
        setups = {"one-shot": (examples[:1], None), f"{args.k}-shot": (examples[: args.k], None), "tuned": ([], learned)}
        for name, (prompts, tuned) in setups.items():
            predictor.set_prompts(prompts, learned=tuned)
            for target, result in zip(targets, predictor.predict([t.image for t in targets])):
                reports[name].add(category, iou(result.masks[category], target.masks[category]))
        print(f"{category:9s} " + "  ".join(f"{name} {report.class_means[category]:.4f}" for name, report in reports.items()), flush=True)
    print(f"weights={args.weights} examples={args.examples} targets={args.targets} steps={args.steps} "
          f"tuning {seconds / len(CATEGORIES):.1f} s per category on {torch.get_num_threads()} thread(s)")
    for name, report in reports.items():
        print(f"{name:9s} mIoU={report.miou:.4f}")
    print(f"ratio={reports['tuned'].miou / reports['one-shot'].miou:.3f}")


if __name__ == "__main__":
    main()
