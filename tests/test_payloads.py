"""The job contract: payloads round-trip through JSON, and a malformed one is refused naming the field."""

from __future__ import annotations

import json

import pytest

from worker.payloads import ChunkProgress, PayloadError, PredictionOptions, PromptSetRef, SegmentationChunk, SinkSpec, TaskRef, WorkerInfo


def _chunk() -> SegmentationChunk:
    return SegmentationChunk(PromptSetRef("d" * 64, "l" * 32), (TaskRef(7, {"path": "/a.png"}), TaskRef("x", {"blob": "k"})),
                             "ns", SinkSpec("label_studio", {"project": 3}), PredictionOptions(k=2, dtype="float32"), "abcd")


def test_a_chunk_round_trips_through_json():
    chunk = _chunk()
    assert SegmentationChunk.from_json(json.loads(json.dumps(chunk.to_json()))) == chunk


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("tasks"), "missing 'tasks'"),
    (lambda p: p.update(tasks={"id": 1}), "'tasks' must be list"),
    (lambda p: p["tasks"][1].pop("image"), "task 1: missing 'image'"),
    (lambda p: p["tasks"][0].update(image={"path": "a", "blob": "b"}), "exactly one source key"),
    (lambda p: p["tasks"][0].update(id=[1]), "task 0: 'id' must be int/str"),
    (lambda p: p.update(prompts={"digest": None, "learned": None}), "needs a prompt set digest"),
    (lambda p: p["sink"].pop("name"), "sink: missing 'name'"),
    (lambda p: p.update(options=[1]), "'options' must be an object"),
    (lambda p: p["options"].update(k="5"), "options: 'k' must be a whole number >= 0, got '5'"),
    (lambda p: p["options"].update(k=True), "options: 'k' must be a whole number"),
    (lambda p: p["options"].update(strategy="best"), "options: 'strategy' must be similar or recent, got 'best'"),
    (lambda p: p["options"].update(score="fuzzy"), "options: 'score' must be crisp or agreement"),
    (lambda p: p["options"].update(embedding_type="panoptic"), "options: 'embedding_type' must be instance or semantic"),
    (lambda p: p["options"].update(dtype="float8"), "options: 'dtype' must be one of auto, float32, bfloat16, float16 or null"),
    (lambda p: p["options"].update(spatial_ensemble="yes"), "options: 'spatial_ensemble' must be true or false"),
    (lambda p: p["options"].update(labels_per_forward=-1), "options: 'labels_per_forward' must be a whole number >= 0"),
    (lambda p: p["options"].update(batch_targets=0), "options: 'batch_targets' must be a whole number >= 1"),
    (lambda p: p["options"].update(num_prompts=5), "options: unknown option 'num_prompts'"),
])
def test_a_malformed_chunk_is_refused_naming_the_field(change, message):
    payload = _chunk().to_json()
    change(payload)
    with pytest.raises(PayloadError, match=message):
        SegmentationChunk.from_json(payload)


def test_the_label_studio_sink_params_are_checked_when_read():
    from backend.label_config import Control
    from backend.label_studio_io import LabelStudioSinkParams, label_studio_sink

    control = Control("tag", "brushlabels", "image", "image", ("Cat",))
    spec = label_studio_sink(5, "seggpt-x", [control], request="r1", bulk=True)
    target = LabelStudioSinkParams.from_params(json.loads(json.dumps(spec.params)))
    assert (target.project, target.model_version, target.controls, target.request, target.bulk) == (5, "seggpt-x", (control,), "r1", True)
    with pytest.raises(PayloadError, match="label_studio sink params: KeyError: 'model_version'"):
        LabelStudioSinkParams.from_params({"project": 5, "controls": []})


def test_prediction_options_round_trip_and_read_the_dicts_of_jobs_queued_before_they_were_typed():
    options = PredictionOptions(k=3, strategy="recent", embedding_type="semantic", score="agreement", spatial_ensemble=True,
                                labels_per_forward=2, dtype="bfloat16", batch_targets=6)
    assert PredictionOptions.from_json(json.loads(json.dumps(options.to_json()))) == options
    # the dict the backend queued before (absent keys take their defaults; a CLI's None means "the default")
    old = {"embedding_type": "instance", "k": 5, "strategy": "similar", "dtype": "auto", "labels_per_forward": None}
    assert PredictionOptions.from_json(old) == PredictionOptions(k=5, dtype="auto")
    assert PredictionOptions.from_json(None) == PredictionOptions() and PredictionOptions().dtype is None


def test_chunk_progress_round_trips_through_job_meta_and_refuses_a_bad_field():
    progress = ChunkProgress(total=4, done=2, failed=1, namespace="ns", overlapped=False, failed_tasks={"7": "corrupt"},
                             input_failures=["7"], cancelled=0, declined_by={"w1": "bfloat16"})
    meta = json.loads(json.dumps(progress.to_meta()))
    assert meta["overlapped"] is False and meta["cancelled"] == 0  # set to a false value: still written
    assert "seconds" not in meta and "declined_logged" not in meta  # never set: left out
    assert ChunkProgress.from_meta({**meta, "someone_elses": 1}) == progress
    assert ChunkProgress.from_meta(None) == ChunkProgress()
    with pytest.raises(PayloadError, match="chunk progress: 'done' must be a whole number"):
        ChunkProgress.from_meta({"done": "2"})
    with pytest.raises(PayloadError, match="chunk progress: 'failed_tasks' must be an object"):
        ChunkProgress.from_meta({"failed_tasks": ["7"]})


def test_worker_info_round_trips_and_refuses_a_bad_field():
    info = WorkerInfo(pid=12, device="cpu", weights="random:tiny", weights_digest="ab" * 32, dtype="float32", model_loads=1,
                      name="w1", host="h", queues=("seggpt",))
    assert WorkerInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert WorkerInfo.from_json({**info.to_json(), "newer_field": 1}) == info  # a newer worker may say more
    with pytest.raises(PayloadError, match="worker info: missing 'pid'"):
        WorkerInfo.from_json({"device": "cpu", "weights": "x"})
    with pytest.raises(PayloadError, match="worker info: 'weights_digest' must be str"):
        WorkerInfo.from_json({**info.to_json(), "weights_digest": 5})


def test_the_model_version_follows_what_the_job_carries():
    """Every option that changes a mask, the dtype and the weights digest change the version; what only batches
    the work does not; and the backend's version is the one of the options its jobs carry."""
    from backend.predict_service import model_version, version_of
    from backend.settings import Settings

    base = PredictionOptions(k=5, dtype="auto")
    version = version_of(base, "digest", "pool")
    changed = [PredictionOptions(k=4, dtype="auto"), PredictionOptions(k=5, strategy="recent", dtype="auto"),
               PredictionOptions(k=5, embedding_type="semantic", dtype="auto"), PredictionOptions(k=5, score="agreement", dtype="auto"),
               PredictionOptions(k=5, spatial_ensemble=True, dtype="auto"), PredictionOptions(k=5, labels_per_forward=1, dtype="auto"),
               PredictionOptions(k=5, dtype="float32"), PredictionOptions(k=5, dtype="bfloat16")]
    versions = {version_of(options, "digest", "pool") for options in changed}
    assert len(versions) == len(changed) and version not in versions
    assert version_of(base, "other-digest", "pool") != version
    assert version_of(PredictionOptions(k=5, dtype="auto", batch_targets=16), "digest", "pool") == version
    settings = Settings(weights="random:tiny", num_prompts=5)
    assert model_version(settings, "pool", "digest") == version_of(settings.prediction_options, "digest", "pool") == version
