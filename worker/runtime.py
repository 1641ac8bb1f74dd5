"""What a worker process keeps between jobs: the loaded model and prepared prompt sets.

The model is loaded once per process (at worker start, or lazily by the first job when jobs run elsewhere);
prompt sets are prepared once per worker and kept on the device, keyed by their content digest.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import redis

from seggpt_core.embedding import image_embedding
from seggpt_core.host_memory import pin_mmap_threshold, release_free_heap
from seggpt_core.weights_digest import weights_digest

from .defaults import PROMPT_CACHE_SIZE
from .payloads import PredictionOptions, PromptSetRef, WorkerInfo
from .prompt_sets import load_learned_prompt, load_prompt_set
from .settings import ModelSettings

__all__ = ["ModelSettings", "WorkerRuntime"]


@dataclass
class WorkerRuntime:
    settings: ModelSettings
    model: Any = None
    load_count: int = 0
    load_seconds: float = 0.0
    prompt_preparations: int = 0
    weights_digest: str | None = None
    # Set when the worker is asked to stop: a running chunk ends at its next batch and goes back to the queue.
    stop_requested: threading.Event = field(default_factory=threading.Event)
    # The RQ execution running now, which claimed its chunk (see `ownership`); None outside a worker.
    execution_id: str | None = None
    _predictors: "OrderedDict[tuple, Any]" = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> Any:
        """Load the model if this process has not yet; returns it."""
        with self._lock:
            if self.model is None:
                # torch: the control worker and the CLI that `serve` runs from import this module (see backend/__init__.py)
                import torch

                from seggpt_core import load_model
                from seggpt_core.model import limit_cpu_activations

                if self.settings.low_memory:
                    pin_mmap_threshold()  # before any forward
                    limit_cpu_activations(4)
                started = time.perf_counter()
                dtype = getattr(torch, self.settings.dtype) if self.settings.dtype else None
                self.model = load_model(self.settings.weights, device=self.settings.device, dtype=dtype)
                self.weights_digest = weights_digest(self.settings.weights)  # resolved locally by now
                self.release_memory()
                self.load_seconds = time.perf_counter() - started
                self.load_count += 1
            return self.model

    def release_memory(self) -> None:
        """With `low_memory`, give the heap's free pages back to the OS (after loading, and after every job)."""
        if self.settings.low_memory:
            release_free_heap()

    def overlaps_host_work(self) -> bool:
        """Whether image loading and result writing should run in threads beside the forward: yes unless the
        forward runs on the CPU with several torch threads that take every core this process may use.

        Several torch threads on every core: a thread beside them preempts one, and each parallel op waits for its
        slowest thread (bench/pipeline_vs_model.py). One torch thread has no op to hold up, and the threads beside
        it mostly wait on the network (media, Label Studio, Redis on another host): the forward goes on meanwhile
        (bench/multihost.py)."""
        if not self.device.startswith("cpu"):
            return True
        import torch  # torch: see `load`

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = torch.get_num_threads()
        return threads == 1 or threads < cores

    @property
    def device(self) -> str:
        if self.model is None:
            return self.settings.device or "auto"
        return str(next(self.model.parameters()).device)

    def predictor_for(self, connection: redis.Redis, prompts: PromptSetRef, options: PredictionOptions = PredictionOptions()) -> Any:
        """A predictor with the prompts `prompts` names prepared, from the cache when this worker has seen them."""
        # what the predictor itself is built with; k, the strategy and the batch size are applied per chunk
        key = (prompts.digest, prompts.learned, options.embedding_type, options.spatial_ensemble, options.labels_per_forward, options.score)
        predictor = self._predictors.get(key)
        if predictor is not None:
            self._predictors.move_to_end(key)
            return predictor
        predictor = self.bare_predictor(options)
        predictor.set_prompts(load_prompt_set(connection, prompts.digest) if prompts.digest else [],
                              learned=load_learned_prompt(connection, prompts.learned) if prompts.learned else None)
        predictor.embeddings = None  # filled on first use by `prompt_embeddings`
        self.prompt_preparations += 1
        self._predictors[key] = predictor
        self.trim_prompt_cache()
        return predictor

    def bare_predictor(self, options: PredictionOptions = PredictionOptions()) -> Any:
        """A predictor with no prompts, for tasks segmented only from the annotator's marks in their own image."""
        from seggpt_core import SegGptPredictor  # torch: see `load`

        return SegGptPredictor(self.load(), embedding_type=options.embedding_type, spatial_ensemble=options.spatial_ensemble,
                               # 0: the model's own limit (its config)
                               labels_per_forward=options.labels_per_forward or None,
                               max_batch_rows=self.settings.max_batch_rows, score=options.score, max_pixels=self.settings.max_pixels)

    def prompt_cache_bytes(self) -> int:
        return sum(predictor.nbytes() for predictor in list(self._predictors.values()))

    def trim_prompt_cache(self) -> None:
        """Drop the least recently used prepared prompt sets beyond PROMPT_CACHE_SIZE entries or
        `settings.prompt_cache_bytes` bytes (the newest always stays: the job in hand needs it)."""
        while len(self._predictors) > 1 and (len(self._predictors) > PROMPT_CACHE_SIZE or self.prompt_cache_bytes() > self.settings.prompt_cache_bytes):
            self._predictors.popitem(last=False)

    @staticmethod
    def prompt_embeddings(predictor: Any) -> list:
        """Embeddings of a predictor's prompts, computed once per prepared prompt set."""
        if predictor.embeddings is None:
            predictor.embeddings = [image_embedding(predictor.prompt_image(i)) for i in range(predictor.prompt_count)]
        return predictor.embeddings

    @property
    def dtype_name(self) -> str:
        """The dtype this worker runs, as jobs name it: its setting, else (SEGGPT_DTYPE=auto) its device's default
        once the model is loaded ("bfloat16" on CUDA, "float32" on the CPU), "auto" before."""
        if self.settings.dtype:
            return self.settings.dtype
        if self.model is None:
            return "auto"
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def info(self, **process: Any) -> WorkerInfo:
        """What this runtime publishes about itself; `process`: the worker's name, host and queues."""
        return WorkerInfo(pid=os.getpid(), device=self.device, weights=self.settings.weights, weights_digest=self.weights_digest,
                          dtype=self.dtype_name, model_loads=self.load_count, model_load_seconds=round(self.load_seconds, 3),
                          prompt_preparations=self.prompt_preparations, prompt_cache_sets=len(self._predictors),
                          prompt_cache_bytes=self.prompt_cache_bytes(), prompt_cache_limit_bytes=self.settings.prompt_cache_bytes,
                          max_batch_rows=self.settings.max_batch_rows, **process)

    def stats(self) -> dict:
        return self.info().to_json()

