"""Commands on what reviewers made of the predictions: `report` (numbers, JSON, HTML) and `prompts` (usefulness
per pool entry; leave a harmful one out)."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..prompt_pool import PromptPool
from ..review_html import MatplotlibMissing, write_report_html
from ..review_jobs import project_controls, project_labels, rebuild_reviews
from ..review_report import summarize
from ..review_store import load_records
from ..services import build_services
from ..settings import Settings
from .common import add_redis_option, connect


def _context(args: argparse.Namespace):
    settings = Settings.from_env(label_studio_url=args.label_studio_url, label_studio_api_key=args.api_key, redis_url=args.redis_url)
    return settings, build_services(settings).client, connect(settings.worker_settings())


def _report(args: argparse.Namespace, settings, client, connection) -> tuple[dict, list, list] | None:
    records = load_records(connection, args.project)
    if getattr(args, "rebuild", False) or not records:
        if client is None:
            if not records:
                print(f"error: project {args.project} has no review records here, and without LABEL_STUDIO_URL and "
                      "LABEL_STUDIO_API_KEY they cannot be rebuilt from Label Studio", file=sys.stderr)
                return None
        else:
            outcome = rebuild_reviews(connection, settings, client, args.project)
            for task_id, reason in sorted(outcome["errors"].items()):
                print(f"warning: task {task_id}: no review record: {reason}", file=sys.stderr)
            records = load_records(connection, args.project)
    controls = project_controls(connection, client, args.project)
    return summarize(args.project, records, project_labels(controls), settings.calibration_min_regions), records, controls


def _print_text(summary: dict) -> None:
    print(f"project {summary['project']}: {summary['tasks_reviewed']} task(s) reviewed from a prediction, "
          f"{summary['tasks_from_scratch']} annotated from scratch; accepted unchanged {summary['accepted_share']}")
    print(f"{'label':<16} {'tasks':>5} {'mean IoU':>8} {'accepted':>8} {'del/task':>8} {'add/task':>8} {'spearman':>8} {'threshold':>9} {'saved':>5}")
    for label, n in summary["labels"].items():
        cells = [n["reviewed"], n["mean_iou"], n["accepted_share"], n["deleted_per_task"], n["added_per_task"], n["score_iou_spearman"],
                 n["threshold"], n["edits_saved"]]
        text = ["n/a" if c is None else (f"{c:.3f}" if isinstance(c, float) else str(c)) for c in cells]
        print(f"{label:<16} {text[0]:>5} {text[1]:>8} {text[2]:>8} {text[3]:>8} {text[4]:>8} {text[5]:>8} {text[6]:>9} {text[7]:>5}")
    for version, n in summary["versions"].items():
        print(f"version {version}: {n['reviewed']} task(s), mean IoU {n['mean_iou']}, accepted unchanged {n['accepted_share']}")
    lead = summary["lead_time"]
    if lead["from_prediction"] is not None:
        print(f"mean lead time: {lead['from_prediction']:.1f} s from a prediction, {lead['from_scratch']:.1f} s from scratch")


def _prompt_picture(connection, project: int, controls):
    """annotation id -> (image, mask of its first label) of its pool entry, for the report's thumbnails."""
    pool = PromptPool(connection, project)
    entries = {str(e["annotation"]): e for e in pool.entries()}

    def picture(annotation_id: str):
        entry = entries.get(annotation_id)
        data = connection.get(entry["image"]["blob"]) if entry else None
        if data is None:
            return None
        masks = pool.entry_masks(entry)
        first = masks[sorted(masks)[0]] if masks else None
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), first

    return picture


def cmd_report(args: argparse.Namespace) -> int:
    settings, client, connection = _context(args)
    made = _report(args, settings, client, connection)
    if made is None:
        return 2
    summary, records, controls = made
    if args.out:
        try:
            path = write_report_html(summary, records, Path(args.out), _prompt_picture(connection, args.project, controls))
        except MatplotlibMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not args.json:
            print(f"wrote {path}")
    if args.json:
        print(json.dumps(summary, indent=1, sort_keys=False))
    elif not args.out:
        _print_text(summary)
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    settings, client, connection = _context(args)
    pool = PromptPool(connection, args.project)
    if args.exclude or args.include:
        pool.set_excluded(args.exclude or [], True)
        pool.set_excluded(args.include or [], False)
        print(f"project {args.project}: left out of the prompts: {sorted(pool.excluded()) or 'none'} "
              "(the annotations stay in Label Studio; the model version changes)")
        return 0
    made = _report(args, settings, client, connection)
    if made is None:
        return 2
    summary = made[0]
    excluded = pool.excluded() | set(settings.excluded_prompts)
    in_pool = {str(e["annotation"]): e["task"] for e in pool.entries()}
    print(f"{'annotation':>10} {'task':>6} {'predictions':>11} {'mean IoU':>8}")
    for annotation_id, numbers in summary["prompts"].items():
        note = " (excluded)" if int(annotation_id) in excluded else ("" if annotation_id in in_pool else " (not in the pool now)")
        print(f"{annotation_id:>10} {str(in_pool.get(annotation_id, '-')):>6} {numbers['predictions']:>11} {numbers['mean_iou']:>8.3f}{note}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    add_redis_option(parser)
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--label-studio-url", default=None, help="default: LABEL_STUDIO_URL")
    parser.add_argument("--api-key", default=None, help="default: LABEL_STUDIO_API_KEY (legacy token or personal access token)")


def add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="what reviewers made of the predictions: IoU, edits, calibrated thresholds, prompts")
    _common(report)
    report.add_argument("--out", default=None, help="write DIR/report.html, with charts (needs the report extra: matplotlib)")
    report.add_argument("--json", action="store_true", help="print the numbers as JSON")
    report.add_argument("--rebuild", action="store_true", help="re-read every annotated task from Label Studio first")
    report.set_defaults(handler=cmd_report)


def add_prompts(commands: argparse._SubParsersAction) -> None:
    prompts = commands.add_parser("prompts", help="usefulness of each prompt (pool entry) in review; leave a harmful one out")
    _common(prompts)
    prompts.add_argument("--exclude", type=int, action="append", metavar="ID", help="annotation id to leave out of the prompts (repeatable)")
    prompts.add_argument("--include", type=int, action="append", metavar="ID", help="annotation id to use as a prompt again")
    prompts.set_defaults(handler=cmd_prompts)
