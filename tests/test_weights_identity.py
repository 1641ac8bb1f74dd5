"""Weights are named by their content: the digest, the jobs that carry it, and workers that refuse other weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from backend.predict_service import model_version
from backend.settings import Settings
from backend.weights_identity import WeightsUnknown, backend_digest
from seggpt_core import WeightsError, load_model
from seggpt_core.weights_digest import weights_digest
from worker import EmbeddedRedis, enqueue_segmentation, fetch_job, job_failures, results_key, store_blob, store_prompt_set

from .queue_helpers import scene_prompt, start_worker, target_bytes, wait_for, worker_env


def test_the_digest_follows_the_content_not_the_name(tiny_pair, tmp_path):
    _, directory, _ = tiny_pair
    copy = shutil.copytree(directory, tmp_path / "elsewhere")
    assert weights_digest(directory) == weights_digest(copy)  # the same files wherever they live
    assert weights_digest("random:tiny") == weights_digest("random:tiny:0") != weights_digest("random:tiny:1")
    assert weights_digest("tiny-appearance") != weights_digest(directory)
    tensors = copy / "model.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    tensors.write_bytes(bytes(data))
    assert weights_digest(copy) != weights_digest(directory)


def test_the_model_version_changes_with_the_weights_content():
    settings = Settings(weights="random:tiny")
    assert model_version(settings, "pool", weights_digest("random:tiny")) != model_version(settings, "pool", weights_digest("random:tiny:1"))
    assert backend_digest(settings) == weights_digest("random:tiny")
    assert backend_digest(settings.with_(weights_digest="abc123")) == "abc123"
    with pytest.raises(WeightsUnknown, match="SEGGPT_WEIGHTS_DIGEST"):
        backend_digest(Settings(weights="/nowhere/model.safetensors"))


def test_a_config_with_a_repeated_tap_is_refused_at_load_time_naming_the_field(tiny_pair, tmp_path):
    _, directory, _ = tiny_pair
    broken = shutil.copytree(directory, tmp_path / "repeated")
    config = json.loads((broken / "config.json").read_text())
    indices = config["intermediate_hidden_state_indices"]
    config["intermediate_hidden_state_indices"] = indices[:-1] + [indices[-2]]  # e.g. [1, 2, 3, 3]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"intermediate_hidden_state_indices .* repeats layer"):
        load_model(broken, device="cpu")


@pytest.fixture()
def redis_dir(tmp_path):
    yield tmp_path
    EmbeddedRedis(tmp_path / "redis").stop()


def _status(model_dir) -> dict:
    out = subprocess.run([sys.executable, "-m", "backend.cli", "status", "--json", "--queue", "ident"], env=worker_env(model_dir),
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def test_a_worker_with_other_weights_leaves_the_job_to_a_matching_one(redis_dir, tmp_path):
    connection = EmbeddedRedis(redis_dir / "redis").connect()
    digest = store_prompt_set(connection, [scene_prompt(1)])
    blob = store_blob(connection, target_bytes(4, size=(60, 60)))
    expected = weights_digest("random:tiny")
    namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": f"t{i}", "image": blob} for i in range(3)],
                                                queue="ident", weights_digest=expected)
    other = start_worker(redis_dir, "ident", "--weights", "random:tiny:1", log=tmp_path / "other.log")
    matching = None
    try:
        wait_for(lambda: fetch_job(connection, job_id).get_meta().get("declined_by"), 60, what="the other worker to see the job")
        time.sleep(3)  # it keeps declining: nothing is written under a version that does not describe it
        assert connection.hlen(results_key(namespace)) == 0
        assert fetch_job(connection, job_id).get_status() == "queued"
        workers = _status(redis_dir)["workers"]
        assert [w["weights_digest"] for w in workers] == [weights_digest("random:tiny:1")]
        text = subprocess.run([sys.executable, "-m", "backend.cli", "status", "--queue", "ident"], env=worker_env(redis_dir),
                              capture_output=True, text=True, timeout=60).stdout
        assert f"digest {weights_digest('random:tiny:1')}" in text
        matching = start_worker(redis_dir, "ident", "--weights", "random:tiny", log=tmp_path / "matching.log")
        wait_for(lambda: fetch_job(connection, job_id).get_status() == "finished", 90, interval=0.3, what="the matching worker")
        assert connection.hlen(results_key(namespace)) == 3
        job = fetch_job(connection, job_id)
        assert job.get_meta()["worker"]["weights_digest"] == expected
        assert "left for a matching worker" in (tmp_path / "other.log").read_text()
        status = _status(redis_dir)
        assert sorted(w["weights_digest"] for w in status["workers"]) == sorted([expected, weights_digest("random:tiny:1")])
    finally:
        for process in (other, matching):
            if process is not None:
                process.terminate()
                process.wait(30)


def test_without_a_matching_worker_the_tasks_fail_naming_both_digests(redis_dir, tmp_path):
    connection = EmbeddedRedis(redis_dir / "redis").connect()
    digest = store_prompt_set(connection, [scene_prompt(1)])
    blob = store_blob(connection, target_bytes(4, size=(60, 60)))
    expected = weights_digest("random:tiny")
    namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": "x", "image": blob}], queue="ident", weights_digest=expected)
    other = start_worker(redis_dir, "ident", "--weights", "random:tiny:1", "--weights-wait", "2", log=tmp_path / "other.log")
    try:
        wait_for(lambda: fetch_job(connection, job_id).get_status() == "failed", 60, interval=0.3, what="the job to fail")
    finally:
        other.terminate()
        other.wait(30)
    reason = job_failures(connection, [job_id])["x"]
    assert expected in reason and weights_digest("random:tiny:1") in reason, reason
    assert connection.hlen(results_key(namespace)) == 0


def test_a_worker_context_names_its_sinks_and_the_backend_adds_the_label_studio_one():
    import redis

    from backend.job_context import build_job_context
    from backend.label_studio_io import LabelStudioSink
    from backend.settings import Settings
    from worker import JobContext
    from worker.errors import PluginMissing
    from worker.payloads import SinkSpec

    params = {"project": 1, "model_version": "v", "controls": [{"name": "tag", "data_key": "image", "kind": "brush", "labels": ["Cat"], "to_name": "image"}]}
    spec = SinkSpec("label_studio", params)
    with pytest.raises(PluginMissing, match="unknown result sink 'label_studio'; this worker knows: redis"):
        JobContext(redis.Redis()).make_sink(spec, "ns")  # the job layer alone knows only its own
    sink = build_job_context(redis.Redis(), Settings(label_studio_url="http://ls.example")).make_sink(spec, "ns")
    assert isinstance(sink, LabelStudioSink) and sink.services.client.base_url.startswith("http://ls.example")


def test_a_web_process_without_the_weights_takes_the_digest_its_workers_report(tiny_pair, redis_dir, tmp_path):
    weights = shutil.copytree(tiny_pair[1], tmp_path / "only-on-the-worker")
    digest = weights_digest(weights)
    connection = EmbeddedRedis(redis_dir / "redis").connect()
    worker = start_worker(redis_dir, "ident", "--weights", str(weights), log=tmp_path / "worker.log")
    try:
        wait_for(lambda: [w for w in _status(redis_dir)["workers"] if w["weights_digest"] == digest], 60, what="the worker")
        shutil.rmtree(weights)  # as on a web machine that never held them
        assert backend_digest(Settings(weights=str(weights)), connection) == digest
    finally:
        worker.terminate()
        worker.wait(30)
    wait_for(lambda: not _status(redis_dir)["workers"], 30, what="the worker to leave")
    with pytest.raises(WeightsUnknown, match="no live worker reports them"):
        backend_digest(Settings(weights=str(weights)), connection)
