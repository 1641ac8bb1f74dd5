"""The prompt pool's `PromptPool.upsert` per annotated task, before and after its fast paths, side by side in one
run, on bench/scale.py's prompts: its 48 distinct images (640x480 to 1920x1080, JPEG and PNG) annotated with brush
RLEs of their two labels (the SDK's `mask2rle`, as `scale.build_project` annotates them), into a Redis server the
bench starts for itself.

The baseline, "before", is the implementation the fast paths replaced, kept here: the resize as one int32 gather
per filter tap, Label Studio's brush RLE decoded by the SDK's `decode_rle` and a max over the 4 channels, and the
resized image encoded in full as both JPEG and PNG. "after" is the code in the repository. Both must store the
same bytes (entries, images, masks): the bench asserts it. Rounds alternate which path goes first.

Prints per stage the mean ms per prompt of each path, then `ratio=<after/before ms per upsert>` (wall; the CPU
ratio beside it).

    python bench/pool_sync.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backend.prompt_pool as prompt_pool  # noqa: E402
import seggpt_core.images as images_module  # noqa: E402
from backend.label_config import Control  # noqa: E402
from backend.ls_format import AnnotationError, label_key  # noqa: E402
from bench import scale  # noqa: E402
from seggpt_core.images import _fixed_point_weights, open_image, resize_as_network  # noqa: E402


# ---- the baseline: the implementation before the fast paths ---------------------------------------------------

def before_resample_axis(pixels: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One pass of the resize as one int32 gather and multiply-add per filter tap, over the whole image."""
    first, weights, precision = _fixed_point_weights(pixels.shape[axis], out_size)
    source = np.moveaxis(pixels, axis, 0).astype(np.int32)
    last_index = source.shape[0] - 1
    total = np.full((out_size,) + source.shape[1:], 1 << (precision - 1), dtype=np.int32)
    shape = (out_size,) + (1,) * (source.ndim - 1)
    for tap in range(weights.shape[1]):
        total += weights[:, tap].reshape(shape) * source[np.minimum(first + tap, last_index)]
    return np.moveaxis(np.clip(total >> precision, 0, 255).astype(np.uint8), 0, axis)


def before_masks_from_annotation(result, controls, size) -> dict[str, np.ndarray]:
    """Brush regions decoded by the SDK, a pixel drawn when the max of its 4 channels is nonzero."""
    from label_studio_sdk.converter.brush import decode_rle

    height, width = size
    by_name = {c.name: c for c in controls}
    masks: dict[str, np.ndarray] = {}
    for region in result or ():
        control = by_name.get(region.get("from_name"))
        if control is None or region.get("type") != control.kind:
            continue
        flat = decode_rle(region["value"]["rle"])
        if flat.size != height * width * 4:
            raise AnnotationError(f"region {region.get('id')}: wrong size")
        mask = flat.reshape(height, width, 4).max(axis=2) > 0
        for label in region["value"][control.kind]:
            key = label_key(control.name, label)
            masks[key] = masks[key] | mask if key in masks else mask
    return masks


def before_encoding(small: Image.Image) -> bytes:
    """Both encodings in full, the shorter kept (the JPEG on a tie)."""
    encodings = []
    for kind, options in (("JPEG", {"quality": 90, "subsampling": 0}), ("PNG", {"compress_level": 1})):
        buffer = io.BytesIO()
        small.save(buffer, format=kind, **options)
        encodings.append(buffer.getvalue())
    return min(encodings, key=len)


@contextmanager
def before():
    """The repository's pool with the baseline's three pieces in place of the fast ones."""
    saved = images_module._resample_axis, prompt_pool.masks_from_annotation, prompt_pool._smaller_encoding
    images_module._resample_axis = before_resample_axis
    prompt_pool.masks_from_annotation = before_masks_from_annotation
    prompt_pool._smaller_encoding = before_encoding
    try:
        yield
    finally:
        images_module._resample_axis, prompt_pool.masks_from_annotation, prompt_pool._smaller_encoding = saved


@contextmanager
def after():
    yield


PATHS = {"before": before, "after": after}

# ---- measuring ----------------------------------------------------------------------------------------------


def prompts(labels: list[str], images: list[dict]) -> list[tuple[dict, dict, bytes]]:
    from label_studio_sdk.converter.brush import mask2rle

    made = []
    for index, image in enumerate(images):
        height, width = image["size"]
        result = [{"id": f"r{index}-{n}", "from_name": "mask", "to_name": "img", "type": "brushlabels", "original_width": width,
                   "original_height": height, "image_rotation": 0,
                   "value": {"format": "rle", "rle": mask2rle(image["masks"][label].astype(np.uint8) * 255), "brushlabels": [label]}}
                  for n, label in enumerate(labels)]
        made.append(({"id": index + 1, "data": {"image": f"/p/{index}.{image['ext']}"}},
                     {"id": 1000 + index, "result": result, "updated_at": "2026-01-01T00:00:00Z"}, image["bytes"]))
    return made


