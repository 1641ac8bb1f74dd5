"""Marked instances in the open image: how well marking one instance finds the others, and how fast, against the same
target segmented from the pool's prompts alone (the baseline), side by side in one run.

Held-out appearance episodes whose target holds at least two instances of the label. The annotator's mark is a
point inside one instance, or its bounding box. Printed: mIoU over all instances of the label, recall of the
instances that were not marked, and latency per request (p50), for: pool only (1 prompt from another image),
marked instance only (no pool prompt for the label: the image-based first guess), marked instance + pool.

    python bench/interactive_marks.py [--episodes 120] [--weights tiny-appearance]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    import cv2
    import torch

    from seggpt_core import SegGptPredictor, load_model
    from seggpt_core.marks import Mark, segment_from_marks
    from seggpt_core.predictor import Prompt
    from seggpt_core.research.appearance import make_appearance_episode
    from seggpt_core.research.episodes import HELD_OUT_SEED

    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--weights", default="tiny-appearance")
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.weights, device="cpu")
    rows = {name: {"iou": [], "others": [], "seconds": []} for name in ("pool only", "point, no pool", "box, no pool", "point + pool", "box + pool")}
    used = 0
    seed = HELD_OUT_SEED + 7000
    while used < args.episodes:
        seed += 1
        episode = make_appearance_episode(seed, shots=1, size=(args.size, args.size), family="heldout")
        label = episode.categories[0]
        target = episode.targets[0]
        truth = target.masks[label]
        count, components, stats, _ = cv2.connectedComponentsWithStats(truth.astype(np.uint8), connectivity=8)
        big = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= 0.004 * truth.size]
        if len(big) < 2:
            continue
        used += 1
        marked = components == big[0]
        others = truth & ~marked
        ys, xs = np.nonzero(marked)
        inner = cv2.distanceTransform(marked.astype(np.uint8), cv2.DIST_L2, 3)
        py, px = np.unravel_index(int(inner.argmax()), inner.shape)
        h, w = truth.shape
        point = Mark(label, point=((px + 0.5) / w, (py + 0.5) / h))
        box = Mark(label, box=(xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h))
        pool = SegGptPredictor(model)
        pool.set_prompts([Prompt(episode.prompts[0].image, {label: episode.prompts[0].masks[label]})])
        empty = SegGptPredictor(model)

        def score(name, action):
            started = time.perf_counter()
            mask = np.asarray(action())
            rows[name]["seconds"].append(time.perf_counter() - started)
            rows[name]["iou"].append((mask & truth).sum() / max(1, (mask | truth).sum()))
            rows[name]["others"].append((mask & others).sum() / max(1, others.sum()))

        score("pool only", lambda: pool.predict([target.image])[0].masks[label])
        score("point, no pool", lambda: segment_from_marks(empty, target.image, [point]).masks.get(label, np.zeros_like(truth)))
        score("box, no pool", lambda: segment_from_marks(empty, target.image, [box]).masks.get(label, np.zeros_like(truth)))
        score("point + pool", lambda: segment_from_marks(pool, target.image, [point]).masks.get(label, np.zeros_like(truth)))
        score("box + pool", lambda: segment_from_marks(pool, target.image, [box]).masks.get(label, np.zeros_like(truth)))
    base = statistics.mean(rows["pool only"]["iou"])
    print(f"{used} held-out appearance episodes with >= 2 instances of the label, {args.size}x{args.size}, weights {args.weights}, 2 CPU threads")
    print(f"{'':16} {'mIoU':>7} {'ratio':>7} {'others recall':>14} {'p50 s':>7} {'p95 s':>7}")
    for name, row in rows.items():
        seconds = sorted(row["seconds"])
        print(f"{name:16} {statistics.mean(row['iou']):7.3f} {statistics.mean(row['iou']) / base:7.2f} "
              f"{statistics.mean(row['others']):14.3f} {statistics.median(seconds):7.3f} {seconds[int(0.95 * (len(seconds) - 1))]:7.3f}")
    print(" ".join(f"{name.replace(' ', '_').replace(',', '')}_miou={statistics.mean(row['iou']):.3f}" for name, row in rows.items()))


if __name__ == "__main__":
    main()
