"""What an annotator marked in the open image, from the `context` of an interactive `/predict`, as marked instance marks.

Label Studio 1.23.2 sends `params.context = {"result": [region]}` when a region is drawn with a smart tool while
Auto-Annotation is on (tests/recorded/predict_context_*.json, recorded from the real frontend): a smart
KeyPointLabels point (`is_positive` false when Alt is held) or a smart RectangleLabels box, in percent of the
image. Its label names the instance's class; the output goes to the BrushLabels or PolygonLabels control on the
same image that has that label. A brush region in the context (which the 1.23.2 frontend never sends: its smart
brush only paints) is used as the marked instance mask as it is.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from seggpt_core.marks import Mark, MarkError

from .label_config import Control
from .ls_format import AnnotationError, label_key, masks_from_annotation

__all__ = ["ContextError", "marks_from_context"]


class ContextError(ValueError):
    """A context region that cannot be read as a mark; the message names the region."""


def _output_control(controls: Sequence[Control], to_name: str, label: str, where: str) -> Control:
    on_image = [c for c in controls if c.to_name == to_name]
    for kind in ("brushlabels", "polygonlabels"):
        for control in on_image:
            if control.kind == kind and label in control.labels:
                return control
    raise ContextError(f"{where}: label {label!r} is not a label of any BrushLabels or PolygonLabels on image {to_name!r}; "
                       "give the smart tool the same label values as the control it should fill")


def _rotated_box(value: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """The axis-aligned box around a rectangle rotated about its top-left corner, as fractions."""
    x, y = value["x"] * width / 100, value["y"] * height / 100
    w, h = value["width"] * width / 100, value["height"] * height / 100
    angle = math.radians(float(value.get("rotation") or 0))
    cos, sin = math.cos(angle), math.sin(angle)
    xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    return clip(min(xs) / width), clip(min(ys) / height), clip(max(xs) / width), clip(max(ys) / height)


def marks_from_context(context: Any, controls: Sequence[Control]) -> dict[str, list[Mark]]:
    """Task data key -> marks, keyed by the output `label_key`s. Raises ContextError naming the bad region."""
    regions = context.get("result") if isinstance(context, dict) else None
    if not isinstance(regions, list):
        raise ContextError("params.context.result must be a list of regions")
    by_key = {c.to_name: c.data_key for c in controls}
    marks: dict[str, list[Mark]] = {}
    for index, region in enumerate(regions):
        where = f"params.context.result[{index}]"
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            raise ContextError(f"{where}: a region needs a 'value' object")
        kind, value, to_name = region.get("type"), region["value"], region.get("to_name")
        labels = value.get(kind) or value.get("labels") or []
        key = label = ""
        if not labels:
            raise ContextError(f"{where}: the {kind} region carries no label")
        try:
            own = next((c for c in controls if c.name == region.get("from_name") and c.kind == kind), None)
            for label in labels:
                control = own if own is not None and label in own.labels else _output_control(controls, to_name, label, where)
                key = label_key(control.name, label)
                if kind == "keypointlabels":
                    mark = Mark(key, point=(value["x"] / 100, value["y"] / 100), positive=bool(region.get("is_positive", True)))
                elif kind == "rectanglelabels":
                    width, height = int(region.get("original_width") or 1000), int(region.get("original_height") or 1000)
                    mark = Mark(key, box=_rotated_box(value, width, height))
                elif kind in ("brushlabels", "polygonlabels"):
                    size = (int(region["original_height"]), int(region["original_width"]))
                    drawn = masks_from_annotation([region], controls, size)
                    mark = Mark(key, mask=drawn[key])
                else:
                    raise ContextError(f"{where}: {kind!r} regions cannot mark an instance (use a smart KeyPointLabels or RectangleLabels)")
                marks.setdefault(by_key[to_name], []).append(mark)
        except (KeyError, TypeError) as exc:
            raise ContextError(f"{where}: missing or malformed {exc}") from None
        except (MarkError, AnnotationError) as exc:
            message = str(exc).replace(repr(key), repr(label)) if key else str(exc)  # the label as the annotator knows it
            raise ContextError(f"{where}: {message}") from None
    if not any(h.positive for field in marks.values() for h in field):
        raise ContextError("params.context.result holds no positive mark: mark the instance to find others like it")
    return marks
