"""What the queue costs: enqueue-to-start latency and the round trip of a no-op job, against a direct call.

Starts a private embedded Redis and one real worker process (`seggpt-ls worker`, tiny random model), enqueues
no-op jobs one at a time, and measures for each:
- enqueue-to-start: from just before `enqueue` to the worker's `started_at` stamp;
- round trip: from just before `enqueue` until the result is readable (polled every 0.5 ms);
- direct: calling the same job function in-process.
Prints medians over `--jobs` runs; the last line is `overhead_ms=<median round trip - median direct>`.

    python bench/queue_overhead.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()

    from worker import EmbeddedRedis, enqueue_noop
    from worker.model_jobs import noop

    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedRedis(Path(directory) / "redis")
        connection = server.connect()
        env = {**os.environ, "MODEL_DIR": directory}
        env.pop("REDIS_URL", None)
        worker = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "worker", "--queue", "bench", "--weights", "random:tiny", "--device", "cpu"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            warm = enqueue_noop(connection, "bench")
            while warm.get_status(refresh=True) != "finished":
                time.sleep(0.05)
            to_start, round_trip = [], []
            for index in range(args.jobs):
                before = time.time()
                job = enqueue_noop(connection, "bench", echo=index)
                while True:
                    result = job.latest_result()
                    if result is not None:
                        break
                    time.sleep(0.0005)
                round_trip.append((time.time() - before) * 1000)
                job.refresh()
                to_start.append((job.started_at.replace(tzinfo=timezone.utc).timestamp() - before) * 1000)
            direct = []
            for index in range(args.jobs):
                started = time.perf_counter()
                noop({"echo": index})
                direct.append((time.perf_counter() - started) * 1000)
        finally:
            worker.terminate()
            worker.wait(30)
            server.stop()
    print(f"jobs={args.jobs} redis=embedded(unix socket, appendfsync always) worker=1 SimpleWorker process")
    print(f"enqueue_to_start_ms median={statistics.median(to_start):.2f} p90={statistics.quantiles(to_start, n=10)[-1]:.2f}")
    print(f"round_trip_ms median={statistics.median(round_trip):.2f} p90={statistics.quantiles(round_trip, n=10)[-1]:.2f}")
    print(f"direct_call_ms median={statistics.median(direct):.4f}")
    print(f"overhead_ms={statistics.median(round_trip) - statistics.median(direct):.2f}")


if __name__ == "__main__":
    main()
