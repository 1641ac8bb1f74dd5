"""Scenes and their brush annotations for the tests that run against the stand-in Label Studio: two labels, Cat
(the disc) and Dog (the star), on a 60x80 scene per seed, and the PNG bytes a media server serves."""

from __future__ import annotations

import io

import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from seggpt_core.research.shapes import make_scene

__all__ = ["scene", "png_bytes", "brush_annotation", "add_scene_project"]


def scene(seed: int):
    return make_scene(seed, size=(60, 80), must_include=("disc", "star"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def brush_annotation(seed: int) -> list[dict]:
    """The result of an annotation of scene `seed` for the control "tag" on "image": Cat and Dog as brush RLE."""
    drawn = scene(seed)
    return [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "id": f"r{seed}{label}",
             "value": {"format": "rle", "rle": mask2rle(drawn.masks[shape].astype(np.uint8) * 255), "brushlabels": [label]}}
            for label, shape in (("Cat", "disc"), ("Dog", "star"))]


def add_scene_project(ls, project: int, config: str, media_url: str) -> None:
    """Project `project` on the stand-in `ls`: tasks 11 and 12 annotated (scenes 1 and 2), 13 and 14 not (scenes 3
    and 4), their images at `media_url`/scene<seed>.png."""
    ls.projects[project] = {"id": project, "label_config": config}
    for task_id, seed in ((11, 1), (12, 2)):
        ls.add_task(project, task_id, f"{media_url}/scene{seed}.png", brush_annotation(seed))
    for task_id, seed in ((13, 3), (14, 4)):
        ls.add_task(project, task_id, f"{media_url}/scene{seed}.png")
