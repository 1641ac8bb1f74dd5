"""Backend settings: environment variables in the label-studio-ml-backend convention, each with a CLI flag.

With worker/settings.py, the only module that reads the environment: each entry point (serve, each command)
builds its Settings once, from its flags over its environment over the defaults, and passes them down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from seggpt_core.limits import DEFAULT_MAX_PIXELS
from seggpt_core.weights_files import DEFAULT_WEIGHTS
from worker.defaults import DEFAULT_QUEUE
from worker.settings import (DEFAULT_INTERACTIVE_QUEUE, ModelSettings, SettingError, WorkerSettings, data_dir_from_env, default_data_dir,
                             parse_flag)
from worker.payloads import PredictionOptions

from .region_filter import RegionFilter, parse_label_thresholds, parse_min_area

__all__ = ["Settings", "ENVIRONMENT", "SettingError", "LocalLabelStudioSettings"]

# field name -> (environment variable, help). The README's configuration reference mirrors this table.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "label_studio_url": ("LABEL_STUDIO_URL", "Label Studio base URL, for the API and media (e.g. http://localhost:8080)"),
    "label_studio_api_key": ("LABEL_STUDIO_API_KEY", "legacy token or personal access token of a Label Studio user"),
    "basic_auth_user": ("BASIC_AUTH_USER", "when set (with BASIC_AUTH_PASS), every route but /health requires HTTP Basic auth"),
    "basic_auth_pass": ("BASIC_AUTH_PASS", "password for BASIC_AUTH_USER"),
    "model_dir": ("MODEL_DIR", "data directory: embedded Redis, caches (default ~/.local/share/seggpt-ls)"),
    "log_level": ("LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR"),
    "weights": ("SEGGPT_WEIGHTS", "hub id, directory, .safetensors, original .pth, or random:<variant>"),
    "weights_digest": ("SEGGPT_WEIGHTS_DIGEST", "content digest of the weights, for a web process that cannot read them (default: computed, or reported by the workers)"),
    "redis_url": ("REDIS_URL", "external Redis; unset: the embedded Redis under MODEL_DIR"),
    "num_prompts": ("SEGGPT_NUM_PROMPTS", "K: prompts per label for each prediction (feature ensemble)"),
    "dtype": ("SEGGPT_DTYPE", "auto, float32, bfloat16, float16"),
    "device": ("SEGGPT_DEVICE", "cuda:0, cpu, ... (default: CUDA when available)"),
    "embedding_type": ("SEGGPT_EMBEDDING_TYPE", "instance or semantic"),
    "predict_budget": ("SEGGPT_PREDICT_BUDGET", "seconds /predict waits before the rest goes on in the background; keep below ML_TIMEOUT_PREDICT"),
    "allowed_media_hosts": ("ALLOWED_MEDIA_HOSTS", "comma-separated hosts (host or host:port) media may be fetched from, besides Label Studio"),
    "media_max_bytes": ("SEGGPT_MEDIA_MAX_BYTES", "largest image download accepted"),
    "media_timeout": ("SEGGPT_MEDIA_TIMEOUT", "seconds one image fetch may take in all (redirects and every read together); a host still sending after it is the image's fault (final)"),
    "max_pixels": ("SEGGPT_MAX_PIXELS", "largest image area a worker decodes, in pixels (a 12000x12000 PNG of 140 KB takes a worker past 1.7 GB)"),
    "max_body_bytes": ("SEGGPT_MAX_BODY_BYTES", "largest request body /predict, /setup and /train accept (413 beyond); checked after auth, before the body is parsed"),
    "max_webhook_bytes": ("SEGGPT_MAX_WEBHOOK_BYTES", "largest /webhook body accepted (413 beyond); a lost hint is caught up by the next pool sync"),
    "webhook_secret": ("SEGGPT_WEBHOOK_SECRET", "when set, /webhook requires this value in the X-Seggpt-Webhook-Secret header (or the Basic auth credentials): set it as a custom header of the project's webhook in Label Studio"),
    "ls_deadline": ("SEGGPT_LS_DEADLINE", "seconds one call to Label Studio may take in all, its retries included (429 waits Retry-After, 5xx backs off), before it gives up in one line"),
    "queue": ("SEGGPT_QUEUE", "queue for bulk work"),
    "interactive_queue": ("SEGGPT_INTERACTIVE_QUEUE", "queue for /predict work; workers take it first"),
    "control_queue": ("SEGGPT_CONTROL_QUEUE", "queue for the backend's own work (pool syncs, webhook work, relabel and bootstrap planning, review records), served by a control worker without the model"),
    "chunk_size": ("SEGGPT_CHUNK_SIZE", "tasks per queued job of a /predict request (its chunks go to every free worker)"),
    "bulk_chunk_size": ("SEGGPT_BULK_CHUNK_SIZE", "tasks per queued job of bootstrap and relabels: a worker fetches a chunk's first targets and waits for its last writes with nothing to overlap them, so larger chunks lose less of it (docs/benchmarks.md)"),
    "import_each_above": ("SEGGPT_IMPORT_EACH_ABOVE", "once more of the project's tasks than this hold an annotation or a prediction, bootstrap writes one POST per prediction instead of one bulk import per chunk (Label Studio 1.23.2 recounts all those tasks on each bulk import; -1: always bulk)"),
    "prompt_strategy": ("SEGGPT_PROMPT_STRATEGY", "similar (the K most similar annotated images per label) or recent"),
    "auto_relabel": ("SEGGPT_AUTO_RELABEL", "re-predict the unlabeled tasks when the prompts change (new model version)"),
    "auto_prelabel": ("SEGGPT_AUTO_PRELABEL", "pre-label newly imported tasks once the project has a prompt"),
    "keep_old_predictions": ("SEGGPT_KEEP_OLD_PREDICTIONS", "on relabel, keep older predictions (false: delete this backend's older ones)"),
    "labels_per_forward": ("SEGGPT_LABELS_PER_FORWARD", "paint at most N labels per forward (0: the model's own limit, from its config: 1 for tiny-appearance, none for SegGPT)"),
    "score_threshold": ("SEGGPT_SCORE_THRESHOLD", "leave out predicted regions scoring below this (0: keep all); a control's model_score_threshold applies too"),
    "label_thresholds": ("SEGGPT_LABEL_THRESHOLDS", "per-label score thresholds, e.g. Cat=0.6,Dog=0.3"),
    "min_area": ("SEGGPT_MIN_AREA", "leave out regions (and polygon components) smaller than this: pixels (200) or a share of the image (0.5%)"),
    "score": ("SEGGPT_SCORE", "crisp (one forward) or agreement (also paints the mirrored image: orders masks by quality for review, Spearman 0.56 against 0.31, at twice the compute)"),
    "tune_steps": ("SEGGPT_TUNE_STEPS", "optimisation steps of prompt tuning (train-prompt, START_TRAINING)"),
    "share_redis": ("SEGGPT_SHARE_REDIS", "let serve use a MODEL_DIR whose embedded Redis another live serve runs (refused otherwise); it takes the Redis over when that one stops"),
    "auto_thresholds": ("SEGGPT_AUTO_THRESHOLDS", "apply each label's score threshold calibrated from review records (part of the model version; SEGGPT_LABEL_THRESHOLDS entries win)"),
    "calibration_min_regions": ("SEGGPT_CALIBRATION_MIN_REGIONS", "reviewed predicted regions a label needs before it gets a calibrated threshold"),
    "exclude_prompts": ("SEGGPT_EXCLUDE_PROMPTS", "annotation ids left out of the prompts, e.g. 12,57 (the annotations stay in Label Studio)"),
    "review_max_records": ("SEGGPT_REVIEW_MAX_RECORDS", "review records kept per project (the oldest go first)"),
}


_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number"}


def _parse(kind: type, raw: str) -> Any:
    if kind is bool:
        return parse_flag(raw)
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is tuple:
        return tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    return raw


def _parse_named(name: str, kind: type, raw: str) -> Any:
    try:
        return _parse(kind, raw)
    except ValueError:
        raise SettingError(f"{name} must be {_KIND_NAMES.get(kind, 'a value')}, got {raw!r}") from None


# Label Studio 1.23.2's bulk prediction import (its default, "legacy" path) recounts the annotations and predictions
# of every task of the project that has any, so its cost grows as a bootstrap fills the project; a POST per
# prediction updates only its own task. Measured (docs/benchmarks.md): for a chunk of 16, about even at 2,000 such
# tasks (0.5-0.75 s against 0.8 s of Label Studio CPU), and the import several times dearer by 10,000.
IMPORT_EACH_ABOVE = 2000


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = ""
    label_studio_api_key: str = field(default="", repr=False)  # never printed
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    model_dir: str = ""
    log_level: str = "INFO"
    weights: str = DEFAULT_WEIGHTS
    weights_digest: str = ""
    redis_url: str = ""
    num_prompts: int = 5
    dtype: str = "auto"
    device: str = ""
    embedding_type: str = "instance"
    predict_budget: float = 80.0
    allowed_media_hosts: tuple = ()
    media_max_bytes: int = 64 * 2**20
    media_timeout: float = 30.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_body_bytes: int = 8 * 2**20
    max_webhook_bytes: int = 2**20
    webhook_secret: str = field(default="", repr=False)  # never printed
    ls_deadline: float = 60.0
    queue: str = DEFAULT_QUEUE
    interactive_queue: str = DEFAULT_INTERACTIVE_QUEUE
    control_queue: str = "seggpt-control"
    chunk_size: int = 16
    bulk_chunk_size: int = 64
    import_each_above: int = IMPORT_EACH_ABOVE
    prompt_strategy: str = "similar"
    auto_relabel: bool = False
    auto_prelabel: bool = True
    keep_old_predictions: bool = True
    labels_per_forward: int = 0
    score: str = "crisp"
    tune_steps: int = 150
    share_redis: bool = False
    score_threshold: float = 0.0
    label_thresholds: str = ""
    min_area: str = "0"
    auto_thresholds: bool = False
    calibration_min_regions: int = 20
    exclude_prompts: str = ""
    review_max_records: int = 20000

    def __post_init__(self) -> None:
        problems = []
        if self.num_prompts < 1:
            problems.append(f"SEGGPT_NUM_PROMPTS must be >= 1, got {self.num_prompts}")
        if self.embedding_type not in ("instance", "semantic"):
            problems.append(f"SEGGPT_EMBEDDING_TYPE must be instance or semantic, got {self.embedding_type!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(f"SEGGPT_DTYPE must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            problems.append("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.prompt_strategy not in ("similar", "recent"):
            problems.append(f"SEGGPT_PROMPT_STRATEGY must be similar or recent, got {self.prompt_strategy!r}")
        if self.score not in ("crisp", "agreement"):
            problems.append(f"SEGGPT_SCORE must be crisp or agreement, got {self.score!r}")
        if self.tune_steps < 1:
            problems.append(f"SEGGPT_TUNE_STEPS must be >= 1, got {self.tune_steps}")
        if not 0 <= self.score_threshold <= 1:
            problems.append(f"SEGGPT_SCORE_THRESHOLD must lie in [0, 1], got {self.score_threshold}")
        for parse, raw in ((parse_label_thresholds, self.label_thresholds), (parse_min_area, self.min_area)):
            try:
                parse(raw)
            except ValueError as exc:
                problems.append(str(exc))
        for name in ("max_pixels", "max_body_bytes", "max_webhook_bytes", "chunk_size", "bulk_chunk_size"):
            if getattr(self, name) < 1:
                problems.append(f"{ENVIRONMENT[name][0]} must be >= 1, got {getattr(self, name)}")
        if self.ls_deadline <= 0:
            problems.append(f"SEGGPT_LS_DEADLINE must be > 0, got {self.ls_deadline}")
        try:
            self.excluded_prompts
        except ValueError:
            problems.append(f"SEGGPT_EXCLUDE_PROMPTS must be annotation ids separated by commas, got {self.exclude_prompts!r}")
        if self.calibration_min_regions < 1:
            problems.append(f"SEGGPT_CALIBRATION_MIN_REGIONS must be >= 1, got {self.calibration_min_regions}")
        if self.review_max_records < 1:
            problems.append(f"SEGGPT_REVIEW_MAX_RECORDS must be >= 1, got {self.review_max_records}")
        if self.predict_budget <= 0:
            problems.append(f"SEGGPT_PREDICT_BUDGET must be > 0, got {self.predict_budget}")
        if problems:
            raise SettingError("invalid settings: " + "; ".join(problems))
        object.__setattr__(self, "label_studio_url", self.label_studio_url.rstrip("/"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, only: Iterable[str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, overridden by `env` (default: this process's environment), overridden by `overrides` that are
        not None. With `only`, just those settings are read from `env` (a command that needs a few of them is not
        stopped by a bad value of another). MODEL_DIR, where neither says, is resolved here."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        kinds = {spec.name: type(spec.default) for spec in fields(cls)}
        wanted = set(kinds if only is None else only)
        for spec in fields(cls):
            variable = ENVIRONMENT[spec.name][0]
            if spec.name in wanted and env.get(variable):
                values[spec.name] = _parse_named(variable, kinds[spec.name], env[variable])
        for name, value in overrides.items():
            if value is not None:
                where = f"--{name.replace('_', '-')} ({ENVIRONMENT[name][0]})"
                values[name] = _parse_named(where, kinds[name], value) if isinstance(value, str) else value
        if not values.get("model_dir") and "model_dir" in wanted:
            values["model_dir"] = str(data_dir_from_env(env))  # $XDG_DATA_HOME/seggpt-ls, said once, here
        return cls(**values)

    @property
    def data_dir(self) -> Path:
        """MODEL_DIR: the embedded Redis and the caches (`from_env` fills it in; unset, the default)."""
        return Path(self.model_dir) if self.model_dir else default_data_dir()

    def worker_settings(self) -> WorkerSettings:
        """The job layer's share of these settings: where Redis and the data live, the queues, the model."""
        model = ModelSettings(weights=self.weights, device=self.device or None, dtype=self.dtype, max_pixels=self.max_pixels)
        return WorkerSettings(model=model, redis_url=self.redis_url, data_dir=self.data_dir, queue=self.queue,
                              interactive_queue=self.interactive_queue)

    def child_environment(self) -> dict[str, str]:
        """The variables that give a child process (a local worker) these settings, for its environment."""
        env = {}
        for name, (variable, _) in ENVIRONMENT.items():
            value = getattr(self, name)
            if value not in (None, "", ()):
                env[variable] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    def fingerprint(self) -> dict:
        """The settings that change what a prediction looks like: part of the model version (which is computed from
        what the jobs carry: see `predict_service.version_of`)."""
        return {"weights": self.weights, **self.prediction_options.fingerprint(),
                **({"regions": self.region_filter.to_json()} if self.region_filter.active else {}),
                **({"excluded_prompts": sorted(self.excluded_prompts)} if self.excluded_prompts else {})}

    @property
    def excluded_prompts(self) -> frozenset[int]:
        """SEGGPT_EXCLUDE_PROMPTS as annotation ids."""
        return frozenset(int(part) for part in self.exclude_prompts.split(",") if part.strip())

    @property
    def region_filter(self) -> RegionFilter:
        """The thresholds and minimum area of these settings (a control's own threshold comes with the control)."""
        return RegionFilter(self.score_threshold, parse_label_thresholds(self.label_thresholds), *parse_min_area(self.min_area))

    @property
    def prediction_options(self) -> PredictionOptions:
        """What every segmentation job of this backend is told: K, the prompt strategy, the embedding type, the score,
        the labels per forward, and the dtype (a worker configured for another declines the job)."""
        return PredictionOptions(k=self.num_prompts, strategy=self.prompt_strategy, embedding_type=self.embedding_type,
                                 score=self.score, labels_per_forward=self.labels_per_forward, dtype=self.dtype)

    @property
    def candidates_per_label(self) -> int:
        """Prompts per label a job carries for the workers to choose K from."""
        return max(4 * self.num_prompts, 16)


@dataclass(frozen=True)
class LocalLabelStudioSettings:
    """Where `tryout` and the test harness keep the Label Studio they install (backend/local_label_studio.py)."""

    cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "seggpt-ls")  # SEGGPT_CACHE
    venv: Path | None = None  # SEGGPT_LS_VENV: a Label Studio venv to use; None: cache / ls-VERSION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LocalLabelStudioSettings":
        env = os.environ if env is None else env
        values = {"cache": Path(env["SEGGPT_CACHE"]).expanduser()} if env.get("SEGGPT_CACHE") else {}
        return cls(**values, venv=Path(env["SEGGPT_LS_VENV"]).expanduser() if env.get("SEGGPT_LS_VENV") else None)

    def venv_for(self, version: str) -> Path:
        return self.venv or self.cache / f"ls-{version}"
