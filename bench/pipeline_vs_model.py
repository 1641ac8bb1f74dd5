"""Bulk throughput of the whole queue path against model-only throughput, on the same tasks.

- model only: the prepared tensors of every task, `predict_prepared` in batches, in this process;
- pipeline: the same tasks as image bytes in Redis, one `seggpt-ls worker` (fetch, decode, preprocess, forward,
  color decoding, mask encoding and the result write, with loading and writing overlapped with the forward).
Both use the same number of torch threads, on a mid-sized model whose forward dominates.
The last line is `ratio=<pipeline tasks/s / model-only tasks/s>` (goal: >= 0.9).

    python bench/pipeline_vs_model.py [--tasks 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from throughput_common import save_mid_model, start_workers, stop, timed_batch, wait_for_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from seggpt_core import Prompt, SegGptPredictor, load_model
    from tests.queue_helpers import scene_prompt, target_bytes
    from worker import EmbeddedRedis, store_blob, store_prompt_set
    from worker.defaults import BATCH_TARGETS

    images = [target_bytes(100 + i, size=(240, 320)) for i in range(args.tasks)]
    with tempfile.TemporaryDirectory() as directory:
        weights = save_mid_model(Path(directory))
        torch.set_num_threads(args.threads)
        predictor = SegGptPredictor(load_model(weights, device="cpu", dtype=torch.float32))
        record = scene_prompt(1)
        predictor.set_prompts([Prompt(record.image, record.masks)])
        prepared = [predictor.prepare_target(data) for data in images]
        predictor.predict_prepared(prepared[:BATCH_TARGETS])  # warm-up
        started = time.perf_counter()
        for start in range(0, len(prepared), BATCH_TARGETS):
            predictor.predict_prepared(prepared[start : start + BATCH_TARGETS])
        model_seconds = time.perf_counter() - started

        server = EmbeddedRedis(Path(directory) / "redis")
        connection = server.connect()
        digest = store_prompt_set(connection, [record])
        tasks = [{"id": i, "image": store_blob(connection, data)} for i, data in enumerate(images)]
        workers = start_workers(1, directory, weights, "pipeline", threads=args.threads)
        try:
            wait_for_workers(connection, "pipeline", 1)
            timed_batch(connection, "pipeline", tasks[:BATCH_TARGETS], digest, chunk_size=BATCH_TARGETS)  # warm-up
            pipeline_seconds = timed_batch(connection, "pipeline", tasks, digest, chunk_size=args.tasks)
        finally:
            stop(workers)
            server.stop()
    print(f"tasks={args.tasks} threads={args.threads} batch={BATCH_TARGETS} (320x240 PNG targets, 2 labels)")
    print(f"model_only seconds={model_seconds:.2f} tasks_per_s={args.tasks / model_seconds:.2f}")
    print(f"pipeline   seconds={pipeline_seconds:.2f} tasks_per_s={args.tasks / pipeline_seconds:.2f}")
    print(f"ratio={model_seconds / pipeline_seconds:.3f}")


if __name__ == "__main__":
    main()
