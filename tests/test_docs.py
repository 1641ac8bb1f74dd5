"""The README stays true: its three opening commands, its configuration reference, and the commands of its
"Connecting to Label Studio" section, run as written against a real Label Studio as far as a machine can."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from backend.local_label_studio import LS_VERSION, LabelStudioApi, free_port
from backend.settings import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_three_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in block] == [
        "bash scripts/run.sh demo", "bash scripts/run.sh tryout", "bash scripts/run.sh test"]
    assert "bash scripts/run.sh test" in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_documented():
    for variable, _ in ENVIRONMENT.values():
        assert f"`{variable}`" in README, variable


def _connecting_blocks() -> list[str]:
    section = README.split("## Connecting to Label Studio", 1)[1].split("\n## ", 1)[0]
    return [re.sub(r"^ {3}", "", block, flags=re.M).strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_install_and_start_lines_name_the_version_and_the_flags():
    install, start = _connecting_blocks()[:2]
    assert f"pip install label-studio=={LS_VERSION}" in install and "-m venv" in install
    # the same flags the tryout and the test harness start Label Studio with (backend/local_label_studio.py)
    for needed in ("ML_BLOCK_LOCAL_IP=false", "SSRF_PROTECTION_ENABLED=false", "label-studio start", "--username", "--password"):
        assert needed in start, needed


@pytest.mark.e2e
def test_the_token_environment_serve_and_bootstrap_commands_run_as_written(label_studio, tmp_path):
    """Against the harness's Label Studio (its URL, user and password in place of the README's), with a free port,
    a data directory under tmp_path and a project with two annotated tasks in place of project 1."""
    from backend.tryout_project import create_sample_project

    import httpx

    blocks = _connecting_blocks()
    token, exchange, environment, serve, bootstrap = blocks[2:7]
    project = create_sample_project(LabelStudioApi(label_studio.url, label_studio.legacy_token), 4, say=lambda _: None)
    port = free_port()
    # a user of its own: the harness's user already holds its one personal access token
    user, password = f"readme-{port}@example.com", "readme-password-1"
    with httpx.Client(base_url=label_studio.url, timeout=60) as session:
        session.get("/user/signup/")
        signup = session.post("/user/signup/", data={"email": user, "password": password, "csrfmiddlewaretoken": session.cookies.get("csrftoken")},
                              headers={"Referer": f"{label_studio.url}/user/signup/"})
        assert signup.status_code == 302, signup.text[:500]

    def as_here(text: str) -> str:
        return (text.replace("http://localhost:8080", label_studio.url).replace("admin@example.com", user)
                .replace("change-me-please", password).replace("~/.local/share/seggpt-ls", str(tmp_path / "model"))
                .replace("--port 9090", f"--port {port}").replace("--project 1", f"--project {project}"))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGGPT_", "LABEL_STUDIO_", "BASIC_AUTH_", "REDIS_URL", "MODEL_DIR"))}
    script = "\n".join(["set -euo pipefail", as_here(token), as_here(exchange), as_here(environment), 'echo "PAT=$PAT"',
                        f"{as_here(serve)} > {tmp_path / 'serve.log'} 2>&1 &", "serve=$!", "trap 'kill $serve; wait $serve || true' EXIT",
                        f"for i in $(seq 240); do curl -sf http://127.0.0.1:{port}/health > /dev/null && break; sleep 0.5; done",
                        f"curl -sf http://127.0.0.1:{port}/health", "echo", as_here(bootstrap)])
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-2000:]
    assert re.search(r"^PAT=\S{20,}$", result.stdout, flags=re.M), result.stdout
    assert '"status":"UP"' in result.stdout.replace(" ", "")
    assert "done 2, failed 0" in result.stdout, result.stdout[-2000:]
    api = LabelStudioApi(label_studio.url, label_studio.legacy_token)
    version = api.project(project)["model_version"]
    unannotated = [t for t in api.tasks(project) if not t["annotations"]]
    assert len(unannotated) == 2
    for task in unannotated:
        assert [p["model_version"] for p in api.predictions(task["id"])] == [version]
