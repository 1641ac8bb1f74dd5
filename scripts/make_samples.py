"""Regenerates the demo's bundled images (backend/samples) from fixed seeds: one annotated prompt (disc and star),
six targets, and the generator's ground-truth masks of the targets (samples/truth), so the demo can report IoU.

    .venv/bin/python scripts/make_samples.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seggpt_core.synthetic import EPISODE_SIZES, make_scene  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "backend" / "samples"
LABELS = ("disc", "star")


def main() -> None:
    (SAMPLES / "truth").mkdir(parents=True, exist_ok=True)
    for old in [*SAMPLES.glob("*.png"), *(SAMPLES / "truth").glob("*.png")]:
        old.unlink()
    draw = lambda seed, size: make_scene(seed, size=size, shapes=(3, 4), must_include=LABELS, sizes=EPISODE_SIZES)  # noqa: E731
    prompt = draw(20261128, (120, 160))
    prompt.image.save(SAMPLES / "prompt.png")
    for label in LABELS:
        Image.fromarray(prompt.masks[label].astype(np.uint8) * 255).save(SAMPLES / f"prompt_{label}.png")
    for index, size in enumerate(((120, 160), (150, 140), (128, 128), (96, 160), (140, 180), (120, 120)), start=1):
        scene = draw(20261128 + index, size)
        scene.image.save(SAMPLES / f"target_{index}.png")
        for label in LABELS:
            Image.fromarray(scene.masks[label].astype(np.uint8) * 255).save(SAMPLES / "truth" / f"target_{index}_{label}.png")
    print(f"wrote {len(list(SAMPLES.rglob('*.png')))} images under {SAMPLES}")


if __name__ == "__main__":
    main()
