"""Settings reach the process that uses them: a worker's environment, a queued run's prediction options, the
histograms /metrics shows (issue 25's misconfigurations)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.cli import SAMPLES, main
from backend.metrics import render
from worker import EmbeddedRedis
from worker.metrics import HISTOGRAMS, observe

from .queue_helpers import start_worker, wait_for, worker_env

ROOT = Path(__file__).resolve().parent.parent


def test_a_worker_takes_the_documented_variables_from_its_environment(model_dir, tmp_path):
    EmbeddedRedis(model_dir / "redis").connect()
    env = {"SEGGPT_PROMPT_CACHE_MB": "1", "SEGGPT_BATCH_ROWS": "3"}
    worker = start_worker(model_dir, "wiring", "--heartbeat-interval", "1", log=tmp_path / "w.log", env=env)
    status = [sys.executable, "-m", "backend.cli", "status", "--json", "--queue", "wiring"]
    try:
        def registered():
            out = subprocess.run(status, env=worker_env(model_dir), capture_output=True, text=True, timeout=60).stdout
            workers = [w for w in json.loads(out)["workers"] if "wiring" in w["queues"]]
            return workers if workers and workers[0]["device"] != "?" else None

        (entry,) = wait_for(registered, 90, interval=0.5, what="the worker to register")
        assert entry["prompt_cache_limit_bytes"] == 2**20
        assert entry["max_batch_rows"] == 3
    finally:
        worker.terminate()
        worker.wait(30)


# The settings modules: each builds its settings from the environment once, at a process's entry point.
SETTINGS_MODULES = {"worker/settings.py", "backend/settings.py"}
_ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(source: str) -> list[int]:
    """The lines of `source` that reach the process environment: `os.environ`, `os.getenv` and the like (under any
    name the module gives `os`), or those names imported from os."""
    tree = ast.parse(source)
    os_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names if alias.name == "os"}
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _ENVIRONMENT_NAMES and isinstance(node.value, ast.Name) \
                and node.value.id in os_names:
            lines.add(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and {a.name for a in node.names} & _ENVIRONMENT_NAMES:
            lines.add(node.lineno)
    return sorted(lines)


def test_the_reader_of_the_environment_finds_every_way_in():
    source = "import os\nimport os as system\nfrom os import environ\na = os.environ.get('A')\nb = system.getenv('B')\n" \
             "c = environ['C']\nos.environ['D'] = '1'\nd = os.path.join('x')\n"
    assert environment_reads(source) == [3, 4, 5, 7]


def test_only_the_settings_modules_read_the_environment():
    reads = {}
    for package in ("seggpt_core", "worker", "backend"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            lines = environment_reads(path.read_text())
            if lines and name not in SETTINGS_MODULES:
                reads[name] = lines
    assert not reads, f"read the environment outside {sorted(SETTINGS_MODULES)}: {reads}"
    assert all(environment_reads((ROOT / name).read_text()) for name in SETTINGS_MODULES)  # they still do the reading


def test_a_worker_builds_its_settings_from_its_flags_over_its_environment_over_the_defaults(monkeypatch, tmp_path):
    from backend.cli import build_parser
    from backend.cli.queue_commands import worker_settings
    from worker.defaults import WEIGHTS_WAIT
    from worker.settings import DEFAULT_WEIGHTS

    def settings(*flags: str):
        return worker_settings(build_parser().parse_args(["worker", *flags]))

    for variable in ("SEGGPT_WEIGHTS", "SEGGPT_DEVICE", "SEGGPT_DTYPE", "SEGGPT_BATCH_ROWS", "SEGGPT_PROMPT_CACHE_MB",
                     "SEGGPT_MAX_PIXELS", "SEGGPT_QUEUE", "SEGGPT_INTERACTIVE_QUEUE", "SEGGPT_WEIGHTS_WAIT", "REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "data"))
    defaults = settings()
    assert (defaults.model.weights, defaults.model.dtype, defaults.model.max_batch_rows, defaults.weights_wait) == (DEFAULT_WEIGHTS, None, 8, WEIGHTS_WAIT)
    assert defaults.queues == ["seggpt-interactive", "seggpt"] and defaults.redis_url == "" and defaults.data_dir == tmp_path / "data"
    for variable, value in {"SEGGPT_WEIGHTS": "random:tiny", "SEGGPT_DEVICE": "cpu", "SEGGPT_DTYPE": "bfloat16", "SEGGPT_BATCH_ROWS": "3",
                            "SEGGPT_PROMPT_CACHE_MB": "1.5", "SEGGPT_MAX_PIXELS": "1000", "SEGGPT_QUEUE": "bulk",
                            "SEGGPT_INTERACTIVE_QUEUE": "now", "SEGGPT_WEIGHTS_WAIT": "7", "REDIS_URL": "redis://elsewhere:6379/0"}.items():
        monkeypatch.setenv(variable, value)
    from_env = settings()
    assert (from_env.model.weights, from_env.model.device, from_env.model.dtype, from_env.model.max_batch_rows) == ("random:tiny", "cpu", "bfloat16", 3)
    assert (from_env.model.prompt_cache_bytes, from_env.model.max_pixels, from_env.weights_wait) == (int(1.5 * 2**20), 1000, 7.0)
    assert from_env.queues == ["now", "bulk"] and from_env.redis_url == "redis://elsewhere:6379/0"
    flagged = settings("--weights", "tiny-appearance", "--dtype", "auto", "--batch-rows", "5", "--weights-wait", "2", "--redis-url", "redis://here/1")
    assert (flagged.model.weights, flagged.model.dtype, flagged.model.max_batch_rows, flagged.weights_wait) == ("tiny-appearance", None, 5, 2.0)
    assert flagged.redis_url == "redis://here/1" and flagged.model.max_pixels == 1000  # what no flag names stays the environment's


def test_a_bad_worker_variable_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("SEGGPT_BATCH_ROWS", "many")
    assert main(["worker", "--burst"]) == 78  # EX_CONFIG, before anything starts
    assert capsys.readouterr().err.strip() == "error: SEGGPT_BATCH_ROWS must be a whole number, got 'many'"


def test_a_worker_refuses_prediction_flags_it_would_ignore(model_dir):
    for flag in (["--score", "agreement"], ["--embedding-type", "semantic"]):
        result = subprocess.run([sys.executable, "-m", "backend.cli", "worker", "--burst", *flag], env=worker_env(model_dir),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "unrecognized arguments" in result.stderr and flag[0] in result.stderr


def _scores(out: Path) -> dict:
    return {image: {label: entry["score"] for label, entry in doc["labels"].items()}
            for image, doc in json.loads((out / "results.json").read_text())["images"].items()}


def test_a_queued_segment_run_keeps_the_agreement_score(tmp_path, model_dir):
    prompts = ["--prompt", f"{SAMPLES / 'prompt.png'}:{SAMPLES / 'prompt_dotted.png'}:dotted"]
    common = ["segment", "--weights", "tiny-appearance", "--device", "cpu", "--images", str(SAMPLES), *prompts]
    assert main([*common, "--score", "agreement", "--out", str(tmp_path / "queued")]) == 0
    assert main([*common, "--no-queue", "--score", "agreement", "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--no-queue", "--out", str(tmp_path / "crisp")]) == 0
    queued, local, crisp = (_scores(tmp_path / name) for name in ("queued", "local", "crisp"))
    assert queued.keys() == local.keys() and len(queued) == len(list(SAMPLES.glob("*.png")))
    for image in queued:
        assert queued[image]["dotted"] == pytest.approx(local[image]["dotted"], abs=1e-3), image
    # the two scores differ, so equality above means the queue ran the agreement score
    assert any(abs(local[i]["dotted"] - crisp[i]["dotted"]) > 1e-3 for i in local)


def test_every_observed_histogram_is_exported(model_dir):
    observed = set()
    for path in [*ROOT.glob("backend/**/*.py"), *ROOT.glob("worker/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "observe" \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                observed.add(node.args[1].value)
    assert "interactive_request_seconds" in observed
    assert observed <= set(HISTOGRAMS), observed - set(HISTOGRAMS)
    connection = EmbeddedRedis(model_dir / "redis").connect()
    observe(connection, "interactive_request_seconds", 0.3)
    text = render(connection, {})
    assert 'seggpt_interactive_request_seconds_bucket{le="0.5"} 1.0' in text


def test_the_dtype_of_the_model_version_travels_with_the_job_and_other_workers_decline_it(tmp_path):
    """The version names the backend's dtype; a worker configured for another leaves the job to one that matches,
    and without one the tasks fail naming both, with nothing written."""
    from backend.predict_service import model_version
    from backend.settings import Settings
    from worker import enqueue_segmentation, fetch_job, job_failures, results_key, store_blob, store_prompt_set

    from .queue_helpers import scene_prompt, target_bytes

    fp32, bf16 = Settings(weights="random:tiny", dtype="float32"), Settings(weights="random:tiny", dtype="bfloat16")
    assert model_version(fp32, "pool", "d") != model_version(bf16, "pool", "d")
    assert fp32.prediction_options.dtype == "float32"
    try:
        connection = EmbeddedRedis(tmp_path / "redis").connect()
        digest = store_prompt_set(connection, [scene_prompt(1)])
        blob = store_blob(connection, target_bytes(4, size=(60, 60)))
        namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": "x", "image": blob}], queue="dtype",
                                                    options=fp32.prediction_options)
        other = start_worker(tmp_path, "dtype", "--dtype", "bfloat16", "--weights-wait", "3", log=tmp_path / "bf16.log")
        try:
            wait_for(lambda: fetch_job(connection, job_id).get_status() == "failed", 90, interval=0.3, what="the job to fail")
        finally:
            other.terminate()
            other.wait(30)
        reason = job_failures(connection, [job_id])["x"]
        assert "float32" in reason and "bfloat16" in reason, reason
        assert connection.hlen(results_key(namespace)) == 0
        assert "left for a matching worker" in (tmp_path / "bf16.log").read_text()
        namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": "y", "image": blob}], queue="dtype",
                                                    options=fp32.prediction_options)
        matching = start_worker(tmp_path, "dtype", "--dtype", "float32", log=tmp_path / "fp32.log")
        try:
            wait_for(lambda: fetch_job(connection, job_id).get_status() == "finished", 90, interval=0.3, what="the fp32 worker")
        finally:
            matching.terminate()
            matching.wait(30)
        assert connection.hlen(results_key(namespace)) == 1
    finally:
        EmbeddedRedis(tmp_path / "redis").stop()


def test_auto_means_one_dtype_per_weights_so_one_version_never_holds_two(tmp_path):
    """SEGGPT_DTYPE=auto (the default) is each device's default: bf16 on CUDA, fp32 on the CPU. The first worker that
    runs an "auto" job for some weights records its dtype; a worker of another dtype then leaves "auto" jobs for those
    weights alone, and without a matching worker their tasks fail naming both, nothing written. (No GPU here: the
    record a bf16 GPU worker would have left is written by the test.)"""
    from worker import enqueue_segmentation, fetch_job, job_failures, queue_status, results_key, store_blob, store_prompt_set
    from worker.keys import auto_dtype_key
    from worker.payloads import PredictionOptions

    from .queue_helpers import scene_prompt, target_bytes

    try:
        connection = EmbeddedRedis(tmp_path / "redis").connect()
        digest = store_prompt_set(connection, [scene_prompt(1)])
        blob = store_blob(connection, target_bytes(4, size=(60, 60)))
        worker = start_worker(tmp_path, "auto-dtype", "--weights-wait", "3", log=tmp_path / "auto.log")  # no --dtype: auto
        try:
            loaded = wait_for(lambda: [w for w in queue_status(connection)["workers"] if w["model_loads"]], 90, interval=0.3, what="the worker")
            weights = loaded[0]["weights_digest"]
            auto = PredictionOptions(dtype="auto")
            namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": "x", "image": blob}], queue="auto-dtype", options=auto)
            wait_for(lambda: fetch_job(connection, job_id).get_status() == "finished", 90, interval=0.3, what="the first auto job")
            assert connection.hlen(results_key(namespace)) == 1
            assert connection.get(auto_dtype_key(weights)) == b"float32"  # what this CPU worker runs for "auto"
            connection.set(auto_dtype_key(weights), "bfloat16")  # as if a bf16 GPU worker had run the first one
            namespace, (job_id,) = enqueue_segmentation(connection, digest, [{"id": "y", "image": blob}], queue="auto-dtype", options=auto)
            wait_for(lambda: fetch_job(connection, job_id).get_status() == "failed", 90, interval=0.3, what="the job to fail")
        finally:
            worker.terminate()
            worker.wait(30)
        reason = job_failures(connection, [job_id])["y"]
        assert "bfloat16" in reason and "float32" in reason and "SEGGPT_DTYPE" in reason, reason
        assert connection.hlen(results_key(namespace)) == 0
        assert "left for a matching worker" in (tmp_path / "auto.log").read_text()
    finally:
        EmbeddedRedis(tmp_path / "redis").stop()


def test_chunk_sizes_come_from_their_own_variables_and_zero_is_refused(monkeypatch):
    from backend.settings import Settings, SettingError

    assert (Settings().chunk_size, Settings().bulk_chunk_size) == (16, 64)  # /predict spreads; bulk work keeps a worker busy
    monkeypatch.setenv("SEGGPT_BULK_CHUNK_SIZE", "128")
    assert (Settings.from_env().chunk_size, Settings.from_env().bulk_chunk_size) == (16, 128)
    for variable in ("SEGGPT_CHUNK_SIZE", "SEGGPT_BULK_CHUNK_SIZE"):
        monkeypatch.setenv(variable, "0")  # chunked() by 0 never ends
        with pytest.raises(SettingError, match=f"{variable} must be >= 1, got 0"):
            Settings.from_env()
        monkeypatch.setenv(variable, "16")
