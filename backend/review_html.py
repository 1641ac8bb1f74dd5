"""The report as one self-contained HTML page: charts drawn by matplotlib (the `report` extra), embedded as PNG.

Every number the page shows carries `data-label` / `data-key` attributes (and `data-version`, `data-prompt`), so
a script or a test can read them back and check them against `report --json`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["write_report_html", "MatplotlibMissing"]

LABEL_KEYS = ("reviewed", "mean_iou", "accepted_share", "deleted_per_task", "added_per_task", "regions_deleted", "regions_added",
              "score_iou_spearman", "threshold", "edits_at_zero", "edits_at_threshold", "edits_saved")
VERSION_KEYS = ("reviewed", "mean_iou", "accepted_share")
PROMPTS_SHOWN = 4  # best and worst each


class MatplotlibMissing(RuntimeError):
    pass


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise MatplotlibMissing("the HTML report draws its charts with matplotlib: pip install 'seggpt-ls[report]'") from None
    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _iou_histograms(plt, records: Sequence[dict], labels: Sequence[str]) -> str:
    figure, axes = plt.subplots(1, max(1, len(labels)), figsize=(3.2 * max(1, len(labels)), 2.6), squeeze=False)
    for axis, label in zip(axes[0], labels):
        values = [r["labels"][label]["iou"] for r in records if r.get("from_prediction") and label in r["labels"]]
        axis.hist(values, bins=np.linspace(0, 1, 11), color="#4878cf", edgecolor="white")
        axis.set_title(f"{label}: review IoU")
        axis.set_xlabel("IoU")
        axis.set_ylabel("tasks")
    return _png(figure)


def _versions_chart(plt, versions: Mapping[str, dict]) -> str:
    figure, axis = plt.subplots(figsize=(6, 2.8))
    names = list(versions)
    axis.plot(range(len(names)), [versions[v]["mean_iou"] or 0 for v in names], marker="o", label="mean IoU")
    axis.plot(range(len(names)), [versions[v]["accepted_share"] or 0 for v in names], marker="s", label="accepted unchanged")
    axis.set_xticks(range(len(names)), [v.removeprefix("seggpt-")[:8] for v in names], rotation=30)
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("model version, in the order reviews came in")
    axis.legend(loc="lower right")
    return _png(figure)


def _score_chart(plt, records: Sequence[dict], labels: Sequence[str], summary: Mapping) -> str:
    figure, axes = plt.subplots(1, max(1, len(labels)), figsize=(3.2 * max(1, len(labels)), 2.8), squeeze=False)
    for axis, label in zip(axes[0], labels):
        regions = [g for r in records if r.get("from_prediction") and label in r["labels"] for g in r["labels"][label]["regions"]]
        kept = [g for g in regions if g[2]]
        deleted = [g for g in regions if not g[2]]
        axis.scatter([g[0] for g in kept], [g[1] for g in kept], s=12, c="#2a9d3c", label="kept")
        axis.scatter([g[0] for g in deleted], [g[1] for g in deleted], s=12, c="#d1495b", label="deleted")
        threshold = summary["labels"].get(label, {}).get("threshold")
        if threshold is not None:
            axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
        axis.set_title(f"{label}: region score against IoU")
        axis.set_xlabel("score")
        axis.set_ylabel("best IoU")
        axis.legend(fontsize=7, loc="lower right")
    return _png(figure)


def _thumbnail(plt, image: np.ndarray, mask: np.ndarray | None, title: str) -> str:
    figure, axis = plt.subplots(figsize=(1.8, 1.8))
    axis.imshow(image)
    if mask is not None and mask.any():
        axis.imshow(np.ma.masked_where(~mask, mask), alpha=0.45, cmap="autumn")
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    return _png(figure)


def write_report_html(summary: Mapping, records: Sequence[dict], out_dir: Path,
                      prompt_image: Callable[[str], tuple[np.ndarray, np.ndarray | None] | None] = lambda _: None) -> Path:
    """Write `out_dir/report.html`; `prompt_image(annotation id)` gives a pool entry's image and mask for its
    thumbnail (None: shown without one)."""
    plt = _pyplot()
    labels = list(summary["labels"])
    project = summary["project"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>seggpt-ls review report, project {project}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
             ".prompts figure{display:inline-block;margin:4px;text-align:center}</style></head><body>",
             f"<h1>Review report, project <span id='project'>{project}</span></h1>",
             f"<p>Tasks reviewed from a prediction: <b id='tasks_reviewed'>{summary['tasks_reviewed']}</b>; annotated from "
             f"scratch: <b id='tasks_from_scratch'>{summary['tasks_from_scratch']}</b>; accepted unchanged: "
             f"<b id='accepted_share'>{_cell(summary['accepted_share'])}</b>.</p>"]
    lead = summary["lead_time"]
    if lead["from_prediction"] is not None:
        parts.append(f"<p>Mean lead time: <b data-key='lead_from_prediction'>{lead['from_prediction']:.2f}</b> s from a prediction, "
                     f"<b data-key='lead_from_scratch'>{lead['from_scratch']:.2f}</b> s from scratch.</p>")
    parts.append("<h2>Per label</h2><table id='labels'><tr><th>label</th>" + "".join(f"<th>{k}</th>" for k in LABEL_KEYS) + "</tr>")
    for label, numbers in summary["labels"].items():
        cells = "".join(f"<td data-label='{html.escape(label)}' data-key='{k}'>{_cell(numbers.get(k))}</td>" for k in LABEL_KEYS)
        parts.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    parts.append("</table>")
    if labels:
        parts.append(f"<h2>Review IoU per label</h2><img class='chart' alt='IoU histograms' src='{_iou_histograms(plt, records, labels)}'>")
        parts.append(f"<h2>Score against IoU</h2><img class='chart' alt='score against IoU' src='{_score_chart(plt, records, labels, summary)}'>")
    versions = summary["versions"]
    parts.append("<h2>Quality over model versions</h2><table id='versions'><tr><th>version</th>" + "".join(f"<th>{k}</th>" for k in VERSION_KEYS) + "</tr>")
    for version, numbers in versions.items():
        cells = "".join(f"<td data-version='{html.escape(version)}' data-key='{k}'>{_cell(numbers.get(k))}</td>" for k in VERSION_KEYS)
        parts.append(f"<tr><th>{html.escape(version)}</th>{cells}</tr>")
    parts.append("</table>")
    if versions:
        parts.append(f"<img class='chart' alt='quality over versions' src='{_versions_chart(plt, versions)}'>")
    prompts = list(summary["prompts"].items())
    if prompts:
        shown = prompts[:PROMPTS_SHOWN] + [p for p in prompts[-PROMPTS_SHOWN:] if p not in prompts[:PROMPTS_SHOWN]]
        parts.append("<h2>Best and worst prompts</h2><div class='prompts'>")
        for annotation_id, numbers in shown:
            picture = prompt_image(annotation_id)
            title = f"annotation {annotation_id}"
            src = _thumbnail(plt, *picture, title) if picture is not None else ""
            image = f"<img class='thumb' alt='{title}' src='{src}'>" if src else ""
            parts.append(f"<figure>{image}<figcaption>{title}: <span data-prompt='{annotation_id}' data-key='mean_iou'>"
                         f"{_cell(numbers['mean_iou'])}</span> over <span data-prompt='{annotation_id}' data-key='predictions'>"
                         f"{numbers['predictions']}</span></figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