def stored(connection, pool: prompt_pool.PromptPool) -> dict:
    """Every entry of the pool with the bytes of its image and masks."""
    content = {}
    for entry in pool.entries():
        blobs = [entry["image"]["blob"]] + [m["blob"] for m in entry["masks"].values()]
        content[entry["entry"]] = (json.dumps(entry, sort_keys=True), [connection.get(b) for b in blobs])
    return content


def upserts(connection, project: int, work, controls) -> tuple[float, float, dict]:
    """(wall ms, CPU ms) per upsert of every prompt into a fresh pool, and what the pool then holds."""
    pool = prompt_pool.PromptPool(connection, project)
    wall, cpu = time.perf_counter(), time.process_time()
    for task, annotation, data in work:
        pool.upsert(task, annotation, controls, lambda value, task_id, data=data: data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    content = stored(connection, pool)
    connection.flushdb()
    return wall * 1e3 / len(work), cpu * 1e3 / len(work), content


def stages(work, controls) -> dict[str, float]:
    """Mean ms per prompt of each stage the fast paths touch (the same calls upsert makes)."""
    spent = {"decode masks": 0.0, "resize image": 0.0, "encode image": 0.0}
    for task, annotation, data in work:
        image = open_image(data)
        start = time.perf_counter()
        prompt_pool.masks_from_annotation(annotation["result"], controls, (image.height, image.width))
        spent["decode masks"] += time.perf_counter() - start
        size = (min(image.height, prompt_pool.POOL_IMAGE_SIDE), min(image.width, prompt_pool.POOL_IMAGE_SIDE))
        start = time.perf_counter()
        small = resize_as_network(image, size)
        spent["resize image"] += time.perf_counter() - start
        start = time.perf_counter()
        prompt_pool._smaller_encoding(small)
        spent["encode image"] += time.perf_counter() - start
    return {name: seconds * 1e3 / len(work) for name, seconds in spent.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    labels, images = scale.make_images(scale.DISTINCT_IMAGES)
    controls = [Control("mask", "brushlabels", "img", "image", tuple(labels))]
    work = prompts(labels, images)
    processes = scale.Processes()
    try:
        url, _ = scale.start_redis(processes, Path(tempfile.mkdtemp(prefix="pool-sync-")) / "redis")
        import redis

        connection = redis.Redis.from_url(url)
        results = {name: {"wall": [], "cpu": [], "stages": []} for name in PATHS}
        contents = {}
        for round_ in range(args.rounds):
            order = list(PATHS) if round_ % 2 == 0 else list(PATHS)[::-1]
            for name in order:
                with PATHS[name]():
                    wall, cpu, content = upserts(connection, 1 + round_ * 2 + order.index(name), work, controls)
                    results[name]["stages"].append(stages(work, controls))
                results[name]["wall"].append(wall)
                results[name]["cpu"].append(cpu)
                contents.setdefault(name, content)
            print(f"round {round_ + 1}: " + "  ".join(f"{n} {results[n]['wall'][-1]:.1f} ms" for n in PATHS), flush=True)
    finally:
        processes.stop_all()

    assert contents["before"] == contents["after"], "the two paths stored different entries or bytes"
    print(f"stored entries: {len(contents['after'])}, identical between the paths (entries, images, masks)")
    before_ms, after_ms = (statistics.median(results[n]["wall"]) for n in PATHS)
    before_cpu, after_cpu = (statistics.median(results[n]["cpu"]) for n in PATHS)
    print(f"{'ms per prompt (median of rounds)':<34}{'before':>9}{'after':>9}{'ratio':>8}")
    for stage in results["after"]["stages"][0]:
        old, new = (statistics.median(s[stage] for s in results[n]["stages"]) for n in PATHS)
        print(f"{stage:<34}{old:9.1f}{new:9.1f}{new / old:8.2f}")
    print(f"{'upsert (wall)':<34}{before_ms:9.1f}{after_ms:9.1f}{after_ms / before_ms:8.2f}")
    print(f"{'upsert (CPU, all threads)':<34}{before_cpu:9.1f}{after_cpu:9.1f}{after_cpu / before_cpu:8.2f}")
    print(f"ratio={after_ms / before_ms:.3f} cpu_ratio={after_cpu / before_cpu:.3f} before_ms={before_ms:.1f} after_ms={after_ms:.1f} "
          f"prompts={len(work)} rounds={args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
