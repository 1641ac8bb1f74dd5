"""Shared fixtures: small transformers SegGPT models (the oracle) and their saved checkpoints."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from . import process_check
from .oracle import SMALL_CONFIGS, hf_model


def pytest_sessionstart(session) -> None:
    session.config.stash[_SUBREAPER] = process_check.become_subreaper()
    # SIGTERM ends the run the way Ctrl-C does: fixtures tear down, so what they started stops with them
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the run if a process a test started (a server, a worker, Label Studio, an embedded Redis) or a network
    namespace of the multi-host harness outlived it."""
    if not session.config.stash.get(_SUBREAPER, False) or hasattr(session.config, "workerinput"):
        return
    namespaces = process_check.leftover_namespaces()
    if namespaces:
        session.config.get_terminal_writer().line(f"\nnetwork namespaces left behind by the tests (now removed): {', '.join(namespaces)}", red=True)
        session.exitstatus = 1
    left = process_check.leftovers()
    if left:
        process_check.kill_all(left)  # never let them pile up across runs
        lines = "\n".join(f"  pid {pid}: {command}" for pid, command in sorted(left.items()))
        session.config.get_terminal_writer().line(f"\nprocesses left behind by the tests (now killed):\n{lines}", red=True)
        session.exitstatus = 1


_SUBREAPER = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(transformers model, its save_pretrained directory, config kwargs) for the 'interp' config."""
    config = SMALL_CONFIGS["interp"]
    model = hf_model(config)
    directory = Path(tmp_path_factory.mktemp("hf_tiny"))
    model.save_pretrained(directory)
    return model, directory, config


@pytest.fixture(scope="session")
def tiny_model(tiny_pair):
    from seggpt_core import load_model

    return load_model(tiny_pair[1], device="cpu")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One real Label Studio 1.23.2 for every end-to-end test of the session."""
    from .ls_harness import start_label_studio

    server = start_label_studio(tmp_path_factory.mktemp("label_studio"))
    yield server
    server.stop()


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    """A private data directory for commands run in this process: the queue runs on its own embedded Redis (modules
    with a model_dir of their own, such as test_queue's, override it)."""
    from worker import EmbeddedRedis

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    yield tmp_path / "data"
    EmbeddedRedis(tmp_path / "data" / "redis").stop()
