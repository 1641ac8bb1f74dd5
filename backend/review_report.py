"""The numbers of `seggpt-ls report`, from a project's review records: per label, per model version, per prompt."""

from __future__ import annotations

from typing import Iterable, Sequence

from seggpt_core.ranking import spearman

from .calibration import calibrate
from .review_store import load_summary, reviewed_projects

__all__ = ["summarize"]


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _unchanged(numbers: dict) -> bool:
    return numbers["deleted"] == 0 and numbers["added"] == 0 and numbers["iou"] >= 1.0


def _label_numbers(entries: list[dict], min_regions: int | None) -> dict:
    """`entries`: one label's numbers from each reviewed task."""
    regions = [r for e in entries for r in e["regions"]]
    deleted, added = sum(e["deleted"] for e in entries), sum(e["added"] for e in entries)
    numbers = {
        "reviewed": len(entries),
        "mean_iou": _mean([e["iou"] for e in entries]),
        "accepted_share": _mean([float(_unchanged(e)) for e in entries]),
        "regions_predicted": len(regions),
        "regions_kept": sum(e["kept"] for e in entries),
        "regions_deleted": deleted,
        "regions_added": added,
        "deleted_per_task": _mean([e["deleted"] for e in entries]),
        "added_per_task": _mean([e["added"] for e in entries]),
        "score_iou_spearman": round(spearman([r[0] for r in regions], [r[1] for r in regions]), 4) if len(regions) > 1 else None,
    }
    if min_regions is not None:
        calibration = calibrate(regions, added, min_regions)
        numbers.update({"threshold": calibration["threshold"], "edits_at_zero": calibration["edits_at_zero"],
                        "edits_at_threshold": calibration["edits"], "edits_saved": calibration["saved"]})
    return numbers


def summarize(project: int, records: Iterable[dict], labels: Sequence[str], min_regions: int) -> dict:
    """The report: `labels` (the project's config) bound which labels appear, whatever the records hold."""
    records = list(records)
    known = set(labels)
    reviewed = [r for r in records if r.get("from_prediction")]
    by_label: dict[str, list[dict]] = {}
    by_version: dict[str, list[dict]] = {}
    for record in reviewed:
        by_version.setdefault(record["model_version"], []).append(record)
        for label, numbers in record["labels"].items():
            if label in known:
                by_label.setdefault(label, []).append(numbers)

    versions = {}
    # versions in the order their first review came in: does each new version (more prompts) do better?
    for version, group in sorted(by_version.items(), key=lambda kv: min(r["updated_at"] for r in kv[1])):
        per_label: dict[str, list[dict]] = {}
        for record in group:
            for label, numbers in record["labels"].items():
                if label in known:
                    per_label.setdefault(label, []).append(numbers)
        all_numbers = [n for entries in per_label.values() for n in entries]
        versions[version] = {"reviewed": len(group), "mean_iou": _mean([n["iou"] for n in all_numbers]),
                             "accepted_share": _mean([float(r["accepted"]) for r in group]),
                             "first_reviewed": min(r["updated_at"] for r in group),
                             "labels": {label: _label_numbers(entries, None) for label, entries in sorted(per_label.items())}}

    prompts: dict[str, list[float]] = {}
    for record in reviewed:
        for label, annotation_ids in (record.get("prompts") or {}).items():
            if label in known and label in record["labels"]:
                for annotation_id in annotation_ids:
                    prompts.setdefault(str(annotation_id), []).append(record["labels"][label]["iou"])

    with_prediction = [r["lead_time"] for r in reviewed if r.get("lead_time") is not None]
    from_scratch = [r["lead_time"] for r in records if not r.get("from_prediction") and r.get("lead_time") is not None]
    return {
        "project": int(project),
        "tasks_reviewed": len(reviewed),
        "tasks_from_scratch": len(records) - len(reviewed),
        "accepted_share": _mean([float(r["accepted"]) for r in reviewed]),
        "labels": {label: _label_numbers(by_label.get(label, []), min_regions) for label in labels if label in by_label},
        "versions": versions,
        "prompts": {annotation_id: {"predictions": len(ious), "mean_iou": _mean(ious)}
                    for annotation_id, ious in sorted(prompts.items(), key=lambda kv: (-(_mean(kv[1]) or 0), kv[0]))},
        "lead_time": {"from_prediction": _mean(with_prediction) if with_prediction and from_scratch else None,
                      "from_scratch": _mean(from_scratch) if with_prediction and from_scratch else None,
                      "tasks_from_prediction": len(with_prediction), "tasks_from_scratch": len(from_scratch)},
        "calibration_min_regions": min_regions,
    }


def review_metrics(connection) -> dict[str, tuple[list[str], dict[tuple, float]]]:
    """/metrics gauges from each reviewed project's stored summary: review IoU, edits per task and the accepted
    share, per project and label. The label values come from the project's config (the summary holds no other)."""
    iou, edits, accepted = {}, {}, {}
    for project in reviewed_projects(connection):
        summary = load_summary(connection, project) or {}
        for label, numbers in (summary.get("labels") or {}).items():
            key = (str(project), label)
            iou[key] = numbers["mean_iou"] or 0.0
            edits[key] = (numbers["deleted_per_task"] or 0.0) + (numbers["added_per_task"] or 0.0)
            accepted[key] = numbers["accepted_share"] or 0.0
    names = ["project", "label"]
    return {"review_iou": (names, iou), "review_edits_per_task": (names, edits), "review_accepted_share": (names, accepted)}
