"""Prompt sets that reference the pool's blobs, a pool sync that leaves unchanged entries alone, and a worker's
prompt cache bounded in bytes. On a real (embedded) Redis."""

from __future__ import annotations

import numpy as np
import pytest

from backend.label_config import parse_label_config
from backend.prompt_pool import PromptPool, sync_from_label_studio
from seggpt_core.research.shapes import make_scene
from worker import EmbeddedRedis, load_prompt_set, store_prompt_set
from worker.prompt_sets import PromptRecord
from worker.runtime import ModelSettings, WorkerRuntime

from .ls_harness import brush_result
from .queue_helpers import png_bytes

CONFIG = """<View><Image name="img" value="$image"/>
<BrushLabels name="mask" toName="img"><Label value="Disc"/><Label value="Star"/></BrushLabels></View>"""


@pytest.fixture()
def connection(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    yield server.connect()
    server.stop()


class _Project:
    """The two things a pool sync reads, served from memory: tasks with annotations, and image bytes by URL."""

    def __init__(self, count: int) -> None:
        self.images, self.tasks, self.fetched = {}, [], []
        for index in range(count):
            scene = make_scene(300 + index, size=(64, 80), must_include=("disc", "star"))
            url = f"http://media/{index}.png"
            self.images[url] = png_bytes(scene.image)
            result = [brush_result(scene.masks["disc"], "Disc", f"d{index}", "mask", "img"),
                      brush_result(scene.masks["star"], "Star", f"s{index}", "mask", "img")]
            self.tasks.append({"id": index + 1, "data": {"image": url},
                               "annotations": [{"id": 100 + index, "result": result, "updated_at": "2026-01-01T00:00:00"}]})

    def iter_tasks(self, project: int, annotated_only: bool = False):
        return iter(self.tasks)  # every task is annotated

    def fetch(self, value: str, task_id) -> bytes:
        self.fetched.append(value)
        return self.images[value]


def test_prompt_sets_reference_the_pool_blobs_and_syncs_skip_unchanged_entries(connection):
    controls = parse_label_config(CONFIG)
    pool = PromptPool(connection, 7)
    project = _Project(6)
    assert sync_from_label_studio(pool, project, project.fetch, controls)["entries"] == 6
    assert len(project.fetched) == 6
    blobs_before = sorted(connection.scan_iter(match="seggpt:blob:*"))
    first = pool.prompt_set("image", controls, 16)
    second = pool.prompt_set("image", controls, 16)
    assert first == second  # same pool, same set
    body = connection.get(f"seggpt:prompts:{first.digest}")
    assert len(body) < 3000 and b"blob" in body  # references, not image bytes (each image alone is larger)
    assert all(len(project.images[url]) > 3000 for url in project.images)
    assert sorted(connection.scan_iter(match="seggpt:blob:*")) == blobs_before  # the images are stored once
    prompts = load_prompt_set(connection, first.digest)
    assert len(prompts) == 6 and {label.split("\x1f")[1] for label in prompts[0].masks} == {"Disc", "Star"}
    assert prompts[0].image in project.images.values()
    # a resync with nothing changed fetches nothing and rewrites nothing
    entries = {e["entry"]: e for e in pool.entries()}
    version = pool.version()
    sync_from_label_studio(pool, project, project.fetch, controls)
    assert len(project.fetched) == 6 and {e["entry"]: e for e in pool.entries()} == entries and pool.version() == version
    # one annotation changes: only that entry is fetched and rewritten
    project.tasks[2]["annotations"][0]["updated_at"] = "2026-02-01T00:00:00"
    sync_from_label_studio(pool, project, project.fetch, controls)
    assert project.fetched[6:] == ["http://media/2.png"]
    changed = {e["entry"]: e for e in pool.entries()}
    assert [k for k in changed if changed[k] != entries[k]] == ["3:image"] and pool.version() != version


def test_a_workers_prompt_cache_is_bounded_in_bytes(connection):
    digests = []
    for seed in range(4):
        scene = make_scene(seed, size=(200, 300), must_include=("disc",))
        digests.append(store_prompt_set(connection, [PromptRecord(png_bytes(scene.image), {"disc": scene.masks["disc"]})]))
    from worker.payloads import PromptSetRef

    unbounded = WorkerRuntime(ModelSettings(weights="random:tiny", device="cpu"))
    one = unbounded.predictor_for(connection, PromptSetRef(digests[0]))
    per_set = one.nbytes()
    assert per_set >= 200 * 300 * 3  # at least the image itself
    bounded = WorkerRuntime(ModelSettings(weights="random:tiny", device="cpu", prompt_cache_bytes=int(2.5 * per_set)))
    for digest in digests:
        bounded.predictor_for(connection, PromptSetRef(digest))
        assert bounded.prompt_cache_bytes() <= 2.5 * per_set
    assert len(bounded._predictors) == 2 and bounded.stats()["prompt_cache_sets"] == 2
    for digest in digests:
        unbounded.predictor_for(connection, PromptSetRef(digest))
    assert len(unbounded._predictors) == 4


def test_large_prompt_images_are_kept_at_the_networks_input_size_with_their_masks(tmp_path):
    """A 1920x1080 annotation is stored at 448x448 (SegGPT's input, resized as the network resizes), upright, its
    mask shrunk with it (nearest): a fraction of the bytes. A flat image stays PNG and reaches the network with
    exactly its original's pixels; pure noise (JPEG's worst case) goes JPEG and moves by under 3 levels of 255."""
    import io

    from PIL import Image

    from backend.prompt_pool import POOL_IMAGE_SIDE, PromptPool
    from backend.label_config import parse_label_config
    from label_studio_sdk.converter.brush import mask2rle
    from seggpt_core.transforms import denormalize, image_to_tensor, open_image
    from worker import EmbeddedRedis

    def network_view(data: bytes) -> np.ndarray:
        return denormalize(image_to_tensor(open_image(data), (448, 448))[None])[0]  # levels of 255

    server = EmbeddedRedis(tmp_path / "redis")
    try:
        connection = server.connect()
        config = '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="Cat"/></BrushLabels></View>'
        controls = parse_label_config(config)
        rng = np.random.default_rng(0)
        noisy = np.clip(rng.normal(128, 12, size=(1080, 1920, 3)), 0, 255).astype(np.uint8)
        flat = np.zeros((1080, 1920, 3), dtype=np.uint8)
        flat[:, :700] = (200, 40, 40)
        flat[300:900, 900:1500] = (20, 180, 60)
        mask = np.zeros((1080, 1920), dtype=bool)
        mask[200:600, 300:1100] = True
        for project, (pixels, kind, stored_as) in enumerate([(noisy, "JPEG", "JPEG"), (noisy, "PNG", "JPEG"), (flat, "PNG", "PNG")], start=1):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=kind)
            original = buffer.getvalue()
            pool = PromptPool(connection, project)
            result = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "id": "r",
                       "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Cat"]}}]
            pool.upsert({"id": 5, "data": {"image": "x"}}, {"id": 9, "result": result, "updated_at": "1"}, controls, lambda v, t: original)
            [entry] = pool.entries()
            stored = connection.get(entry["image"]["blob"])
            with Image.open(io.BytesIO(stored)) as image:
                assert image.size == (POOL_IMAGE_SIDE, POOL_IMAGE_SIDE) and image.format == stored_as
            error = np.abs(network_view(stored) - network_view(original)).mean()
            if stored_as == "PNG":
                assert error == 0
            else:
                assert 0 < error < 3 and len(stored) < 0.25 * len(original)
            [small] = pool.entry_masks(entry).values()
            assert small.shape == (448, 448) and small.sum() == pytest.approx(mask.sum() * (448 / 1920) * (448 / 1080), rel=0.02)
            assert small[int(200 * 448 / 1080) + 1 : int(600 * 448 / 1080), int(300 * 448 / 1920) + 1 : int(1100 * 448 / 1920)].all()
            assert not small[:80].any()
    finally:
        server.stop()


