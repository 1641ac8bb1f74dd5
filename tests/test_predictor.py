"""The predictor: preprocessing, label groups, sizes, image modes, EXIF orientation and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from seggpt_core import ImageError, Prompt, PromptError, SegGptPredictor, load_model
from seggpt_core.transforms import open_image


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return SegGptPredictor(tiny_model, max_batch_rows=4)


def _scene(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An RGB image with a bright square and a dark disc, and their masks."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    square = (yy > height // 5) & (yy < height // 2) & (xx > width // 5) & (xx < width // 2)
    disc = (yy - 0.7 * height) ** 2 + (xx - 0.7 * width) ** 2 < (0.15 * min(height, width)) ** 2
    image[square] = (240, 230, 20)
    image[disc] = (10, 20, 200)
    return image, square, disc


def test_matches_transformers_processor_and_model(tiny_pair, predictor):
    """The whole path (resize, normalize, canvas, decode, resize back) against transformers' processor + model."""
    from transformers.models.seggpt.image_processing_pil_seggpt import SegGptImageProcessorPil

    reference, _, config = tiny_pair
    side = config["image_size"][1]
    processor = SegGptImageProcessorPil(size={"height": side, "width": side})
    prompt_image, square, _ = _scene(90, 120, seed=1)
    target, _, _ = _scene(75, 130, seed=2)
    inputs = processor(
        images=Image.fromarray(target), prompt_images=Image.fromarray(prompt_image),
        prompt_masks=square.astype(np.int64), num_labels=1, return_tensors="pt",
    )
    with torch.no_grad():
        outputs = reference(**inputs)
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(75, 130)], num_labels=1)[0].numpy()
    ours = predictor.segment([target], [Prompt(prompt_image, {"thing": square})])[0]
    assert ours.masks["thing"].shape == (75, 130)
    agreement = (ours.masks["thing"] == (expected == 1)).mean()
    assert agreement >= 0.99, agreement


@pytest.mark.parametrize("size", [(1, 1), (37, 211), (500, 3), (333, 777), (64, 64)])
def test_masks_come_back_at_the_original_size(predictor, size):
    prompt_image, square, disc = _scene(50, 70, seed=3)
    target, _, _ = _scene(*size, seed=4) if min(size) > 4 else (np.full((*size, 3), 128, np.uint8), None, None)
    result = predictor.segment([target], [Prompt(prompt_image, {"square": square, "disc": disc})])[0]
    assert result.size == size
    assert set(result.masks) == {"square", "disc"}
    for label, mask in result.masks.items():
        assert mask.shape == size and mask.dtype == bool
        assert 0.0 <= result.scores[label] <= 1.0


def test_labels_are_predicted_only_from_prompts_that_annotate_them(predictor):
    image_a, square_a, disc_a = _scene(60, 80, seed=5)
    image_b, square_b, _ = _scene(64, 64, seed=6)
    target, _, _ = _scene(70, 90, seed=7)
    prompts = [Prompt(image_a, {"square": square_a, "disc": disc_a}), Prompt(image_b, {"square": square_b})]
    both = predictor.segment([target], prompts)[0]
    assert predictor.groups == [(("square",), (0, 1)), (("disc",), (0,))]
    # "disc" comes from prompt 0 alone: exactly what a prompt set of prompt 0's disc gives
    disc_only = predictor.segment([target], [Prompt(image_a, {"disc": disc_a})])[0]
    assert np.array_equal(both.masks["disc"], disc_only.masks["disc"])
    assert both.scores["disc"] == pytest.approx(disc_only.scores["disc"], abs=1e-5)
    # labels annotated by the same prompts share one forward, in distinct colors
    predictor.set_prompts([Prompt(image_a, {"square": square_a, "disc": disc_a})])
    assert predictor.groups == [(("disc", "square"), (0,))]  # colors follow sorted names
    assert predictor.labels == ["square", "disc"]  # labels keep the order they were given


