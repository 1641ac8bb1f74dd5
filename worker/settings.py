"""The job layer's settings, and the one module of the job layer that reads the environment.

A process builds its settings once, at its entry point, from its flags over its environment over the defaults
(`WorkerSettings.from_env(**flags)`), and passes them down: functions take a settings object or its values, never
the environment. `backend/settings.py` does the same for the backend's variables. A process that starts a child
writes the child's environment from `inherited_environment`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from seggpt_core.limits import DEFAULT_MAX_PIXELS
from seggpt_core.weights_files import DEFAULT_WEIGHTS

from .defaults import DEFAULT_QUEUE, PROMPT_CACHE_BYTES, WEIGHTS_WAIT

__all__ = ["DEFAULT_WEIGHTS", "DEFAULT_INTERACTIVE_QUEUE", "DTYPES", "PARENT_PID_VARIABLE", "ModelSettings", "SettingError",
           "WorkerSettings", "data_dir_from_env", "default_data_dir", "inherited_environment", "parse_flag",
           "redis_url_from_env"]

DEFAULT_INTERACTIVE_QUEUE = "seggpt-interactive"
DTYPES = ("auto", "float32", "bfloat16", "float16")
PARENT_PID_VARIABLE = "SEGGPT_PARENT_PID"  # set by a parent for its children (worker/lifecycle.py)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingError(ValueError):
    """A setting with a bad value; the message names the setting and what it must be."""


def parse_flag(raw: str) -> bool:
    """A true-or-false setting as written in an environment: 1/true/yes/on or 0/false/no/off."""
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _value(env: Mapping[str, str], variable: str, parse: Callable[[str], Any], what: str) -> Any:
    """`variable` parsed; None where it is unset or empty (the default applies)."""
    raw = env.get(variable)
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError:
        raise SettingError(f"{variable} must be {what}, got {raw!r}") from None


def _megabytes(raw: str) -> int:
    return int(float(raw) * 2**20)


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class ModelSettings:
    """What a worker loads and how it runs the model (every prediction option travels in the job instead)."""

    weights: str = DEFAULT_WEIGHTS  # SEGGPT_WEIGHTS
    device: str | None = None  # SEGGPT_DEVICE; None: CUDA when available
    dtype: str | None = None  # SEGGPT_DTYPE: "float32", "bfloat16", "float16"; None ("auto"): bf16 on CUDA, fp32 on CPU
    max_batch_rows: int = 8  # SEGGPT_BATCH_ROWS: prompt rows per forward
    # glibc returns freed activations to the OS at once, attention and MLP blocks are 4x smaller, the heap is
    # trimmed after every job: a ViT-L CPU worker's peak is lower, its jobs longer (fresh pages are faulted in on
    # every forward). bench/memory.py measures both.
    low_memory: bool = False  # SEGGPT_LOW_MEMORY
    prompt_cache_bytes: int = PROMPT_CACHE_BYTES  # prepared prompt sets kept, in bytes (SEGGPT_PROMPT_CACHE_MB)
    max_pixels: int = DEFAULT_MAX_PIXELS  # largest image decoded (SEGGPT_MAX_PIXELS): bounds a worker's memory

    def __post_init__(self) -> None:
        if self.dtype == "auto":
            object.__setattr__(self, "dtype", None)
        if self.dtype not in (None, *DTYPES):
            raise SettingError(f"SEGGPT_DTYPE must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_pixels < 1:
            raise SettingError(f"SEGGPT_MAX_PIXELS must be >= 1, got {self.max_pixels}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> "ModelSettings":
        """The defaults, overridden by `env` (default: this process's environment), overridden by the `flags` that
        are not None (an empty device or an "auto" dtype given as a flag means the default)."""
        env = _environment(env)
        values = _given({
            "weights": _value(env, "SEGGPT_WEIGHTS", str, "a weights name"),
            "device": _value(env, "SEGGPT_DEVICE", str, "a device"),
            "dtype": _value(env, "SEGGPT_DTYPE", str, "a dtype"),
            "max_batch_rows": _value(env, "SEGGPT_BATCH_ROWS", int, "a whole number"),
            "low_memory": _value(env, "SEGGPT_LOW_MEMORY", parse_flag, "true or false"),
            "prompt_cache_bytes": _value(env, "SEGGPT_PROMPT_CACHE_MB", _megabytes, "a number of megabytes"),
            "max_pixels": _value(env, "SEGGPT_MAX_PIXELS", int, "a whole number"),
        })
        values.update(_given(flags))
        if values.get("device") == "":
            values["device"] = None
        return cls(**values)


def default_data_dir() -> Path:
    """The data directory where neither MODEL_DIR nor XDG_DATA_HOME says otherwise."""
    return Path.home() / ".local" / "share" / "seggpt-ls"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a process of the job layer takes from outside: where Redis and the data live, which queues a
    worker takes, and its model."""

    model: ModelSettings = field(default_factory=ModelSettings)
    redis_url: str = ""  # REDIS_URL; empty: the embedded Redis under data_dir
    data_dir: Path = field(default_factory=default_data_dir)  # MODEL_DIR, else $XDG_DATA_HOME/seggpt-ls
    queue: str = DEFAULT_QUEUE  # SEGGPT_QUEUE: bulk work
    interactive_queue: str = DEFAULT_INTERACTIVE_QUEUE  # SEGGPT_INTERACTIVE_QUEUE: /predict work, taken first
    weights_wait: float = WEIGHTS_WAIT  # SEGGPT_WEIGHTS_WAIT
    parent_pid: int | None = None  # SEGGPT_PARENT_PID: the process this one ends with (worker/lifecycle.py)

    @property
    def queues(self) -> list[str]:
        """The queues a worker takes by default: interactive work first."""
        return [self.interactive_queue, self.queue]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> "WorkerSettings":
        """The defaults, overridden by `env` (default: this process's environment), overridden by the `flags` that
        are not None: the fields of WorkerSettings and of ModelSettings, by name."""
        env = _environment(env)
        model_names = ModelSettings.__dataclass_fields__.keys()
        model = ModelSettings.from_env(env, **{k: v for k, v in flags.items() if k in model_names})
        values = _given({
            "redis_url": _value(env, "REDIS_URL", str, "a Redis URL"),
            "data_dir": data_dir_from_env(env),
            "queue": _value(env, "SEGGPT_QUEUE", str, "a queue name"),
            "interactive_queue": _value(env, "SEGGPT_INTERACTIVE_QUEUE", str, "a queue name"),
            "weights_wait": _value(env, "SEGGPT_WEIGHTS_WAIT", float, "a number of seconds"),
            "parent_pid": _value(env, PARENT_PID_VARIABLE, int, "a process id"),
        })
        values.update(_given({k: v for k, v in flags.items() if k not in model_names}))
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(model=model, **values)


def data_dir_from_env(env: Mapping[str, str] | None = None) -> Path:
    """`MODEL_DIR`, else `$XDG_DATA_HOME/seggpt-ls` (default `~/.local/share/seggpt-ls`)."""
    env = _environment(env)
    if env.get("MODEL_DIR"):
        return Path(env["MODEL_DIR"])
    return Path(env["XDG_DATA_HOME"]) / "seggpt-ls" if env.get("XDG_DATA_HOME") else default_data_dir()


def redis_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """`REDIS_URL`; empty where it is unset (the embedded Redis)."""
    return _environment(env).get("REDIS_URL") or ""


def inherited_environment(changes: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """A child's environment: a copy of this process's, with `changes` (a value of None removes the variable)."""
    env = dict(os.environ)
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
