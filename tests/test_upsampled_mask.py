"""The lazy full-size mask equals the eager one: pixels, emptiness, area, and Label Studio's brush RLE."""

from __future__ import annotations

import numpy as np

from backend.ls_rle import mask_to_rle
from seggpt_core.transforms import resize_label_map
from seggpt_core.upsampled_mask import UpsampledMask


def _cases(count: int):
    rng = np.random.default_rng(3)
    for _ in range(count):
        small = tuple(int(v) for v in rng.integers(1, 40, size=2))
        full = tuple(int(v) for v in rng.integers(1, 90, size=2))  # both up- and downsampling, odd ratios
        label_map = (rng.random(small) < rng.random()).astype(np.uint8) * rng.integers(1, 3, size=small).astype(np.uint8)
        yield label_map, int(rng.integers(0, 3)), full


def test_lazy_mask_matches_the_eager_upsampling() -> None:
    for label_map, value, size in _cases(300):
        where = f"{label_map.shape} -> {size}, value {value}"
        lazy = UpsampledMask(label_map, value, size)
        eager = resize_label_map(label_map, size) == value
        assert lazy.shape == eager.shape, where
        assert lazy.any() == eager.any(), where
        assert lazy.sum() == eager.sum(), where
        assert mask_to_rle(lazy) == mask_to_rle(eager), where  # the small map's runs vs a scan of the full array
        assert np.array_equal(np.asarray(lazy), eager), where
        assert np.array_equal(lazy[1:, ::2], eager[1:, ::2]), where
        assert np.array_equal(lazy.astype(np.uint8), eager.astype(np.uint8)), where


def test_label_studio_decodes_the_lazy_rle() -> None:
    from label_studio_sdk.converter.brush import decode_rle

    label_map = np.zeros((448, 448), np.uint8)
    label_map[100:300, 50:120] = 2
    label_map[440:, 440:] = 2  # touches the last row and column
    lazy = UpsampledMask(label_map, 2, (1080, 1920))
    decoded = decode_rle(mask_to_rle(lazy)).reshape(1080, 1920, 4)
    assert np.array_equal(decoded[..., 0] == 255, np.asarray(lazy))
    assert (decoded[..., 0] == decoded[..., 3]).all()


def test_predictor_returns_lazy_masks_that_read_as_arrays() -> None:
    import torch

    from seggpt_core import Prompt, SegGptPredictor, build_model

    torch.manual_seed(0)
    predictor = SegGptPredictor(build_model("tiny", seed=0).eval())
    image = np.random.default_rng(0).integers(0, 255, size=(50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), bool)
    mask[10:30, 20:50] = True
    predictor.set_prompts([Prompt(image, {"a": mask})])
    result = predictor.predict([image])[0]
    lazy = result.masks["a"]
    assert isinstance(lazy, UpsampledMask) and lazy.shape == (50, 70)
    array = np.asarray(lazy)
    assert array.dtype == bool and array.shape == (50, 70)
    assert mask_to_rle(lazy) == mask_to_rle(array)
