"""Finding, mapping and strictly loading SegGPT checkpoints.

`weights` may be:
- a Hugging Face hub id (default `BAAI/seggpt-vit-large`), fetched through huggingface_hub's cache;
- a local directory with `config.json` and `model.safetensors` (what `save_pretrained` writes);
- a single `.safetensors` file (config from a `config.json` beside it, its metadata, or its tensor shapes);
- the original `seggpt_vit_large.pth` (state dict under `'model'`, keys renamed);
- `random:<variant>[:<seed>]`, a seeded random network, for tests and demos only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .build import build_model, variant_config
from .config import SegGptConfig
from .errors import WeightsError
from .model import SegGpt
from .weights_files import _TORCH_SUFFIXES, CONFIG_NAME, DEFAULT_WEIGHTS, SAFETENSORS_NAME, SHIPPED_WEIGHTS, resolve_weights

__all__ = [
    "DEFAULT_WEIGHTS",
    "load_model",
    "load_state_dict",
    "save_model",
    "from_original_keys",
    "to_original_keys",
    "default_device",
    "default_dtype",
]

_METADATA_KEY = "seggpt_config"

# Original (Painter/SegGPT) name -> transformers name. "{i}" stands for a layer index; a name ending in "$" is a
# whole key (a parameter), any other a prefix (a module). Both directions are compiled from this one table.
_KEY_TABLE = [
    ("patch_embed.proj.", "model.embeddings.patch_embeddings.projection."),
    ("mask_token$", "model.embeddings.mask_token$"),
    ("segment_token_x$", "model.embeddings.segment_token_input$"),
    ("segment_token_y$", "model.embeddings.segment_token_prompt$"),
    ("type_token_cls$", "model.embeddings.type_token_semantic$"),
    ("type_token_ins$", "model.embeddings.type_token_instance$"),
    ("pos_embed$", "model.embeddings.position_embeddings$"),
    ("blocks.{i}.attn.", "model.encoder.layers.{i}.attention."),
    ("blocks.{i}.mlp.fc1.", "model.encoder.layers.{i}.mlp.lin1."),
    ("blocks.{i}.mlp.fc2.", "model.encoder.layers.{i}.mlp.lin2."),
    ("blocks.{i}.norm1.", "model.encoder.layers.{i}.layernorm_before."),
    ("blocks.{i}.norm2.", "model.encoder.layers.{i}.layernorm_after."),
    ("norm.", "model.encoder.layernorm."),
    ("decoder_embed.", "decoder.decoder_embed."),
    ("decoder_pred.0.", "decoder.decoder_pred.conv."),
    ("decoder_pred.1.", "decoder.decoder_pred.layernorm."),
    ("decoder_pred.3.", "decoder.decoder_pred.head."),
]


def _compile(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(source, target) name templates -> (regex, replacement) pairs for `_rename`."""
    compiled = []
    for source, target in pairs:
        pattern = re.escape(source.rstrip("$")).replace(r"\{i\}", r"(\d+)") + ("$" if source.endswith("$") else "")
        compiled.append((pattern, target.rstrip("$").replace("{i}", r"\1")))
    return compiled


_ORIGINAL_TO_HF = _compile(_KEY_TABLE)
_HF_TO_ORIGINAL = _compile([(target, source) for source, target in _KEY_TABLE])


