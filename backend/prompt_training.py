"""Prompt tuning for a Label Studio project, as a job: the project's labeled tasks teach one learned prompt per
image field; the frozen SegGPT in the worker process does the work.

Two jobs: `prepare_tuning` (the control queue: re-reads the project's prompts from Label Studio) queues
`train_prompt` (the bulk queue: a model worker tunes the prompt from the pool in Redis, needing no Label Studio).
START_TRAINING and /train queue the first; `seggpt-ls train-prompt` syncs the pool itself and queues the second. The result is saved under MODEL_DIR (a file per
field) and in Redis (so every worker, on any machine, can use it); recording it in the pool changes the model
version, so `/predict` and `bootstrap` use it from then on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from worker import JobContext, data_dir, enqueue_call, store_learned_prompt

from .control_jobs import pool_and_controls, reports_token
from .ls_format import split_label_key
from .prompt_pool import PromptPool, sync_from_label_studio
from .settings import Settings
from .webhook_hints import clear_pending, schedule_hint_job

__all__ = ["train_prompt", "prepare_tuning", "enqueue_prompt_tuning", "learned_prompt_path", "TRAIN_FUNCTION", "PREPARE_FUNCTION",
           "TuningProgress"]

log = logging.getLogger(__name__)

TRAIN_FUNCTION = "backend.prompt_training.train_prompt"
PREPARE_FUNCTION = "backend.prompt_training.prepare_tuning"


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


def _training_payload(settings: Settings, project: int, label_config: str | None) -> dict:
    # what shapes the tuning travels with it: the model worker reads no settings of its own
    return {"project": project, "label_config": label_config, "steps": settings.tune_steps,
            "excluded": sorted(settings.excluded_prompts)}


def enqueue_prompt_tuning(connection, settings: Settings, project: int, label_config: str | None = None, coalesce: bool = False) -> tuple[str, bool]:
    """With `coalesce` (START_TRAINING, /train): queue `prepare_tuning` on the control queue unless one already waits
    for the project (three calls used to queue three tunings of ~30 s each); it re-reads the prompts, then queues the
    tuning. Without (`seggpt-ls train-prompt`, which has synced the pool): queue `train_prompt` itself, on the bulk
    queue, behind nothing interactive. Returns (the job id, whether this call queued it)."""
    payload = _training_payload(settings, project, label_config)
    description = f"tune the prompt of project {project}"
    if coalesce:
        return schedule_hint_job(connection, settings, project, "tune", PREPARE_FUNCTION, payload, description)
    return enqueue_call(connection, TRAIN_FUNCTION, payload, queue=settings.queue, description=description).id, True


@reports_token
def prepare_tuning(payload: dict, context: JobContext) -> dict:
    """Control job: `{"project": id, "label_config": ..., "steps": N, "excluded": [...], "hint_job": ...}`: re-read the
    project's prompts from Label Studio, then queue `train_prompt` for a model worker. Returns its job id."""
    pool, controls = pool_and_controls(payload, context)
    clear_pending(context.connection, pool.project, "tune", payload.get("hint_job"))  # a START_TRAINING from now on queues another
    services = context.services
    if services.client is not None:
        sync_from_label_studio(pool, services.client, services.fetcher.fetch, controls, services.settings.max_pixels)
    if pool.size() == 0:  # said here, in the job the caller was answered with, rather than by a model worker later
        raise ValueError(f"project {pool.project}: no labeled task to tune a prompt on; annotate a few tasks first")
    training = {key: payload.get(key) for key in ("project", "label_config", "steps", "excluded")}
    job = enqueue_call(context.connection, TRAIN_FUNCTION, training, queue=services.settings.queue,
                       description=f"tune the prompt of project {pool.project}")
    return {"project": pool.project, "training_job": job.id}


def learned_prompt_path(project: int, data_key: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in data_key)
    return data_dir() / "prompts" / f"project-{int(project)}" / f"{safe}.safetensors"


def _examples(pool: PromptPool, data_key: str, excluded_by_settings: frozenset[int]) -> list:
    from seggpt_core import Prompt  # torch: not at the top (see backend/__init__.py)

    examples = []
    # a prompt left out (SEGGPT_EXCLUDE_PROMPTS, `seggpt-ls prompts --exclude`) teaches the tuned one nothing either
    excluded = pool.excluded() | excluded_by_settings
    for entry in sorted(pool.entries(), key=lambda e: str(e["entry"])):
        if entry["data_key"] != data_key or entry["annotation"] in excluded:
            continue
        image = pool.connection.get(entry["image"]["blob"])
        if image is None:
            log.warning("task %s: prompt image gone from Redis; not used for tuning", entry["task"])
            continue
        examples.append(Prompt(image, pool.entry_masks(entry)))
    return examples


def train_prompt(payload: dict, context: JobContext) -> dict:
    """Model job: `{"project": id, "label_config": "<View>..." (optional), "steps": N, "excluded": [annotation ids]}`
    -> per-field report. Reads the pool from Redis only."""
    from seggpt_core.prompt_tuning import TuneSettings, tune_prompt  # torch: not at the top (see backend/__init__.py)

    model = context.require_runtime().load()
    job = context.job
    pool, controls = pool_and_controls(payload, context)
    settings = TuneSettings(steps=int(payload.get("steps") or TuneSettings.steps))
    excluded = frozenset(int(a) for a in payload.get("excluded") or ())
    data_keys = sorted({c.data_key for c in controls})
    fields = {key: _examples(pool, key, excluded) for key in data_keys}
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
        digest = store_learned_prompt(context.connection, learned.to_bytes())
        pool.set_learned_prompt(data_key, digest)
        report[data_key] = {"examples": len(examples), "labels": [split_label_key(l)[1] for l in learned.labels],
                            "final_loss": learned.info["final_loss"], "path": str(path), "digest": digest}
    # The model version also depends on the serving settings, which this worker may not share: report the pool's.
    tuning.stage = "done"
    job.meta.update(tuning.to_meta())
    job.save_meta()
    return {"project": pool.project, "fields": report, "pool_version": pool.version()}
