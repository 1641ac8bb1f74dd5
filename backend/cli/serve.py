"""The serve command: the Label Studio ML backend, with local workers on the embedded Redis."""

from __future__ import annotations

import argparse
import os

from .common import CLI_COMMAND


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from worker import EmbeddedRedis
    from worker.lifecycle import start_child, stop_children

    from ..app import create_app
    from ..settings import ENVIRONMENT, Settings

    overrides = {name: getattr(args, name, None) for name in ENVIRONMENT}
    settings = Settings.from_env(**{k: v for k, v in overrides.items() if v not in (None, "")})
    if settings.model_dir:
        os.environ["MODEL_DIR"] = settings.model_dir  # the embedded Redis lives there, for us and the workers
    # Everything started here is a child that the kernel ends with this process (SIGKILL included), and that the
    # app's shutdown ends first, gracefully (SIGTERM, SIGINT): uvicorn re-raises those signals once it has shut
    # down, so code after uvicorn.run may never run.
    children: list = []
    redis_child = None
    if not settings.redis_url:
        redis_child = EmbeddedRedis().start_owned()  # None: it runs already, owned by another process
        if args.workers > 0:
            # Local workers share the embedded Redis: same environment, same settings.
            env = dict(os.environ)
            for name, (variable, _) in ENVIRONMENT.items():
                value = getattr(settings, name)
                if value not in (None, "", ()):
                    env[variable] = ",".join(value) if isinstance(value, tuple) else str(value)
            for _ in range(args.workers):
                children.append(start_child([*CLI_COMMAND, "--log-level", args.log_level, "worker"], env=env))

    def shut_down() -> None:
        stop_children(children)  # a running chunk stops at its next batch and is re-queued
        if redis_child is not None:
            stop_children([redis_child], timeout=10)  # SIGTERM: Redis writes its data and exits

    try:
        uvicorn.run(create_app(settings, on_shutdown=shut_down), host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        shut_down()  # uvicorn failed to start (a port in use): nothing else would
    return 0


def add_serve(commands: argparse._SubParsersAction) -> None:
    from ..settings import ENVIRONMENT

    serve = commands.add_parser("serve", help="run the Label Studio ML backend (and local workers with the embedded Redis)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every interface, "
                            "then set BASIC_AUTH_USER/PASS: /health and /webhook answer without auth)")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--workers", type=int, default=1, help="local worker processes with the embedded Redis (0: none)")
    for name, (variable, help_text) in ENVIRONMENT.items():
        if name == "log_level":
            continue  # --log-level is the top-level option
        serve.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"{help_text} [{variable}]".replace("%", "%%"))  # argparse formats help
    serve.set_defaults(handler=cmd_serve)
