"""Offline folder mode: segment every image of a folder from a few annotated prompts, write masks and a preview.

One unreadable image is reported and skipped; the others are still segmented.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .preview import grid, overlay

__all__ = ["PromptSpec", "SegmentReport", "parse_prompt_spec", "segment_folder", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass(frozen=True)
class PromptSpec:
    image: Path
    mask: Path
    label: str


@dataclass
class SegmentReport:
    done: list[str] = field(default_factory=list)
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


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def segment_folder(
    predictor,
    specs: Sequence[PromptSpec],
    images: Sequence[Path],
    out_dir: Path,
    *,
    preview: bool = True,
    batch_size: int = 8,
) -> SegmentReport:
    """Segment `images` with the prompts in `specs`, writing `masks/<image>__<label>.png` (0/255),
    `results.json` (size, per-label score and area) and, with `preview`, `preview.png`."""
    from seggpt_core import ImageError, Prompt
    from seggpt_core.transforms import open_image

    grouped: dict[Path, dict[str, np.ndarray]] = {}
    for spec in specs:
        with Image.open(spec.mask) as mask_image:
            grouped.setdefault(spec.image, {})[spec.label] = np.asarray(mask_image.convert("L")) > 0
    predictor.set_prompts([Prompt(str(image), masks) for image, masks in grouped.items()])
    labels = predictor.labels

    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    report = SegmentReport()
    results: dict[str, dict] = {}
    tiles = [(f"prompt {i.name}", overlay(open_image(str(i)), m, labels)) for i, m in grouped.items()] if preview else []
    prepared = []
    for path in images:
        try:
            prepared.append((path, predictor.prepare_target(str(path), where=str(path))))
        except ImageError as exc:
            report.failed[str(path)] = str(exc)
            log.warning("skipped %s", exc)
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        for (path, _), segmentation in zip(chunk, predictor.predict_prepared([p for _, p in chunk])):
            entry = {"height": segmentation.size[0], "width": segmentation.size[1], "labels": {}}
            for label, mask in segmentation.masks.items():
                target = out_dir / "masks" / f"{_safe_name(path.stem)}__{_safe_name(label)}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(target)
                report.outputs.append(target)
                entry["labels"][label] = {"score": round(segmentation.scores[label], 4), "area": int(mask.sum())}
            results[path.name] = entry
            report.done.append(str(path))
            if preview:
                tiles.append((path.name, overlay(open_image(str(path)), segmentation.masks, labels)))
    (out_dir / "results.json").write_text(json.dumps({"labels": labels, "images": results, "failed": report.failed}, indent=2, ensure_ascii=False))
    report.outputs.append(out_dir / "results.json")
    if preview and tiles:
        grid(tiles).save(out_dir / "preview.png")
        report.outputs.append(out_dir / "preview.png")
    return report
