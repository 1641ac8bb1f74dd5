"""Does choosing the K most `similar` prompts beat the K most `recent` ones? Measured side by side on the same
held-out synthetic episodes: each episode has a pool of candidate prompts (all annotating its category, in an
arbitrary "newest first" order) and one target; both strategies pick K from the same pool.
Prints mIoU per strategy and K; the last line is `ratio=<similar mIoU / recent mIoU>` at the largest K.

    python bench/prompt_strategy.py --weights DIR [--episodes 100] [--pool 8] [--k 1 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a trained model (random weights give 0 for both)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()

    from seggpt_core import Prompt, SegGptPredictor, load_model
    from seggpt_core.embedding import image_embedding
    from seggpt_core.evaluation import HELD_OUT_SEED, EvalReport, iou
    from seggpt_core.synthetic import make_episode
    from worker.selection import select

    model = load_model(args.weights, device="cpu")
    predictor = SegGptPredictor(model)
    size = model.config.half_size
    reports = {(strategy, k): EvalReport() for strategy in ("similar", "recent") for k in args.k}
    for index in range(args.episodes):
        episode = make_episode(HELD_OUT_SEED + 700_000 + index, shots=args.pool, targets=1, size=size)
        category = episode.categories[0]
        predictor.set_prompts([Prompt(s.image, {category: s.masks[category]}) for s in episode.prompts])
        target = episode.targets[0]
        prepared = predictor.prepare_target(target.image)
        embeddings = [image_embedding(predictor.prompt_image(i)) for i in range(len(episode.prompts))]
        target_embedding = image_embedding(target.image.resize((size[1], size[0])))
        for (strategy, k), report in reports.items():
            selection = select(predictor.annotated_by(), k, strategy, embeddings, target_embedding)
            result = predictor.predict_prepared([prepared], [selection])[0]
            report.add(category, iou(result.masks[category], target.masks[category]))
    print(f"episodes={args.episodes} pool={args.pool} weights={args.weights}")
    for (strategy, k), report in reports.items():
        print(f"{strategy:8s} k={k} mIoU={report.miou:.4f}")
    k = max(args.k)
    recent = reports[("recent", k)].miou
    print(f"ratio={reports[('similar', k)].miou / recent:.3f}" if recent else "ratio=nan")


if __name__ == "__main__":
    main()
