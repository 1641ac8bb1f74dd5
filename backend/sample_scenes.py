"""The synthetic scenes the shipped `tiny-appearance` model was trained for: blobs of four look-alike classes, two
pairs of near colors that differ in texture (striped against checkered, dotted against plain). The demo's bundled
images (scripts/make_samples.py) and the tryout's project are drawn from them, with the generator's ground truth.
"""

from __future__ import annotations

from seggpt_core.research.appearance import AppearanceClass, Scene, make_appearance_scene

__all__ = ["CLASSES", "LABELS", "draw_scene"]

CLASSES = {
    "striped": AppearanceClass("stripes", (235, 150, 40), (250, 235, 190), 9.0, 0.6, 6.0),
    "checkered": AppearanceClass("checker", (165, 55, 75), (235, 175, 185), 10.0, 0.2, 6.0),
    "dotted": AppearanceClass("dots", (30, 120, 150), (235, 245, 250), 10.0, 0.0, 6.0),
    "plain": AppearanceClass("flat", (40, 170, 140), (40, 170, 140), 9.0, 0.0, 6.0),
}
# the labels a prompt marks; the other two classes are their look-alikes, left alone by a model that reads its prompt
LABELS = ("dotted", "striped")


def draw_scene(seed: int, size: tuple[int, int]) -> Scene:
    """One scene with both labels and at least one look-alike of each, fully determined by `seed`."""
    return make_appearance_scene(seed, CLASSES, tuple(CLASSES), size=size, blobs=(4, 6), sizes=(0.12, 0.2), min_share=0.04)
