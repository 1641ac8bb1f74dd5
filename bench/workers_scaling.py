"""Throughput with 2 workers against 1, on a real Redis (the embedded server), same tasks, same model.

Each worker runs one torch thread, so two workers can use the two cores of this machine. A mid-sized model
(forward-dominated on a CPU) is saved to disk and loaded by real `seggpt-ls worker` processes; timing starts once
the workers have loaded it. The last line is `ratio=<tasks/s with 2 workers / tasks/s with 1>` (goal: >= 1.8
where 2 cores are free).

    python bench/workers_scaling.py [--tasks 48]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from throughput_common import save_mid_model, start_workers, stop, timed_batch, wait_for_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=48)
    args = parser.parse_args()

    from tests.queue_helpers import scene_prompt, target_bytes
    from worker import EmbeddedRedis, store_blob, store_prompt_set

    with tempfile.TemporaryDirectory() as directory:
        weights = save_mid_model(Path(directory))
        server = EmbeddedRedis(Path(directory) / "redis")
        connection = server.connect()
        digest = store_prompt_set(connection, [scene_prompt(1)])
        tasks = [{"id": i, "image": store_blob(connection, target_bytes(100 + i, size=(240, 320)))} for i in range(args.tasks)]
        seconds = {}
        try:
            for count in (1, 2):
                queue = f"scaling-{count}"
                workers = start_workers(count, directory, weights, queue, threads=1)
                try:
                    wait_for_workers(connection, queue, count)
                    timed_batch(connection, queue, tasks[:4], digest, chunk_size=2)  # warm-up
                    seconds[count] = timed_batch(connection, queue, tasks, digest, chunk_size=2)
                finally:
                    stop(workers)
        finally:
            server.stop()
    for count, value in seconds.items():
        print(f"workers={count} tasks={args.tasks} seconds={value:.2f} tasks_per_s={args.tasks / value:.2f}")
    print(f"ratio={seconds[1] / seconds[2]:.3f}")


if __name__ == "__main__":
    main()
