"""Offline folder mode: segment every image of a folder from a few annotated prompts.

Runs on the queue (the embedded Redis, local workers started if none are live) or in-process (`--no-queue`), and
writes any of: PNG masks, a Label Studio import JSON with predictions, a COCO JSON (RLE), and an overlay preview.
One unreadable image is reported and skipped; the others are still segmented.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from seggpt_core.errors import ImageError
from worker import PromptRecord, enqueue_segmentation, job_failures, results_key, store_blob, store_prompt_set
from worker.codec import b64png_to_mask
from worker.payloads import PredictionOptions
from worker.waiting import wait_for_jobs

from . import coco_rle
from .label_config import Control
from .ls_format import brush_region, region_id
from .preview import grid, overlay

__all__ = ["PromptSpec", "ImageResult", "SegmentReport", "FORMATS", "IMAGE_SUFFIXES", "parse_prompt_spec",
           "prompts_from_dir", "load_prompts", "run_in_process", "run_on_queue", "write_outputs"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
FORMATS = ("png", "ls-json", "coco")
LS_FROM_NAME, LS_TO_NAME = "label", "image"


@dataclass(frozen=True)
class PromptSpec:
    image: Path
    mask: Path
    label: str


@dataclass
class ImageResult:
    path: Path
    size: tuple[int, int]
    masks: dict[str, np.ndarray]
    scores: dict[str, float]


@dataclass
class SegmentReport:
    results: list[ImageResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)


def parse_prompt_spec(text: str) -> PromptSpec:
    """`IMAGE:MASK[:LABEL]`; the label defaults to the mask file's stem."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ValueError(f"--prompt {text!r}: expected IMAGE:MASK or IMAGE:MASK:LABEL")
    image, mask = Path(parts[0]), Path(parts[1])
    label = parts[2] if len(parts) == 3 and parts[2] else mask.stem
    for path in (image, mask):
        if not path.is_file():
            raise ValueError(f"--prompt {text!r}: no such file {path}")
    return PromptSpec(image, mask, label)


