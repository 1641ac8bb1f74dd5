"""The job contract: payloads round-trip through JSON, and a malformed one is refused naming the field."""

from __future__ import annotations

import json

import pytest

from worker.payloads import PayloadError, PromptSetRef, SegmentationChunk, SinkSpec, TaskRef


def _chunk() -> SegmentationChunk:
    return SegmentationChunk(PromptSetRef("d" * 64, "l" * 32), (TaskRef(7, {"path": "/a.png"}), TaskRef("x", {"blob": "k"})),
                             "ns", SinkSpec("label_studio", {"project": 3}), {"k": 2}, "abcd")


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
