"""Per image field: which controls paint it and the prompts it is predicted from. One plan serves /predict, the
interactive suggestion, bootstrap and relabel (relabel is a bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from worker.payloads import PromptSetRef

from .label_config import Control
from .prompt_pool import PromptPool
from .settings import Settings

__all__ = ["FieldPlan", "plan_fields"]


@dataclass(frozen=True)
class FieldPlan:
    """One image field (`$data_key` of the label config) of a project, ready to be queued."""

    data_key: str
    controls: tuple[Control, ...]  # the controls that paint on this field
    prompts: PromptSetRef | None  # None: the field has no prompt yet (no annotation, no learned prompt)
    sources: tuple = ()  # the annotation id of each prompt of the set, in its order

    def task_ref(self, task: dict, **extra) -> dict | None:
        """The job's reference to a Label Studio task's image in this field; None when the task has no such field."""
        value = (task.get("data") or {}).get(self.data_key)
        if value is None:
            return None
        return {"id": task["id"], "image": {"label_studio": {"value": value, "task": task["id"]}}, **extra}


def plan_fields(pool: PromptPool, controls: Sequence[Control], settings: Settings, data_keys: Iterable[str] | None = None) -> list[FieldPlan]:
    """A plan for every image field the controls read (or only `data_keys`), in the order of their names. Storing
    a field's prompt set is part of planning it, so that a job can name the set by its digest."""
    plans = []
    for data_key in sorted(set(data_keys) if data_keys is not None else {c.data_key for c in controls}):
        field_controls = tuple(c for c in controls if c.data_key == data_key)
        prompts, sources = pool.prompt_set_with_sources(data_key, field_controls, settings.candidates_per_label, settings.excluded_prompts)
        plans.append(FieldPlan(data_key, field_controls, prompts, tuple(sources)))
    return plans
