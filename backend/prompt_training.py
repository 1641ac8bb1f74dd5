"""Prompt tuning for a Label Studio project, as a job: the project's labeled tasks teach one learned prompt per
image field; the frozen SegGPT in the worker process does the work.

Started by `seggpt-ls train-prompt` or the START_TRAINING webhook. The result is saved under MODEL_DIR (a file per
field) and in Redis (so every worker, on any machine, can use it); recording it in the pool changes the model
version, so `/predict` and `bootstrap` use it from then on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from rq import get_current_job

from worker import data_dir, enqueue_call, store_learned_prompt

from .control_jobs import pool_and_controls, reports_token
from .ls_format import split_label_key
from .prompt_pool import PromptPool, sync_from_label_studio
from .services import services_from_env
from .webhook_hints import clear_pending, schedule_hint_job

__all__ = ["train_prompt", "enqueue_prompt_tuning", "learned_prompt_path", "TRAIN_FUNCTION", "TuningProgress"]

log = logging.getLogger(__name__)

TRAIN_FUNCTION = "backend.prompt_training.train_prompt"


@dataclass
class TuningProgress:
    """What a tuning job's `job.meta` holds: written by `train_prompt`, read by `seggpt-ls train-prompt`."""

    total: int = 0  # optimisation steps over every field
    done: int = 0
    failed: int = 0
    stage: str = "tuning"  # "tuning", then "done"
    loss: float | None = None  # the last step's
    field: str | None = None  # the image field being tuned

    def to_meta(self) -> dict:
        return {spec.name: getattr(self, spec.name) for spec in fields(self) if getattr(self, spec.name) is not None}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> "TuningProgress":
        known = {spec.name for spec in fields(cls)}
        return cls(**{k: v for k, v in (meta or {}).items() if k in known and v is not None})


def enqueue_prompt_tuning(connection, settings, project: int, label_config: str | None = None, coalesce: bool = False) -> tuple[str, bool]:
    """Queue `train_prompt` for `project` with the settings' step count. Long work: it goes on the bulk queue,
    behind nothing interactive. With `coalesce` (START_TRAINING, /train), a tuning already waiting for the project
    is the answer: three calls used to queue three tunings of ~30 s each. Returns (the job id, whether this call
    queued it)."""
    payload = {"project": project, "label_config": label_config, "steps": settings.tune_steps}
    description = f"tune the prompt of project {project}"
    if coalesce:
        return schedule_hint_job(connection, settings, project, "tune", TRAIN_FUNCTION, payload, description)
    return enqueue_call(connection, TRAIN_FUNCTION, payload, queue=settings.queue, description=description).id, True


def learned_prompt_path(project: int, data_key: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in data_key)
    return data_dir() / "prompts" / f"project-{int(project)}" / f"{safe}.safetensors"


def _examples(pool: PromptPool, data_key: str) -> list:
    from seggpt_core import Prompt

    examples = []
    # a prompt left out (SEGGPT_EXCLUDE_PROMPTS, `seggpt-ls prompts --exclude`) teaches the tuned one nothing either
    excluded = pool.excluded() | services_from_env().settings.excluded_prompts
    for entry in sorted(pool.entries(), key=lambda e: str(e["entry"])):
        if entry["data_key"] != data_key or entry["annotation"] in excluded:
            continue
        image = pool.connection.get(entry["image"]["blob"])
        if image is None:
            log.warning("task %s: prompt image gone from Redis; not used for tuning", entry["task"])
            continue
        examples.append(Prompt(image, pool.entry_masks(entry)))
    return examples


@reports_token
def train_prompt(payload: dict) -> dict:
    """`{"project": id, "label_config": "<View>..." (optional), "steps": N, "sync": true}` -> per-field report."""
    from seggpt_core.prompt_tuning import TuneSettings, tune_prompt
    from worker.runtime import get_runtime

    job, pool, controls = pool_and_controls(payload)
    clear_pending(job.connection, pool.project, "tune", payload.get("hint_job"))  # a START_TRAINING from now on queues another
    services = services_from_env()
    if payload.get("sync", True) and services.client is not None:
        sync_from_label_studio(pool, services.client, services.fetcher.fetch, controls)
    settings = TuneSettings(steps=int(payload.get("steps") or TuneSettings.steps))
    model = get_runtime().load()
    data_keys = sorted({c.data_key for c in controls})
    fields = {key: _examples(pool, key) for key in data_keys}
    total = settings.steps * sum(1 for examples in fields.values() if examples)
    if total == 0:
        raise ValueError(f"project {pool.project}: no labeled task to tune a prompt on; annotate a few tasks first")
    tuning = TuningProgress(total=total)
    job.meta.update(tuning.to_meta())
    job.save_meta()
    report, finished, last_save = {}, 0, 0.0
    for data_key, examples in fields.items():
        if not examples:
            continue

        def progress(step: int, steps: int, loss: float) -> None:
            nonlocal last_save
            if step == steps or time.monotonic() - last_save > 0.5:  # meta writes are cheap, not free
                tuning.done, tuning.loss, tuning.field = finished + step, round(loss, 5), data_key
                job.meta.update(tuning.to_meta())
                job.save_meta()
                last_save = time.monotonic()

        learned = tune_prompt(model, examples, settings, progress=progress)
        finished += settings.steps
        path = learned.save(learned_prompt_path(pool.project, data_key))
        digest = store_learned_prompt(job.connection, learned.to_bytes())
        pool.set_learned_prompt(data_key, digest)
        report[data_key] = {"examples": len(examples), "labels": [split_label_key(l)[1] for l in learned.labels],
                            "final_loss": learned.info["final_loss"], "path": str(path), "digest": digest}
    # The model version also depends on the serving settings, which this worker may not share: report the pool's.
    tuning.stage = "done"
    job.meta.update(tuning.to_meta())
    job.save_meta()
    return {"project": pool.project, "fields": report, "pool_version": pool.version()}
