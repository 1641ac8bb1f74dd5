"""seggpt_core: SegGPT in-context segmentation. Knows nothing of Label Studio, HTTP or Redis.

Names are imported on first use, so that `seggpt_core.errors` (or any light submodule) can be imported without
loading torch: the web process needs the errors, never the network.
"""

from importlib import import_module

_EXPORTS = {
    "DEFAULT_WEIGHTS": "weights",
    "load_model": "weights",
    "save_model": "weights",
    "VARIANTS": "build",
    "build_model": "build",
    "variant_config": "build",
    "SegGptConfig": "config",
    "SegGptError": "errors",
    "WeightsError": "errors",
    "ImageError": "errors",
    "PromptError": "errors",
    "SegGpt": "model",
    "decode_colors": "palette",
    "make_palette": "palette",
    "PreparedTarget": "predictor",
    "Prompt": "predictor",
    "SegGptPredictor": "predictor",
    "Segmentation": "predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seggpt_core' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