def test_stored_entries_are_what_the_networks_resize_and_the_sdks_decoding_give(connection):
    """The pool's own fast paths (numpy resize, RLE decoding, a PNG encoding cut short once it loses) store the
    very bytes of the plain reference: torch's resize, the SDK's `decode_rle` (any channel drawn), both encodings
    in full and the shorter kept (the JPEG on a tie), Pillow's nearest mask resize."""
    import io

    from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle
    from PIL import Image

    from backend.ls_format import label_key
    from backend.prompt_pool import POOL_IMAGE_SIDE
    from seggpt_core.transforms import _resized_pixels, open_image
    from worker.codec import mask_to_png

    controls = parse_label_config(CONFIG)
    rng = np.random.default_rng(12)
    noisy = np.clip(rng.normal(128, 30, size=(530, 900, 3)), 0, 255).astype(np.uint8)
    flat = np.zeros((700, 460, 3), dtype=np.uint8)
    flat[100:400, 50:300] = (30, 200, 90)
    for project, (pixels, kind, stored_as) in enumerate([(noisy, "JPEG", "JPEG"), (flat, "PNG", "PNG")], start=1):
        height, width = pixels.shape[:2]
        disc = np.zeros((height, width), dtype=bool)
        disc[50:300, 80:400] = True
        star_rgba = np.zeros((height, width, 4), dtype=np.uint8)  # color without alpha still marks a pixel
        star_rgba[200:450, 10:90, 0] = 255
        star_rgba[300:500, 60:70, 3] = 128
        rles = {"Disc": mask2rle(disc.astype(np.uint8) * 255), "Star": encode_rle(star_rgba.reshape(-1))}
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=kind, **({"quality": 92} if kind == "JPEG" else {}))
        original = buffer.getvalue()
        result = [{"id": label, "from_name": "mask", "to_name": "img", "type": "brushlabels",
                   "value": {"format": "rle", "rle": rle, "brushlabels": [label]}} for label, rle in rles.items()]
        pool = PromptPool(connection, project)
        pool.upsert({"id": 3, "data": {"image": "x"}}, {"id": 4, "result": result, "updated_at": "1"}, controls, lambda v, t: original)
        [entry] = pool.entries()

        size = (min(height, POOL_IMAGE_SIDE), min(width, POOL_IMAGE_SIDE))
        small = Image.fromarray(_resized_pixels(open_image(original), size).permute(1, 2, 0).numpy())
        encodings = []
        for format_, options in (("JPEG", {"quality": 90, "subsampling": 0}), ("PNG", {"compress_level": 1})):
            out = io.BytesIO()
            small.save(out, format=format_, **options)
            encodings.append(out.getvalue())
        expected_image = min(encodings, key=len)
        assert expected_image[:4] == (b"\x89PNG" if stored_as == "PNG" else b"\xff\xd8\xff\xe0")
        assert connection.get(entry["image"]["blob"]) == expected_image and entry["size"] == list(size)
        for label, rle in rles.items():
            full = decode_rle(rle).reshape(height, width, 4).max(axis=2) > 0
            shrunk = np.asarray(Image.fromarray(full).resize((size[1], size[0]), Image.NEAREST))
            assert connection.get(entry["masks"][label_key("mask", label)]["blob"]) == mask_to_png(shrunk), label