def test_batched_targets_equal_one_at_a_time(tiny_model):
    prompt_image, square, _ = _scene(50, 70, seed=8)
    prompts = [Prompt(prompt_image, {"a": square}), Prompt(_scene(40, 40, 9)[0], {"a": _scene(40, 40, 9)[1]})]
    targets = [_scene(30 + 7 * i, 50 + 3 * i, seed=10 + i)[0] for i in range(5)]
    batched = SegGptPredictor(tiny_model, max_batch_rows=8).segment(targets, prompts)
    single = SegGptPredictor(tiny_model, max_batch_rows=1)
    for target, together in zip(targets, batched):
        alone = single.segment([target], prompts)[0]
        assert np.array_equal(alone.masks["a"], together.masks["a"])


def test_spatial_ensemble_uses_one_row_per_group(tiny_model):
    image_a, square_a, _ = _scene(50, 70, seed=11)
    image_b, square_b, _ = _scene(60, 60, seed=12)
    target = _scene(40, 50, seed=13)[0]
    prompts = [Prompt(image_a, {"a": square_a}), Prompt(image_b, {"a": square_b})]
    spatial = SegGptPredictor(tiny_model, spatial_ensemble=True)
    result = spatial.segment([target], prompts)[0]
    assert spatial._groups[0].rows == 1
    feature = SegGptPredictor(tiny_model).segment([target], prompts)[0]
    assert result.masks["a"].shape == feature.masks["a"].shape == (40, 50)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _image_in_mode(mode: str) -> Image.Image:
    rgb = Image.fromarray(_scene(40, 60, seed=14)[0])
    if mode == "I;16":
        return Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
    if mode == "I":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.int32) * 1000)
    if mode == "F":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.float32) / 255.0)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_pil_mode_is_accepted(predictor, mode):
    image = _image_in_mode(mode)
    assert image.mode == mode
    rgb = open_image(image)
    assert rgb.mode == "RGB" and rgb.size == (60, 40)
    gray = np.asarray(rgb)[..., 0].astype(int)
    if mode not in ("1", "P", "CMYK"):
        assert gray.max() - gray.min() > 100  # content kept, not flattened by a bad bit-depth conversion
    square = _scene(40, 60, seed=14)[1]
    result = predictor.segment([image], [Prompt(image, {"square": square})])[0]
    assert result.masks["square"].shape == (40, 60)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied(predictor, orientation):
    upright = Image.fromarray(_scene(40, 64, seed=15)[0])
    inverse = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
               6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}[orientation]
    stored = upright.transpose(inverse)  # what a camera writes, with the tag that undoes it
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(stored, "PNG", exif=exif.tobytes())
    opened = open_image(data)
    assert opened.size == upright.size
    assert np.abs(np.asarray(opened).astype(int) - np.asarray(upright).astype(int)).max() == 0
    square = _scene(40, 64, seed=15)[1]
    result = predictor.segment([data], [Prompt(data, {"square": square})])[0]
    assert result.size == (40, 64)


def test_mis_sized_mask_is_refused_with_its_label(predictor):
    image, square, _ = _scene(50, 70, seed=16)
    with pytest.raises(PromptError, match=r"prompt 1, label 'big square': mask is 71x50 \(WxH\) but its image is 70x50"):
        predictor.set_prompts([Prompt(image, {"ok": square}), Prompt(image, {"big square": np.zeros((50, 71), bool)})])


def test_empty_prompt_sets_are_refused(predictor):
    with pytest.raises(PromptError, match="no prompts given"):
        predictor.set_prompts([])
    with pytest.raises(PromptError, match="prompt 0 has no masks"):
        predictor.set_prompts([Prompt(_scene(20, 20, 1)[0], {})])


