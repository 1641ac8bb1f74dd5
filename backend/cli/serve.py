"""The serve command: the Label Studio ML backend, with a control worker, and model workers on the embedded Redis."""

from __future__ import annotations

import argparse
import os

import uvicorn

from worker import EmbeddedRedis, data_dir, get_connection
from worker.lifecycle import start_child, stop_children
from worker.redis_supervisor import RedisSupervisor
from worker.settings import inherited_environment
from worker.waiting import STOPPING

from ..app import create_app
from ..health_state import HEALTH
from ..settings import ENVIRONMENT, Settings
from .common import CLI_COMMAND
from .startup_errors import EXIT_IN_USE, StartupError

# A stopping serve ends within 10 s whatever is in flight: requests get GRACE seconds to answer (their waits end at
# once), the workers WORKER_STOP seconds to hand their chunks back, and the embedded Redis, stopped last, REDIS_STOP.
GRACE = 1.0
WORKER_STOP = 5.0
REDIS_STOP = 1.5


def _refuse_a_redis_of_another_serve(server, share: bool) -> None:
    owner = server.owner()
    if share or owner is None or "serve" not in owner[1] or owner[0] == os.getpid():
        return
    raise StartupError(f"MODEL_DIR: {server.directory.parent} is in use: its embedded Redis is run by another serve (pid "
                       f"{owner[0]}); stop that one, set another MODEL_DIR, or set SEGGPT_SHARE_REDIS=true to share it "
                       "(this serve then takes the Redis over when the other stops)", EXIT_IN_USE)


def cmd_serve(args: argparse.Namespace) -> int:
    # built once, here: the flags over the environment over the defaults; passed to the app and the workers
    overrides = {name: getattr(args, name, None) for name in ENVIRONMENT}
    settings = Settings.from_env(**{k: v for k, v in overrides.items() if v not in (None, "")})
    # Everything started here is a child that the kernel ends with this process (SIGKILL included), and that the
    # app's shutdown ends first, gracefully (SIGTERM, SIGINT): uvicorn re-raises those signals once it has shut
    # down, so code after the server's run may never run.
    children: list = []
    supervisor = None
    # Local workers share this process's Redis and settings: this process's, written into their environment
    env = inherited_environment(settings.child_environment())
    worker_command = [*CLI_COMMAND, "--log-level", args.log_level, "worker"]
    if settings.redis_url:
        get_connection(settings.redis_url, settings.data_dir).close()  # unreachable, or a wrong password: one line, before anything starts
    else:
        server = EmbeddedRedis(data_dir(settings.data_dir) / "redis")
        _refuse_a_redis_of_another_serve(server, settings.share_redis)
        # started here (or adopted where another process runs it), restarted whenever it dies, /health told
        supervisor = RedisSupervisor(server, on_change=lambda reason: HEALTH.update("embedded_redis", reason)).start()
        # the children reach serve's Redis by its address and never start one of their own: while it restarts, or
        # while a serve sharing the MODEL_DIR takes it over, one of them would otherwise own it and end it on exit
        env = {**env, "REDIS_URL": server.url}
        for _ in range(args.workers):  # model workers: with REDIS_URL, the operator runs them where the GPUs are
            children.append(start_child(worker_command, env=env))
    for _ in range(args.control_workers):
        # the backend's own jobs (pool syncs, webhook work, relabel planning) run beside the web process, with its
        # settings, and never on a GPU worker; without torch, so it costs next to no memory
        children.append(start_child([*worker_command, "--control"], env=env))

    def shut_down() -> None:
        STOPPING.set()
        stop_children(children, timeout=WORKER_STOP)  # a running chunk goes back to its queue
        if supervisor is not None:
            supervisor.stop(timeout=REDIS_STOP)  # last: SIGTERM, Redis writes its data and exits

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            STOPPING.set()  # a /predict waiting on its jobs answers now, with what is done
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(settings, on_shutdown=shut_down), host=args.host, port=args.port,
                            log_level=args.log_level.lower(), timeout_graceful_shutdown=GRACE)
    server = Server(config)
    try:
        server.run()
    finally:
        shut_down()  # uvicorn failed to start (a port in use): nothing else would
    return 0 if server.started else 1


def add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the Label Studio ML backend (and local workers with the embedded Redis)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every interface, "
                            "then set BASIC_AUTH_USER/PASS: /health and /webhook answer without auth)")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--workers", type=int, default=1, help="local model worker processes with the embedded Redis (0: none)")
    serve.add_argument("--control-workers", type=int, default=1,
                       help="local control workers, for the backend's own jobs, with either Redis (0: none; then run "
                            "`seggpt-ls worker --control` elsewhere) (default: %(default)s)")
    for name, (variable, help_text) in ENVIRONMENT.items():
        if name == "log_level":
            continue  # --log-level is the top-level option
        serve.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"{help_text} [{variable}]".replace("%", "%%"))  # argparse formats help
    serve.set_defaults(handler=cmd_serve)
