"""No Docker engine runs here: check that docker-compose.yml and the Dockerfile agree with the CLI and settings."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from backend.cli import build_parser
from backend.settings import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KNOWN_VARIABLES = {variable for variable, _ in ENVIRONMENT.values()} | {"HF_HOME"}


def _environment(service: str) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in SERVICES[service].get("environment", []))


def _parses(command: list[str]) -> None:
    assert command[0] == "seggpt-ls"
    build_parser().parse_args(command[1:])  # exits on an unknown command or flag


def test_services_exist():
    assert set(SERVICES) == {"redis", "label-studio", "backend", "worker"}


def test_redis_persists_with_appendonly():
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])


def test_label_studio_allows_an_internal_backend():
    environment = _environment("label-studio")
    assert SERVICES["label-studio"]["image"].startswith("heartexlabs/label-studio:")
    assert environment["ML_BLOCK_LOCAL_IP"] == "false" and environment["SSRF_PROTECTION_ENABLED"] == "false"


def test_backend_and_worker_commands_parse_and_use_known_settings():
    for service in ("backend", "worker"):
        _parses(SERVICES[service]["command"])
        environment = _environment(service)
        unknown = set(environment) - KNOWN_VARIABLES
        assert not unknown, (service, unknown)
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert environment["LABEL_STUDIO_URL"] == "http://label-studio:8080"  # not localhost: that is the container itself
    assert "--workers" in SERVICES["backend"]["command"] and "0" in SERVICES["backend"]["command"]  # workers are their own service


def test_worker_reserves_a_gpu_and_scales():
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in SERVICES["worker"] and "ports" not in SERVICES["worker"]  # --scale worker=N works


def test_volumes_hold_models_data_and_redis():
    declared = set(COMPOSE["volumes"])
    used = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", [])}
    assert used <= declared and {"redis-data", "backend-data", "model-cache"} <= declared
    assert "model-cache:/models" in SERVICES["worker"]["volumes"] and _environment("worker")["HF_HOME"].startswith("/models")


def test_dockerfile_builds_the_image_both_services_use():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert SERVICES["backend"]["build"] == "."
    assert SERVICES["worker"]["image"] == SERVICES["backend"]["image"]
    assert re.search(r"pip install \"torch==", dockerfile)  # torch before the project
    for folder in ("seggpt_core", "worker", "backend"):
        assert f"COPY {folder} " in dockerfile
    cmd = re.search(r"CMD \[(.*)\]", dockerfile).group(1)
    _parses([part.strip().strip('"') for part in cmd.split(",")])
