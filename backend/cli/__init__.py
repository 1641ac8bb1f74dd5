"""The `seggpt-ls` command line: the parser and `main`. Heavy imports (torch) happen inside the commands that need them."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from seggpt_core.errors import SegGptError  # light: does not load torch

from . import local, project, queue_commands, review, serve, tryout
from .common import release_embedded_redis
from .local import DEMO_WEIGHTS, SAMPLES, demo_labels
from .startup_errors import report
from ..settings import Settings
from ..weights_identity import WeightsUnknown

__all__ = ["DEMO_WEIGHTS", "SAMPLES", "build_parser", "demo_labels", "main"]

# One registrar per subcommand, in the order `seggpt-ls --help` lists them.
_SUBCOMMANDS = (
    local.add_demo,
    tryout.add_tryout,
    local.add_segment,
    queue_commands.add_worker,
    local.add_train_tiny,
    local.add_eval,
    serve.add_serve,
    queue_commands.add_status,
    project.add_bootstrap,
    project.add_cancel,
    project.add_train_prompt,
    queue_commands.add_retry_failed,
    review.add_report,
    review.add_prompts,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seggpt-ls", description="Few-shot pre-labeling for Label Studio with SegGPT.")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default: LOG_LEVEL, else INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.log_level = args.log_level or Settings.from_env(only=("log_level",)).log_level  # passed on to its children
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns what matters

    try:
        return args.handler(args)
    except (SegGptError, WeightsUnknown) as exc:  # one line that says what to do, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a misconfiguration gets one line and its exit code; anything else its traceback
        code = report(exc)
        if code is None:
            raise
        return code
    finally:
        release_embedded_redis()