def prompts_from_dir(directory: Path) -> list[PromptSpec]:
    """Prompts laid out as this command writes masks: `name.<ext>` with `name__<label>.png` beside it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"--prompts-dir {directory}: not a directory")
    specs = []
    images = {p.stem: p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "__" not in p.stem}
    for mask in sorted(directory.glob("*__*.png")):
        stem, label = mask.stem.split("__", 1)
        if stem not in images:
            raise ValueError(f"--prompts-dir: mask {mask.name} has no image named {stem}.*")
        specs.append(PromptSpec(images[stem], mask, label))
    if not specs:
        raise ValueError(f"--prompts-dir {directory}: no masks named <image>__<label>.png")
    return specs


def load_prompts(specs: Sequence[PromptSpec]) -> dict[Path, dict[str, np.ndarray]]:
    """Masks grouped by prompt image: one image may carry several labels."""
    grouped: dict[Path, dict[str, np.ndarray]] = {}
    for spec in specs:
        with Image.open(spec.mask) as mask_image:
            grouped.setdefault(spec.image, {})[spec.label] = np.asarray(mask_image.convert("L")) > 0
    return grouped


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def run_in_process(predictor, prompts: dict[Path, dict[str, np.ndarray]], images: Sequence[Path], images_per_step: int = 8) -> SegmentReport:
    from seggpt_core import Prompt  # torch: not at the top (see backend/__init__.py)

    predictor.set_prompts([Prompt(str(image), masks) for image, masks in prompts.items()])
    report = SegmentReport()
    prepared = []
    for path in images:
        try:
            prepared.append((path, predictor.prepare_target(str(path), where=str(path))))
        except ImageError as exc:
            report.failed[str(path)] = str(exc)
            log.warning("skipped %s", exc)
    for start in range(0, len(prepared), images_per_step):
        chunk = prepared[start : start + images_per_step]
        for (path, _), segmentation in zip(chunk, predictor.predict_prepared([p for _, p in chunk])):
            report.results.append(ImageResult(path, segmentation.size, segmentation.masks, segmentation.scores))
    return report


def run_on_queue(
    connection,
    prompts: dict[Path, dict[str, np.ndarray]],
    images: Sequence[Path],
    options: PredictionOptions,
    *,
    chunk_size: int = 8,
    on_progress: Callable[[dict], None] | None = None,
    weights_digest: str | None = None,
) -> SegmentReport:
    """Through Redis: images travel as blobs, so workers on other machines can take part (those holding the
    weights `weights_digest`, when given)."""
    digest = store_prompt_set(connection, [PromptRecord(path.read_bytes(), masks) for path, masks in prompts.items()])
    by_id = {str(index): path for index, path in enumerate(images)}
    tasks = [{"id": task_id, "image": store_blob(connection, path.read_bytes())} for task_id, path in by_id.items()]
    namespace, job_ids = enqueue_segmentation(connection, digest, tasks, chunk_size=chunk_size, namespace=f"segment:{uuid.uuid4().hex[:12]}", options=options,
                                             weights_digest=weights_digest)
    wait_for_jobs(connection, job_ids, on_progress=on_progress)
    report = SegmentReport()
    stored = connection.hgetall(results_key(namespace))
    for task_id, path in by_id.items():
        raw = stored.get(task_id.encode())
        if raw is None:
            continue
        document = json.loads(raw)
        masks = {label: b64png_to_mask(entry["mask"]) for label, entry in document["labels"].items()}
        scores = {label: entry["score"] for label, entry in document["labels"].items()}
        report.results.append(ImageResult(path, (document["height"], document["width"]), masks, scores))
    for task_id, reason in job_failures(connection, job_ids).items():
        report.failed[str(by_id[task_id])] = reason
    return report


def write_outputs(
    report: SegmentReport,
    labels: Sequence[str],
    prompts: dict[Path, dict[str, np.ndarray]],
    out_dir: Path,
    formats: Sequence[str] = ("png",),
    preview: bool = False,
    image_prefix: str | None = None,
    model_version: str = "seggpt-folder",
) -> list[Path]:
    """Write the requested formats, `results.json` always, and `preview.png` with `preview`.

    `image_prefix` is prepended to file names in the Label Studio JSON (e.g. an URL where the images are served);
    by default the files are referenced through Label Studio's local-files storage (`/data/local-files/?d=`).
    """
    from seggpt_core.transforms import open_image  # torch: not at the top (see backend/__init__.py)

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown --format {unknown}; choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    summary = {"labels": list(labels), "images": {}, "failed": report.failed}
    for result in report.results:
        summary["images"][result.path.name] = {
            "height": result.size[0], "width": result.size[1],
            "labels": {label: {"score": round(result.scores[label], 4), "area": int(mask.sum())} for label, mask in result.masks.items()},
        }
    if "png" in formats:
        (out_dir / "masks").mkdir(exist_ok=True)
        for result in report.results:
            for label, mask in result.masks.items():
                target = out_dir / "masks" / f"{_safe_name(result.path.stem)}__{_safe_name(label)}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(target)
                outputs.append(target)
    if "ls-json" in formats:
        control = Control(LS_FROM_NAME, "brushlabels", LS_TO_NAME, "image", tuple(labels))
        tasks = []
        for result in report.results:
            reference = f"{image_prefix}{result.path.name}" if image_prefix is not None else f"/data/local-files/?d={result.path.resolve().as_posix().lstrip('/')}"
            regions = [brush_region(mask, control, label, result.scores[label], region_id(result.path.name, label))
                       for label, mask in result.masks.items() if mask.any()]
            score = float(np.mean([r["score"] for r in regions])) if regions else 0.0
            tasks.append({"data": {"image": reference}, "predictions": [{"model_version": model_version, "score": round(score, 4), "result": regions}]})
        (out_dir / "label-studio.json").write_text(json.dumps(tasks, ensure_ascii=False))
        label_xml = "".join(f'<Label value="{label}"/>' for label in labels)
        (out_dir / "label-config.xml").write_text(
            f'<View>\n  <Image name="{LS_TO_NAME}" value="$image"/>\n  <BrushLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}">{label_xml}</BrushLabels>\n</View>\n')
        outputs += [out_dir / "label-studio.json", out_dir / "label-config.xml"]
    if "coco" in formats:
        coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": label} for i, label in enumerate(labels)]}
        for image_id, result in enumerate(report.results, start=1):
            coco["images"].append({"id": image_id, "file_name": result.path.name, "height": result.size[0], "width": result.size[1]})
            for label, mask in result.masks.items():
                if not mask.any():
                    continue
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": list(labels).index(label) + 1,
                    "segmentation": coco_rle.encode(mask), "area": int(mask.sum()), "bbox": coco_rle.bbox(mask),
                    "iscrowd": 0, "score": round(result.scores[label], 4),
                })
        (out_dir / "coco.json").write_text(json.dumps(coco, ensure_ascii=False))
        outputs.append(out_dir / "coco.json")
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    outputs.append(out_dir / "results.json")
    if preview:
        tiles = [(f"prompt {path.name}", overlay(open_image(str(path)), masks, list(labels))) for path, masks in prompts.items()]
        tiles += [(r.path.name, overlay(open_image(str(r.path)), r.masks, list(labels))) for r in report.results]
        grid(tiles, legend=list(labels)).save(out_dir / "preview.png")
        outputs.append(out_dir / "preview.png")
    return outputs
