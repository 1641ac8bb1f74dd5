"""seggpt_core: SegGPT in-context segmentation. Knows nothing of Label Studio, HTTP or Redis."""

from .build import VARIANTS, build_model, variant_config
from .config import SegGptConfig
from .errors import ImageError, PromptError, SegGptError, WeightsError
from .model import SegGpt
from .palette import decode_colors, make_palette
from .predictor import PreparedTarget, Prompt, SegGptPredictor, Segmentation
from .weights import DEFAULT_WEIGHTS, load_model, save_model

__all__ = [
    "DEFAULT_WEIGHTS",
    "VARIANTS",
    "ImageError",
    "PromptError",
    "PreparedTarget",
    "Prompt",
    "SegGpt",
    "SegGptPredictor",
    "Segmentation",
    "SegGptConfig",
    "SegGptError",
    "WeightsError",
    "build_model",
    "decode_colors",
    "make_palette",
    "load_model",
    "save_model",
    "variant_config",
]
