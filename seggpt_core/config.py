"""The SegGPT hyperparameters, one frozen dataclass read from and written to `config.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import WeightsError

__all__ = ["SegGptConfig", "LABELS_PER_FORWARD_KEY"]

# An extra config.json key this project writes: the most labels the model paints well in one forward (0 or absent:
# any number, as the real SegGPT). A small model trained on one color per episode records 1.
LABELS_PER_FORWARD_KEY = "seggpt_ls_labels_per_forward"


@dataclass(frozen=True)
class SegGptConfig:
    """Architecture of a SegGPT network. Field names follow transformers' `SegGptConfig`.

    `image_size` is the (height, width) of the whole canvas: prompt on top, target below.
    """

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_dim: int | None = None
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    image_size: tuple[int, int] = (896, 448)
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    pretrain_image_size: int = 224
    decoder_hidden_size: int = 64
    use_relative_position_embeddings: bool = True
    merge_index: int = 2
    intermediate_hidden_state_indices: tuple[int, ...] = (5, 11, 17, 23)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if self.mlp_dim is None:
            set_(self, "mlp_dim", 4 * self.hidden_size)
        size = self.image_size
        set_(self, "image_size", (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size))
        set_(self, "intermediate_hidden_state_indices", tuple(int(i) for i in self.intermediate_hidden_state_indices))
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        height, width = self.image_size
        if height % (2 * self.patch_size) or width % self.patch_size:
            problems.append(f"image_size {self.image_size} must split into two halves of whole {self.patch_size}px patches")
        if self.pretrain_image_size % self.patch_size:
            problems.append(f"pretrain_image_size {self.pretrain_image_size} is not a multiple of patch_size {self.patch_size}")
        indices = self.intermediate_hidden_state_indices
        if not indices:
            problems.append("intermediate_hidden_state_indices is empty")
        elif len(set(indices)) != len(indices):
            # transformers taps each layer once however often it is listed, then expects one feature per entry:
            # such a config loads there too and fails on every forward. Refuse it here, at load time.
            repeated = sorted({i for i in indices if indices.count(i) > 1})
            problems.append(f"intermediate_hidden_state_indices {list(indices)} repeats layer(s) {repeated}: each layer can "
                            "feed the decoder once")
        elif min(indices) < 0 or max(indices) >= self.num_hidden_layers:
            problems.append(f"intermediate_hidden_state_indices {indices} fall outside 0..{self.num_hidden_layers - 1}")
        elif not 0 <= self.merge_index <= min(indices):
            problems.append(f"merge_index {self.merge_index} must lie in 0..{min(indices)} (the first decoder feature)")
        if self.hidden_act != "gelu":
            problems.append(f"hidden_act {self.hidden_act!r} is not supported (only 'gelu')")
        if problems:
            raise WeightsError("invalid SegGPT config: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of the whole canvas."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def half_size(self) -> tuple[int, int]:
        """(height, width) of one image: the prompt or the target half of the canvas."""
        return self.image_size[0] // 2, self.image_size[1]

    @property
    def labels_per_forward(self) -> int:
        """The most labels to paint in one forward (0: no limit); see LABELS_PER_FORWARD_KEY."""
        return int(self.extra.get(LABELS_PER_FORWARD_KEY, 0) or 0)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegGptConfig":
        """Build from a transformers-style `config.json` dict; keys we do not use are kept in `extra`."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        if "model_type" in extra and extra["model_type"] != "seggpt":
            raise WeightsError(f"config.json describes a {extra['model_type']!r} model, not 'seggpt'")
        if isinstance(known.get("patch_size"), (list, tuple)):
            sizes = set(known["patch_size"])
            if len(sizes) != 1:
                raise WeightsError(f"non-square patch_size {known['patch_size']} is not supported")
            known["patch_size"] = sizes.pop()
        if isinstance(known.get("pretrain_image_size"), (list, tuple)):
            known["pretrain_image_size"] = known["pretrain_image_size"][0]
        try:
            return cls(**known, extra=extra)
        except TypeError as exc:
            raise WeightsError(f"invalid SegGPT config: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: str | Path) -> "SegGptConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WeightsError(f"cannot read SegGPT config {path}: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """A transformers-compatible dict: `SegGptConfig.from_dict` of transformers reads it too."""
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data.update({k: v for k, v in self.extra.items() if k.startswith("seggpt_ls_")})
        data["image_size"] = list(self.image_size)
        data["intermediate_hidden_state_indices"] = list(self.intermediate_hidden_state_indices)
        data.update({"model_type": "seggpt", "architectures": ["SegGptForImageSegmentation"]})
        return data
