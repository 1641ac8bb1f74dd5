"""Label Studio results and annotations: brush RLE (checked with the SDK decoder), polygons, model versions,
media URL resolution and the host allow-list."""

from __future__ import annotations

import numpy as np
import pytest

from backend.label_config import Control
from backend.ls_client import LabelStudioClient, is_personal_access_token
from backend.ls_format import label_key, masks_from_annotation, prediction_for, AnnotationError
from backend.media import MediaError, MediaFetcher
from backend.predict_service import model_version, project_id
from backend.settings import Settings

BRUSH = Control("tag", "brushlabels", "image", "image", ("Cat", "Dog"))
POLY = Control("poly", "polygonlabels", "image", "image", ("Road",))


def _blob(height=37, width=53) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - 15) ** 2 + (xx - 20) ** 2 < 100


def test_brush_prediction_round_trips_through_the_sdk_decoder():
    from label_studio_sdk.converter.brush import decode_rle

    mask = _blob()
    prediction = prediction_for(7, [BRUSH], {label_key("tag", "Cat"): mask, label_key("tag", "Dog"): np.zeros_like(mask)},
                                {label_key("tag", "Cat"): 0.8, label_key("tag", "Dog"): 0.3}, "v1")
    assert prediction["model_version"] == "v1" and prediction["score"] == 0.8
    (region,) = prediction["result"]  # the empty label gives no region
    assert region["value"]["brushlabels"] == ["Cat"]
    assert (region["original_width"], region["original_height"]) == (53, 37)
    decoded = decode_rle(region["value"]["rle"]).reshape(37, 53, 4)
    assert np.array_equal(decoded[..., 3] == 255, mask) and set(np.unique(decoded).tolist()) == {0, 255}
    again = prediction_for(7, [BRUSH], {label_key("tag", "Cat"): mask}, {label_key("tag", "Cat"): 0.8}, "v1")
    assert again["result"][0]["id"] == region["id"]  # stable ids: re-runs are recognisable


def test_polygon_regions_cover_the_mask_and_rasterize_back():
    mask = np.zeros((60, 90), bool)
    mask[10:30, 5:40] = True
    mask[40:55, 60:85] = True
    prediction = prediction_for(1, [POLY], {label_key("poly", "Road"): mask}, {label_key("poly", "Road"): 0.5}, "v")
    assert len(prediction["result"]) == 2  # one region per component
    back = masks_from_annotation(prediction["result"], [POLY], (60, 90))[label_key("poly", "Road")]
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.9, iou


def test_annotations_become_masks_and_bad_regions_are_named():
    from label_studio_sdk.converter.brush import mask2rle

    mask = _blob()
    result = [{"id": "a", "from_name": "tag", "type": "brushlabels", "value": {"rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Dog"]}},
              {"id": "z", "from_name": "other", "type": "choices", "value": {"choices": ["x"]}}]
    masks = masks_from_annotation(result, [BRUSH], (37, 53))
    assert list(masks) == [label_key("tag", "Dog")] and np.array_equal(masks[label_key("tag", "Dog")], mask)
    with pytest.raises(AnnotationError, match="region a: brush mask holds 1961 pixels, the image 50x40 has 2000"):
        masks_from_annotation(result, [BRUSH], (40, 50))
    with pytest.raises(AnnotationError, match=r"region a: labels \['Dog'\] are not in control 'tag'"):
        masks_from_annotation(result, [Control("tag", "brushlabels", "image", "image", ("Cat",))], (37, 53))


def test_model_version_is_deterministic_and_tracks_what_matters():
    settings = Settings(weights="random:tiny")
    assert model_version(settings, "pool-a") == model_version(Settings(weights="random:tiny"), "pool-a")
    assert model_version(settings, "pool-b") != model_version(settings, "pool-a")
    assert model_version(settings.with_(num_prompts=2), "pool-a") != model_version(settings, "pool-a")
    assert model_version(settings.with_(weights="BAAI/seggpt-vit-large"), "pool-a") != model_version(settings, "pool-a")
    assert model_version(settings.with_(predict_budget=5), "pool-a") == model_version(settings, "pool-a")


def test_project_ids_and_tokens():
    assert project_id("12.1724151234") == 12 and project_id(7) == 7
    with pytest.raises(ValueError, match="not '<id>'"):
        project_id("abc")
    assert is_personal_access_token("eyJh.eyJ0.sig") and not is_personal_access_token("0123456789abcdef0123456789abcdef01234567")


@pytest.fixture
def fetcher():
    return MediaFetcher(LabelStudioClient("http://ls.example:8080", "0" * 40), allowed_hosts=("cdn.example.com", "127.0.0.1:9999"))


def test_media_urls_resolve_to_label_studio_or_presign(fetcher):
    assert fetcher.resolve("/data/upload/3/a.png", 1) == ("http://ls.example:8080/data/upload/3/a.png", False)
    assert fetcher.resolve("/data/local-files/?d=imgs/a.png", 1) == ("http://ls.example:8080/data/local-files/?d=imgs/a.png", False)
    assert fetcher.resolve("/storage-data/uploaded/?filepath=upload/3/a.png", 1)[0].startswith("http://ls.example:8080/storage-data/")
    for uri in ("s3://bucket/a.png", "gs://bucket/a.png", "azure-blob://container/a.png"):
        url, presigned = fetcher.resolve(uri, 42)
        assert presigned and url.startswith("http://ls.example:8080/tasks/42/presign/?fileuri=")
    with pytest.raises(MediaError, match="unsupported image URL"):
        fetcher.resolve("ftp://x/y.png", 1)


def test_only_label_studio_and_allowed_hosts_are_contacted(fetcher):
    assert fetcher._host_allowed("http://ls.example:8080/data/upload/1.png")
    assert fetcher._host_allowed("https://cdn.example.com/a.png")
    assert fetcher._host_allowed("http://127.0.0.1:9999/a.png")
    for url in ("http://127.0.0.1:8080/a.png", "http://169.254.169.254/latest", "http://10.0.0.1/a.png", "http://evil.example/a.png",
                "http://ls.example:8080@evil.example/a.png", "file:///etc/passwd"):
        assert not fetcher._host_allowed(url), url
    with pytest.raises(MediaError, match="host 169.254.169.254 is not allowed"):
        fetcher.fetch("http://169.254.169.254/latest/meta-data", 3)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (37, 53), (270, 480)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_our_rle_decodes_with_the_sdk(shape, density):
    from label_studio_sdk.converter.brush import decode_rle

    from backend.ls_rle import mask_to_rle

    mask = np.random.default_rng(int(density * 100) + shape[0]).random(shape) < density
    decoded = decode_rle(mask_to_rle(mask))
    assert decoded.size == mask.size * 4
    assert np.array_equal(decoded.reshape(*shape, 4) == 255, np.repeat(mask[..., None], 4, axis=2))
    assert set(np.unique(decoded).tolist()) <= {0, 255}


def test_rle_splits_runs_longer_than_the_widest_field():
    from label_studio_sdk.converter.brush import decode_rle

    from backend.ls_rle import mask_to_rle

    mask = np.ones((300, 400), bool)  # 480,000 equal values: several 65,536-long groups
    assert np.array_equal(decode_rle(mask_to_rle(mask)).reshape(300, 400, 4)[..., 3] == 255, mask)
