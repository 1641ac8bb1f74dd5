"""Per-label thresholds calibrated from review, against threshold 0 and against one global threshold.

What it does (offline: no Label Studio, same code as the backend's review path):
- A project is a held-out appearance episode with 2 labels (`--shots` annotated prompt images) and `--tasks`
  target images (default 200), as in tests/test_e2e_review.py. Projects are seeded apart from training.
- "Bootstrap": the shipped `tiny-appearance` predicts every target from the prompts, and each prediction becomes
  the Label Studio prediction the backend would write for a PolygonLabels control (`ls_format.prediction_for`:
  one polygon per component, each with its own component score).
- "Review": a simulated annotator submits the ground truth as one polygon per instance; `review_records`
  compares it with the prediction exactly as the live backend does (kept at IoU >= 0.5, deleted, added).
- Calibration on the first half of the tasks (`calibration.calibrate`, per label, and one threshold for all
  labels); then on the other half the predictions are filtered with each threshold and compared again with the
  ground truth, and the edits (regions deleted + regions added) are counted exactly.

    python bench/review_calibration.py [--projects 3] [--tasks 200] [--shots 2] [--score crisp|agreement]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.calibration import calibrate  # noqa: E402
from backend.label_config import parse_label_config  # noqa: E402
from backend.ls_format import label_key, polygon_regions, prediction_for  # noqa: E402
from backend.region_filter import RegionFilter  # noqa: E402
from backend.review_records import compare_results  # noqa: E402

LABELS = ("Alpha", "Beta")
CONFIG = ('<View><Image name="image" value="$image"/><PolygonLabels name="tag" toName="image">'
          + "".join(f'<Label value="{label}"/>' for label in LABELS) + "</PolygonLabels></View>")
SEED = 10_000_000 + 970_000  # held out: training draws below 10,000,000; the review test uses +950,000


def simulate(project_seed: int, tasks: int, shots: int, predictor) -> list[tuple[list[dict], list[dict]]]:
    """(prediction result, ground-truth result) per task of one project."""
    from seggpt_core import Prompt
    from seggpt_core.research.appearance import make_appearance_episode

    controls = parse_label_config(CONFIG)
    episode = make_appearance_episode(project_seed, shots=shots, targets=tasks, labels=2)
    names = dict(zip(episode.categories, LABELS))
    predictor.set_prompts([Prompt(p.image, {names[c]: p.masks[c] for c in episode.categories}) for p in episode.prompts])
    pairs = []
    for index, target in enumerate(episode.targets):
        segmentation = predictor.predict([target.image])[0]
        keyed = {label_key("tag", label): mask for label, mask in segmentation.masks.items()}
        scores = {label_key("tag", label): s for label, s in segmentation.scores.items()}
        components = {label_key("tag", label): c for label, c in segmentation.component_scores.items()}
        prediction = prediction_for(index, controls, keyed, scores, "bench", RegionFilter(), components)
        truth = [r for c in episode.categories for r in polygon_regions(target.masks[c], controls[0], names[c], 1.0, f"gt{index}{c}")]
        pairs.append((prediction["result"], truth))
    return pairs


def edits(pairs, thresholds: dict[str, float]) -> int:
    """Regions deleted + added on `pairs` when predicted regions below their label's threshold are left out."""
    controls = parse_label_config(CONFIG)
    total = 0
    for predicted, truth in pairs:
        shown = [r for r in predicted if r["score"] >= thresholds.get(r["value"]["polygonlabels"][0], 0.0)]
        # an empty prediction still needs the image size: borrow it from the ground truth
        total += sum(v["deleted"] + v["added"] for v in compare_results(shown, truth, controls).values()) if (shown or truth) else 0
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--min-regions", type=int, default=20)
    parser.add_argument("--score", choices=["crisp", "agreement"], default="crisp")
    args = parser.parse_args()

    import torch

    from seggpt_core import SegGptPredictor, load_model

    torch.set_num_threads(2)
    predictor = SegGptPredictor(load_model("tiny-appearance", device="cpu"), score=args.score)
    controls = parse_label_config(CONFIG)
    totals = {"zero": 0, "per_label": 0, "global": 0, "global_oracle": 0}
    print(f"{'project':>8} {'thr 0':>6} {'per-label':>9} {'global':>7} {'global*':>8}  thresholds (per label; global)")
    started = time.perf_counter()
    for p in range(args.projects):
        pairs = simulate(SEED + p, args.tasks, args.shots, predictor)
        half = len(pairs) // 2
        calibrate_on, test_on = pairs[:half], pairs[half:]
        records = [compare_results(pred, truth, controls) for pred, truth in calibrate_on]
        per_label = {}
        for label in LABELS:
            regions = [g for r in records if label in r for g in r[label]["regions"]]
            added = sum(r[label]["added"] for r in records if label in r)
            chosen = calibrate(regions, added, args.min_regions)["threshold"]
            if chosen is not None:
                per_label[label] = chosen
        every = [g for r in records for v in r.values() for g in v["regions"]]
        global_t = calibrate(every, sum(v["added"] for r in records for v in r.values()), args.min_regions)["threshold"] or 0.0
        # the best single threshold chosen on the test half itself: an upper bound for any global rule
        candidates = sorted({0.0} | {round(g[0] + 1e-5, 5) for r in records for v in r.values() for g in v["regions"]})
        oracle = min(edits(test_on, {label: t for label in LABELS}) for t in candidates[:: max(1, len(candidates) // 60)])
        row = {"zero": edits(test_on, {}), "per_label": edits(test_on, per_label),
               "global": edits(test_on, {label: global_t for label in LABELS}), "global_oracle": oracle}
        for key in totals:
            totals[key] += row[key]
        print(f"{SEED + p:>8} {row['zero']:>6} {row['per_label']:>9} {row['global']:>7} {row['global_oracle']:>8}  "
              f"{ {k: round(v, 3) for k, v in per_label.items()} }; {global_t:.3f}")
    zero = totals["zero"]
    print(f"total edits on the held-out halves ({args.projects} x {args.tasks - args.tasks // 2} tasks): threshold 0: {zero}, "
          f"per-label calibrated: {totals['per_label']} ({100 * (zero - totals['per_label']) / zero:.1f}% fewer), "
          f"global calibrated: {totals['global']} ({100 * (zero - totals['global']) / zero:.1f}% fewer), "
          f"best global chosen on the test half: {totals['global_oracle']} ({100 * (zero - totals['global_oracle']) / zero:.1f}% fewer); "
          f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
