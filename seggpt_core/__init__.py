"""seggpt_core: SegGPT in-context segmentation. Knows nothing of Label Studio, HTTP or Redis."""

from .build import VARIANTS, build_model, variant_config
from .config import SegGptConfig
from .errors import ImageError, PromptError, SegGptError, WeightsError
from .model import SegGpt
from .weights import DEFAULT_WEIGHTS, load_model, save_model

__all__ = [
    "DEFAULT_WEIGHTS",
    "VARIANTS",
    "ImageError",
    "PromptError",
    "SegGpt",
    "SegGptConfig",
    "SegGptError",
    "WeightsError",
    "build_model",
    "load_model",
    "save_model",
    "variant_config",
]
