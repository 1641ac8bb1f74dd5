"""Where weights live, without torch: shipped names, local paths, and the Hugging Face hub cache.

Kept free of torch so that the web process can name and fingerprint the weights it never loads.
"""

from __future__ import annotations

from pathlib import Path

from .errors import WeightsError

__all__ = ["OFFLINE_CHOICES", "DEFAULT_WEIGHTS", "SAFETENSORS_NAME", "CONFIG_NAME", "SHIPPED_WEIGHTS", "resolve_weights"]

DEFAULT_WEIGHTS = "BAAI/seggpt-vit-large"
SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Weights shipped inside the package, by name: the project's own small model, trained by `seggpt-ls train-tiny`.
SHIPPED_WEIGHTS: dict[str, Path] = {"tiny-appearance": Path(__file__).parent / "weights_data" / "tiny-appearance"}
# what works without the hub, said wherever weights cannot be loaded
OFFLINE_CHOICES = ("without the hub, set SEGGPT_WEIGHTS (or --weights) to a local directory holding config.json and "
                   "model.safetensors, or to tiny-appearance (the shipped small model)")


def _download(repo_id: str, local_only: bool = False) -> Path:
    # imported here, not at the top: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, when it is imported, so
    # the environment at the first download counts (the offline tests set it after the web app is imported)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, SAFETENSORS_NAME], local_files_only=local_only))
    except HFValidationError:
        raise WeightsError(f"weights {repo_id!r}: no such file or directory, and not a valid hub id") from None
    except Exception as exc:  # network, auth, offline mode: all end the same way for the user
        cause = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        where = "in this machine's Hugging Face cache" if local_only else "from the Hugging Face hub"
        raise WeightsError(
            f"cannot fetch {repo_id!r} {where} ({type(exc).__name__}{': ' + cause if cause else ''}); "
            f"{OFFLINE_CHOICES}, or download it where the hub is reachable and pass the local directory"
        ) from exc


def resolve_weights(weights: str | Path, *, local_only: bool = False) -> Path:
    """The local file or directory that `weights` names, downloading a hub id if needed (never with `local_only`)."""
    text = str(weights)
    if text in SHIPPED_WEIGHTS:
        if not (SHIPPED_WEIGHTS[text] / SAFETENSORS_NAME).is_file():
            raise WeightsError(f"weights {text!r} are not shipped in this version yet (or this install lacks its data files); train them with `seggpt-ls train-tiny --out DIR` and pass DIR")
        return SHIPPED_WEIGHTS[text]
    path = Path(text).expanduser()
    if path.exists():
        return path
    if path.suffix in (".safetensors", *_TORCH_SUFFIXES, ".json") or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise WeightsError(f"weights {text!r}: no such file or directory")
    return _download(text, local_only)