def _rename(state: Mapping[str, torch.Tensor], table: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state.items():
        new_key = key
        for pattern, replacement in table:
            candidate, count = re.subn("^" + pattern, replacement, key)
            if count:
                new_key = candidate
                break
        renamed[new_key] = tensor  # unmatched keys pass through and fail strict loading by name
    return renamed


def from_original_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original Painter/SegGPT state dict to transformers' (and this package's) keys."""
    return _rename(state, _ORIGINAL_TO_HF)


def to_original_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `from_original_keys`: export in the layout of `seggpt_vit_large.pth`."""
    return _rename(state, _HF_TO_ORIGINAL)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a CUDA device that supports it, fp32 otherwise."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _config_from_shapes(state: Mapping[str, torch.Tensor]) -> SegGptConfig:
    """Infer the architecture of a checkpoint that came without a config.

    Everything but `merge_index` and the decoder feature indices is fixed by tensor shapes; those two take the
    official values (2; evenly spaced, ending at the last layer).
    """
    try:
        proj = state["model.embeddings.patch_embeddings.projection.weight"]
        rel_h = state["model.encoder.layers.0.attention.rel_pos_h"]
        rel_w = state["model.encoder.layers.0.attention.rel_pos_w"]
        positions = state["model.embeddings.position_embeddings"]
        lin1 = state["model.encoder.layers.0.mlp.lin1.weight"]
        decoder_embed = state["decoder.decoder_embed.weight"]
        decoder_conv = state["decoder.decoder_pred.conv.weight"]
    except KeyError as exc:
        raise WeightsError(f"checkpoint has no config and lacks {exc.args[0]!r}, needed to infer one") from None
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"model\.encoder\.layers\.(\d+)\.", k)))
    head_dim = rel_h.shape[1]
    num_features = decoder_embed.shape[1] // hidden
    indices = tuple((k + 1) * depth // num_features - 1 for k in range(num_features))
    return SegGptConfig(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=hidden // head_dim,
        mlp_dim=lin1.shape[0],
        image_size=(((rel_h.shape[0] + 1) // 2) * patch, ((rel_w.shape[0] + 1) // 2) * patch),
        patch_size=patch,
        num_channels=channels,
        qkv_bias="model.encoder.layers.0.attention.qkv.bias" in state,
        pretrain_image_size=int(round((positions.shape[1] - 1) ** 0.5)) * patch,
        decoder_hidden_size=decoder_conv.shape[0],
        merge_index=min(2, min(indices)),
        intermediate_hidden_state_indices=indices,
    )


def _check_keys(model: SegGpt, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {expected[k]})"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    for title, names in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", mismatched)):
        if names:
            shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
            problems.append(f"{len(names)} {title}: {shown}")
    if problems:
        raise WeightsError(f"checkpoint {source} does not fit the SegGPT config: " + "; ".join(problems))


def load_state_dict(
    state: Mapping[str, torch.Tensor],
    config: SegGptConfig | None = None,
    *,
    source: str = "<state dict>",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SegGpt:
    """Build a network for `config` (inferred from shapes when None) and load `state` strictly into it."""
    config = config or _config_from_shapes(state)
    with torch.device("meta"):
        model = build_model(config, init=False)
    _check_keys(model, state, source)
    model.load_state_dict(dict(state), strict=True, assign=True)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], SegGptConfig | None]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read safetensors file {path}: {exc}") from exc
    config = None
    if (path.parent / CONFIG_NAME).is_file():
        config = SegGptConfig.from_json_file(path.parent / CONFIG_NAME)
    elif _METADATA_KEY in metadata:
        config = SegGptConfig.from_dict(json.loads(metadata[_METADATA_KEY]))
    return state, config


def _read_original(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: a checkpoint is data, never code.
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict (expected tensors, optionally under 'model')")
    if any(k.startswith("blocks.") or k == "pos_embed" for k in state):
        state = from_original_keys(state)
    return state


def load_model(
    weights: str | Path = DEFAULT_WEIGHTS,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SegGpt:
    """Load a SegGPT network, strictly: any missing, unexpected or mis-shaped key raises `WeightsError`.

    Args:
        weights: a hub id, a directory, a `.safetensors` file, an original `.pth`, or `random:<variant>[:<seed>]`.
        device: default CUDA when available, else CPU.
        dtype: default bf16 on CUDA (where supported), fp32 otherwise.
    """
    text = str(weights)
    if text.startswith("random:"):
        _, variant, *seed = text.split(":")
        model = build_model(variant_config(variant), seed=int(seed[0]) if seed else 0)
        device = torch.device(device) if device is not None else default_device()
        return model.to(device=device, dtype=dtype or default_dtype(device)).requires_grad_(False)
    path = resolve_weights(weights)
    config = None
    if path.is_dir():
        if not (path / SAFETENSORS_NAME).is_file():
            raise WeightsError(f"directory {path} has no {SAFETENSORS_NAME}")
        state, config = _read_safetensors(path / SAFETENSORS_NAME)
    elif path.suffix == ".safetensors":
        state, config = _read_safetensors(path)
    elif path.suffix in _TORCH_SUFFIXES:
        state = _read_original(path)
    else:
        raise WeightsError(f"weights {path}: expected a directory, .safetensors or {'/'.join(_TORCH_SUFFIXES)} file")
    return load_state_dict(state, config, source=str(path), device=device, dtype=dtype)


def save_model(model: SegGpt, directory: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` (fp32 unless the model is in another float type)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / SAFETENSORS_NAME), metadata={"format": "pt", _METADATA_KEY: json.dumps(config)})
    return directory
