"""Time to recover or to give up, per Label Studio fault, against a stand-in Label Studio (tests/ls_standin.py).

Each case runs through the backend's one client policy (`backend/ls_client.py`) with the default deadline
(SEGGPT_LS_DEADLINE, 60 s) unless `--deadline` says otherwise, and prints: the outcome (recovered / gave up and
its one line), seconds, requests sent, and what Label Studio was asked to store. The baseline beside each is the
behaviour issue 29 reported for the client before the policy (retried at once 3 times, or not at all).

    python bench/ls_faults.py [--deadline 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.ls_client import LabelStudioClient, LabelStudioError, RetryPolicy  # noqa: E402
from backend.media import MediaFetcher  # noqa: E402
from tests.ls_standin import StandInLabelStudio  # noqa: E402


def run(name: str, baseline: str, action, standin: StandInLabelStudio) -> None:
    before = len(standin.log)
    started = time.monotonic()
    try:
        outcome = f"recovered: {action()}"
    except LabelStudioError as exc:
        outcome = f"gave up: {exc}"
    seconds = time.monotonic() - started
    stores = [r for r in standin.log[before:] if r[1] in ("POST", "PATCH")]
    print(f"{name:<34} {seconds:6.1f} s  {len(standin.log) - before:3d} request(s)  stored {len(stores)}  | {outcome[:150]}")
    print(f"{'':<34} baseline (issue 29): {baseline}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args()
    standin = StandInLabelStudio()
    client = lambda: LabelStudioClient(standin.url, standin.legacy_token, policy=RetryPolicy(deadline=args.deadline))  # noqa: E731
    try:
        standin.script("GET", "/api/projects/1", (429, "", {"Retry-After": "2"}), (429, "", {"Retry-After": "2"}), (429, "", {"Retry-After": "2"}), (200, {"id": 1}))
        run("429 x3, Retry-After 2", "retried at once 3 times, Retry-After ignored, then a traceback", lambda: client().get_json("/api/projects/1"), standin)

        until = time.monotonic() + 20
        standin.script("GET", "/api/projects/2", lambda q: (503, "busy") if time.monotonic() < until else (200, {"id": 2}))
        run("a 20 s run of 503s", "bootstrap exited on the first 503 with a traceback", lambda: client().get_json("/api/projects/2"), standin)

        standin.script("GET", "/api/projects/3", (503, "busy"))
        run("503 for good", "traceback naming neither Label Studio nor the URL", lambda: client().get_json("/api/projects/3"), standin)

        standin.script("GET", "/api/projects/4", (429, "", {"Retry-After": "3600"}))
        run("429, Retry-After past the deadline", "retried at once 3 times", lambda: client().get_json("/api/projects/4"), standin)

        standin.script("GET", "/api/projects/5", (200, b"<html>proxy</html>", {"Content-Type": "text/html"}))
        run("malformed JSON", "JSONDecodeError traceback", lambda: client().get_json("/api/projects/5"), standin)

        standin.script("GET", "/api/tasks", (200, {"tasks": [{"id": 1}, {"id": 2}], "total": 400, "next": "http://x/?page=2"}))
        run("task list repeating its page", "bootstrap hung with no output", lambda: f"{len(list(client().iter_tasks(1)))} task(s)", standin)

        counter = iter(range(10**9))
        standin.script("GET", "/api/tasks", lambda q: (200, {"tasks": [{"id": next(counter)} for _ in range(100)], "total": 400, "next": "http://x/?page=n"}))
        run("task list whose next never ends", "held the only worker for up to an hour", lambda: f"{len(list(client().iter_tasks(1)))} task(s)", standin)

        standin.script("GET", "/data/upload/1/x.png", (401, {"detail": "Invalid token."}))
        run("401 on a media fetch (LS host)", "final empty prediction, stored by Label Studio for good",
            lambda: MediaFetcher(client()).fetch("/data/upload/1/x.png", 1), standin)
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
