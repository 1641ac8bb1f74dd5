"""Which parts of a Label Studio label config this backend can fill: BrushLabels and PolygonLabels on an Image."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


__all__ = ["Control", "LabelConfigError", "parse_label_config"]

SUPPORTED = {"BrushLabels": "brushlabels", "PolygonLabels": "polygonlabels"}


class LabelConfigError(ValueError):
    """The label config has nothing this backend can predict, or cannot be parsed."""


@dataclass(frozen=True)
class Control:
    """One control we predict: `name` (from_name), `kind` (result type), the Image `to_name`, the task data key
    the image URL is read from (`$field` without the dollar), and the label values."""

    name: str
    kind: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]
    score_threshold: float | None = None  # the control tag's `model_score_threshold`


def _threshold(control) -> float | None:
    raw = (control.attr or {}).get("model_score_threshold")
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise LabelConfigError(f"{control.tag} '{control.name}': model_score_threshold {raw!r} is not a number") from None


def parse_label_config(config: str) -> list[Control]:
    """Every BrushLabels / PolygonLabels control bound to an Image object, in config order.

    Raises LabelConfigError naming what is missing when there is none. Parsed once per distinct config: Label
    Studio sends the same config with every /setup and /predict.
    """
    return list(_parse_cached(config))


@lru_cache(maxsize=256)
def _parse_cached(config: str) -> tuple[Control, ...]:
    if not config or not config.strip():
        raise LabelConfigError("the label config is empty")
    try:
        from label_studio_sdk.label_interface import LabelInterface  # slow import: see backend/__init__.py
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several types for malformed XML
        raise LabelConfigError(f"the label config cannot be parsed: {exc}") from None
    controls = []
    seen_tags = []
    for control in interface.controls:
        seen_tags.append(f"{control.tag} '{control.name}'")
        kind = SUPPORTED.get(control.tag)
        if kind is None:
            continue
        for image in control.objects:
            if image.tag != "Image":
                continue
            value = image.value or ""
            if not value.startswith("$"):
                continue  # a constant image URL in the config is not task data
            labels = tuple(control.labels or ())
            if not labels:
                raise LabelConfigError(f"{control.tag} '{control.name}' has no <Label> values")
            controls.append(Control(control.name, kind, image.name, value[1:], labels, _threshold(control)))
    if not controls:
        found = ", ".join(seen_tags) or "no control tags"
        raise LabelConfigError(
            "the label config has no BrushLabels or PolygonLabels bound to an <Image value=\"$field\">; "
            f"found: {found}"
        )
    return tuple(controls)