def test_predict_without_prompts_fails_clearly(tiny_model):
    with pytest.raises(RuntimeError, match="call set_prompts"):
        SegGptPredictor(tiny_model).predict([_scene(20, 20, 1)[0]])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"definitely not an image", "not an image file"),
        (_encode(Image.new("RGB", (64, 64), "red"), "JPEG")[:200], "corrupt or truncated"),
        (np.zeros((0, 5, 3), np.uint8), "zero area"),
    ],
    ids=["empty", "garbage", "truncated", "zero-area"],
)
def test_bad_targets_are_refused_by_name(predictor, data, message):
    predictor.set_prompts([Prompt(_scene(20, 20, 1)[0], {"a": _scene(20, 20, 1)[1]})])
    with pytest.raises(ImageError, match=f"target 1: .*{message}"):
        predictor.predict([_scene(20, 20, 2)[0], data])


def test_decompression_bomb_is_refused(tiny_model):
    bomb = _encode(Image.new("1", (15000, 11000)), "PNG")  # 165 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="15000x11000 = 165000000 pixels, more than the limit"):
        SegGptPredictor(tiny_model).prepare_target(bomb)
    small_limit = SegGptPredictor(tiny_model, max_pixels=1000)
    with pytest.raises(ImageError, match="more than the limit 1000"):
        small_limit.prepare_target(_scene(40, 40, 1)[0])


def test_cuda_or_cpu_defaults():
    model = load_model("random:tiny")
    param = next(model.parameters())
    if torch.cuda.is_available():
        assert param.device.type == "cuda"
    else:
        assert (param.device.type, param.dtype) == ("cpu", torch.float32)


def test_large_jpegs_decode_reduced_yet_masks_keep_the_original_size(predictor):
    from seggpt_core.transforms import image_to_tensor

    scene = _scene(1080, 1920, seed=21)[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed as 1080 wide, 1920 high
    data = _encode(Image.fromarray(scene), "JPEG", quality=92, exif=exif.tobytes())
    prepared = predictor.prepare_target(data)
    assert prepared.size == (1920, 1080)
    full = image_to_tensor(open_image(data), predictor.size)
    assert (prepared.tensor - full).abs().mean().item() < 0.05  # the model sees nearly the same input
    square = _scene(40, 60, seed=14)[1]
    predictor.set_prompts([Prompt(_scene(40, 60, seed=14)[0], {"square": square})])
    assert predictor.predict_prepared([prepared])[0].masks["square"].shape == (1920, 1080)


def test_score_is_the_soft_iou_of_the_mask_with_the_painted_colors():
    """Crisp painting scores 1, fringes of in-between colors lower it, no mask scores 0 (see _decode)."""
    from seggpt_core.predictor import Segmentation, _LabelGroup
    from seggpt_core.palette import make_palette

    palette = make_palette(1)
    group = _LabelGroup(["x"], (0,), palette, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    crisp = np.zeros((8, 8, 3), np.float32)
    crisp[2:6, 2:6] = 255
    blurred = crisp.copy()
    blurred[1, 1:7] = blurred[6, 1:7] = 100  # a fringe: below halfway, so outside the mask but close to it
    blurred[2:6, 2:6] = 170
    scores = []
    for rgb in (crisp, blurred, np.zeros_like(crisp)):
        result = Segmentation({}, {}, (8, 8))
        SegGptPredictor._decode(rgb, group, (8, 8), result)
        scores.append(result.scores["x"])
    assert scores[0] == pytest.approx(1.0) and 0.2 < scores[1] < 0.9 and scores[2] == 0.0
    assert np.array_equal(result.masks["x"], np.zeros((8, 8), bool))


def test_labels_per_forward_paints_each_label_alone(tiny_model):
    image, square, disc = _scene(60, 80, seed=5)
    target, _, _ = _scene(70, 90, seed=7)
    separate = SegGptPredictor(tiny_model, labels_per_forward=1)
    result = separate.segment([target], [Prompt(image, {"square": square, "disc": disc})])[0]
    assert separate.groups == [(("disc",), (0,)), (("square",), (0,))]
    for label, mask in (("disc", disc), ("square", square)):  # each exactly as if it were the only label
        alone = SegGptPredictor(tiny_model).segment([target], [Prompt(image, {label: mask})])[0]
        assert np.array_equal(result.masks[label], alone.masks[label])
