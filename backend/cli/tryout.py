"""The tryout command: Label Studio, a sample project and this backend on this machine, pre-labeled, in one command.

Everything it starts ends with it: Label Studio and `serve` get the kernel's parent-death signal (SIGKILL of the
tryout included), and `serve` ends its own workers and embedded Redis as it always does.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from worker.lifecycle import exec_child_preexec
from worker.settings import inherited_environment

from ..local_label_studio import LS_VERSION, LabelStudioApi, access_token, free_port, ls_venv, start_process, wait_http
from ..settings import LocalLabelStudioSettings
from ..tryout_project import ANNOTATED, TITLE, create_folder_project, create_sample_project, find_project, prelabel_miou
from .common import CLI_COMMAND

TRYOUT_USER = "tryout@example.com"
BACKEND_USER = "tryout"


def _say(text: str) -> None:
    print(text, flush=True)


def _load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1))
    path.chmod(0o600)  # it holds the password and the token


def _stop(process: subprocess.Popen | None, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cmd_tryout(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if bool(args.real_weights) != bool(args.images):
        raise SystemExit("--real-weights DIR and --images DIR go together: the real SegGPT on your own images")
    if args.label_studio_url and not args.api_key:
        raise SystemExit("--label-studio-url needs --api-key (a legacy token or a personal access token of that Label Studio)")
    local = LocalLabelStudioSettings.from_env()  # built once, here
    home = Path(args.dir).expanduser() if args.dir else local.cache / "tryout"
    if args.fresh and home.exists():
        _say(f"--fresh: removing {home}")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    state_path = home / "state.json"
    state = _load_state(state_path)
    state.setdefault("password", secrets.token_urlsafe(12))
    state.setdefault("token", secrets.token_hex(20))
    state.setdefault("backend_password", secrets.token_urlsafe(12))
    _save_state(state_path, state)

    label_studio = serve = None
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()
        raise KeyboardInterrupt

    for number in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell may start us with it ignored
        signal.signal(number, on_signal)
    try:
        # 1. Label Studio: the one named, else our own on a free port, its data under the cache
        install_seconds = 0.0
        if args.label_studio_url:
            url, token, password = args.label_studio_url.rstrip("/"), args.api_key, "-"
            api = _external_api(url, token)
            user = api.api("GET", "/api/current-user/whoami").json().get("email") or "-"
        else:
            installed = time.monotonic()
            venv = ls_venv(LS_VERSION, say=_say, settings=local)
            install_seconds = time.monotonic() - installed
            port = free_port()
            user, password, token = TRYOUT_USER, state["password"], state["token"]
            _say(f"starting Label Studio {LS_VERSION} from {venv} on port {port} (data: {home / 'label-studio'})")
            label_studio = start_process(venv, home / "label-studio", port, user, password, token)
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health", 300, "Label Studio", label_studio, home / "label-studio" / "label-studio.log")
            api = LabelStudioApi(url, token)
        _say(f"Label Studio {api.version()} at {url}")

        # 2. the project: the one a former run made, else a new one
        project = None if args.fresh and args.label_studio_url else find_project(api)
        if project is not None:
            _say(f"reusing project {project} \"{TITLE}\" ({len(api.tasks(project))} tasks; --fresh starts over)")
        elif args.real_weights:
            project = create_folder_project(api, Path(args.images).expanduser(), tuple(args.labels.split(",")), say=_say)
        else:
            project = create_sample_project(api, args.count, say=_say)

        # 3. serve, with Basic auth, connected to the project as an interactive ML backend
        serve_port = free_port()
        backend_url = f"http://127.0.0.1:{serve_port}"
        env = inherited_environment({
            "MODEL_DIR": str(home / "backend"), "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token,
            "BASIC_AUTH_USER": BACKEND_USER, "BASIC_AUTH_PASS": state["backend_password"],
            "SEGGPT_WEIGHTS": str(Path(args.real_weights).expanduser().resolve()) if args.real_weights else "tiny-appearance",
            "REDIS_URL": None,  # the embedded Redis under MODEL_DIR
        })
        serve_log = home / "serve.log"
        _say(f"starting seggpt-ls serve on {backend_url} (weights {env['SEGGPT_WEIGHTS']}; log: {serve_log})")
        serve = subprocess.Popen([*CLI_COMMAND, "serve", "--host", "127.0.0.1", "--port", str(serve_port), "--workers", "1"],
                                 env=env, stdout=open(serve_log, "ab"), stderr=subprocess.STDOUT, preexec_fn=exec_child_preexec())
        wait_http(f"{backend_url}/health", 180, "seggpt-ls serve", serve, serve_log)
        for old in api.backends(project):
            api.api("DELETE", f"/api/ml/{old['id']}")  # a former run's backend, on a port that is gone
        api.connect_backend(project, backend_url, BACKEND_USER, state["backend_password"], interactive=True)
        _say(f"connected the backend to project {project} (Basic auth, interactive pre-annotations on)")

        # 4. the bootstrap, with its progress bar, on serve's embedded Redis and worker
        summary = ""
        if not args.real_weights:
            result = subprocess.run([*CLI_COMMAND, "--log-level", "WARNING", "bootstrap", "--project", str(project)], env=env,
                                    preexec_fn=exec_child_preexec())
            if result.returncode not in (0, 1):
                raise SystemExit(f"bootstrap failed with exit code {result.returncode}; see {serve_log}")
            version = api.project(project).get("model_version") or None
            miou, per_label, counted = prelabel_miou(api, project, version)
            summary = (f"pre-labels of {counted} tasks against the generator's ground truth: "
                       + ", ".join(f"{label} {value:.3f}" for label, value in per_label.items()) + f"; mIoU {miou:.3f}")
            _say(summary)
        elapsed = time.monotonic() - started
        _say(f"ready in {elapsed:.1f} s" + (f" (of which {install_seconds:.1f} s installing Label Studio)" if install_seconds > 1 else ""))
        _say(f"ready: url={url} user={user} password={password} token={token} project={project}")
        _next_steps(url, project, user, password, len(ANNOTATED), bool(args.real_weights), api)
        _say("Ctrl-C stops Label Studio, the backend, its workers and Redis.")
        while not stop.is_set():
            if serve.poll() is not None:
                raise SystemExit(f"seggpt-ls serve exited with {serve.returncode}; see {serve_log}")
            if label_studio is not None and label_studio.poll() is not None:
                raise SystemExit(f"Label Studio exited with {label_studio.returncode}; see {home / 'label-studio' / 'label-studio.log'}")
            stop.wait(1.0)
    except KeyboardInterrupt:
        _say("stopping")
    except RuntimeError as exc:  # Label Studio or serve refused or failed: one line, then everything stops
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        _stop(serve, 30)  # serve ends its workers and its Redis first
        _stop(label_studio, 30)
    return 0


def _external_api(url: str, token: str):
    """A client for a Label Studio the user runs: the token as a legacy token, else as a personal access token."""
    api = LabelStudioApi(url, token)
    if api.http.get("/api/current-user/whoami").status_code == 200:
        return api
    try:
        return LabelStudioApi(url, access_token(url, token), scheme="Bearer")
    except Exception as exc:
        raise SystemExit(f"Label Studio at {url} refuses the token, as a legacy token and as a personal access token ({exc})") from None


def _next_steps(url: str, project: int, user: str, password: str, annotated: int, own_images: bool, api) -> None:
    total = len(api.tasks(project))
    _say("")
    _say(f"  project: {url}/projects/{project}/data   login: {user} / {password}")
    if own_images:
        _say("  annotate two tasks with the brush, then select the others in the Data Manager and use Actions > Retrieve Predictions")
    else:
        _say(f"  open the Data Manager: {total - annotated} tasks hold pre-labels; sort by prediction score to review the least certain first")
    _say("  open a task, turn on Auto-Annotation and click one instance to get the others")
    _say("")


def add_tryout(commands: argparse._SubParsersAction) -> None:
    tryout = commands.add_parser(
        "tryout", help="Label Studio, a sample project and this backend on this machine, pre-labeled, in one command",
        description="Installs Label Studio into a cached venv of its own (SEGGPT_LS_VENV names one to use), starts it, "
                    "creates the project \"seggpt-ls tryout\" with sample images, two of them annotated, starts serve, connects "
                    "it, pre-labels the rest and stays up until Ctrl-C. A second run reuses the project.")
    tryout.add_argument("--fresh", action="store_true", help="start over: a new Label Studio data directory and project")
    tryout.add_argument("--dir", default=None, help="where the tryout keeps its data (default: ~/.cache/seggpt-ls/tryout)")
    tryout.add_argument("--label-studio-url", default=None, help="use this running Label Studio instead of starting one")
    tryout.add_argument("--api-key", default=None, help="with --label-studio-url: a legacy token or a personal access token")
    tryout.add_argument("--count", type=int, default=40, help="sample images in a new project (default: %(default)s)")
    tryout.add_argument("--real-weights", default=None, help="a local directory with the real SegGPT (config.json, model.safetensors)")
    tryout.add_argument("--images", default=None, help="with --real-weights: a folder of your own images")
    tryout.add_argument("--labels", default="object,background-thing", help="with --images: the labels, comma-separated (default: %(default)s)")
    tryout.set_defaults(handler=cmd_tryout)
