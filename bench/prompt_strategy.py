"""Does choosing the K most `similar` prompts beat the K most `recent` ones, on a pool that mixes conditions?

Each held-out appearance episode has a pool of `--pool` candidate prompts (all annotating its label, in an
arbitrary "newest first" order). Half of them are seen under one global light (a gain and a tint per channel),
half under another, and the target shares one of the two: the situation of a project whose images come from two
cameras or two times of day. Both strategies pick K from the same pool for the same target. Prints mIoU per
strategy and K; the last line is `similar_minus_recent=<difference at the largest K> ratio=<similar / recent>`.

    python bench/prompt_strategy.py [--weights tiny-appearance] [--episodes 200] [--pool 8] [--k 1 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_condition(rng):
    """A global light: per-channel gains in 0.55..1.0 and a tint of up to 50 levels per channel."""
    return rng.uniform(0.55, 1.0, size=3), rng.uniform(-50, 50, size=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="tiny-appearance")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()

    import numpy as np

    from seggpt_core import Prompt, SegGptPredictor, load_model
    from seggpt_core.embedding import image_embedding
    from seggpt_core.research.appearance import apply_condition, make_appearance_episode
    from seggpt_core.research.evaluation import HELD_OUT_SEED, EvalReport, iou
    from worker.selection import select

    model = load_model(args.weights, device="cpu")
    predictor = SegGptPredictor(model)
    size = model.config.half_size
    reports = {(strategy, k): EvalReport() for strategy in ("similar", "recent") for k in args.k}
    for index in range(args.episodes):
        seed = HELD_OUT_SEED + 700_000 + index
        episode = make_appearance_episode(seed, shots=args.pool, targets=1)
        rng = np.random.default_rng([seed, 5])
        conditions = [random_condition(rng), random_condition(rng)]
        # half the pool under each light, in a shuffled order; the target under the first
        lights = rng.permutation([i % 2 for i in range(args.pool)])
        prompts = [apply_condition(s.image, *conditions[light]) for s, light in zip(episode.prompts, lights)]
        label = episode.categories[0]
        predictor.set_prompts([Prompt(image, {label: s.masks[label]}) for image, s in zip(prompts, episode.prompts)])
        target = episode.targets[0]
        target_image = apply_condition(target.image, *conditions[0])
        prepared = predictor.prepare_target(target_image)
        embeddings = [image_embedding(predictor.prompt_image(i)) for i in range(len(prompts))]
        target_embedding = image_embedding(target_image.resize((size[1], size[0])))
        for (strategy, k), report in reports.items():
            selection = select(predictor.annotated_by(), k, strategy, embeddings, target_embedding)
            result = predictor.predict_prepared([prepared], [selection])[0]
            report.add(episode.group(label), iou(result.masks[label], target.masks[label]))
    print(f"episodes={args.episodes} pool={args.pool} (half under another light) weights={args.weights}")
    for (strategy, k), report in reports.items():
        print(f"{strategy:8s} k={k} mIoU={report.miou:.4f}")
    k = max(args.k)
    similar, recent = reports[("similar", k)].miou, reports[("recent", k)].miou
    print(f"similar_minus_recent={similar - recent:.4f} ratio={similar / recent:.3f}" if recent else "ratio=nan")


if __name__ == "__main__":
    main()
