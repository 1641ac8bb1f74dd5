"""Does choosing the K most `similar` prompts beat the K most `recent` ones, on a pool that mixes conditions?

Each held-out appearance episode has a pool of `--pool` candidate prompts; half are seen under one global light
(a gain and a tint per channel), half under another, and the target shares one of the two (see
`seggpt_core.research.evaluation.evaluate_prompt_strategies`). Both strategies (the workers' own
`worker.selection.select`) pick K from the same pool for the same target. Prints mIoU per strategy and K; the last
line is `similar_minus_recent=<difference at the largest K> ratio=<similar / recent>`.

    python bench/prompt_strategy.py [--weights tiny-appearance] [--episodes 200] [--pool 8] [--k 1 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="tiny-appearance")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()

    from seggpt_core import SegGptPredictor, load_model
    from seggpt_core.research.evaluation import evaluate_prompt_strategies
    from worker.selection import select

    predictor = SegGptPredictor(load_model(args.weights, device="cpu"))
    reports, same_light = evaluate_prompt_strategies(predictor, args.episodes, select, pool=args.pool, ks=args.k)
    print(f"episodes={args.episodes} pool={args.pool} (half under another light) weights={args.weights}")
    for (strategy, k), report in reports.items():
        print(f"{strategy:8s} k={k} mIoU={report.miou:.4f} (chosen prompts under the target's light: {same_light[(strategy, k)]:.0%})")
    k = max(args.k)
    similar, recent = reports[("similar", k)].miou, reports[("recent", k)].miou
    print(f"similar_minus_recent={similar - recent:.4f} ratio={similar / recent:.3f}" if recent else "ratio=nan")


if __name__ == "__main__":
    main()
