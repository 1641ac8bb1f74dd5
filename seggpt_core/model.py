"""The SegGPT network in one file: embeddings, encoder with the multi-prompt feature ensemble, decoder.

State-dict keys are identical to transformers' `SegGptForImageSegmentation`, so its checkpoints load as they are.
Differences from that implementation, all on purpose:
- attention runs through `scaled_dot_product_attention`, with the decomposed relative position bias as an
  additive mask;
- position-embedding resizing and relative-position tables are cached per input size (in eval mode);
- the feature ensemble follows the official code (blocks up to the merge index average within each stream) and
  averages per group of `num_prompts` rows, so several targets share one forward;
- `target_only=True` computes only what the target half needs: the last block's queries, the decoder and its
  3x3 convolution are run on the target rows plus one row of context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SegGptConfig

__all__ = ["SegGpt", "default_masked_positions", "limit_cpu_activations"]

# Bound on the elements of one attention-bias block, per device type; rows are processed in chunks under it.
_BIAS_ELEMENTS_PER_CHUNK = {"cpu": 2**22, "cuda": 2**28}
# Bound on the elements of the MLP's hidden activation, per device type, without autograd: tokens are processed in
# chunks under it. On the CPU the full (2, 1568, 4096) activation of ViT-L's first blocks and its GELU copy are 100 MB.
_MLP_ELEMENTS_PER_CHUNK = {"cpu": 2**22}
# Patch rows the decoder paints at a time, per device type (None: all at once).
_DECODER_ROWS_PER_BLOCK: dict[str, int | None] = {"cpu": 4}


def limit_cpu_activations(divisor: int) -> None:
    """Divide this process's CPU bounds on an attention-bias block and an MLP chunk by `divisor` (a worker's
    --low-memory): for ViT-L, attention then takes a head's queries a block of grid rows at a time. With 4, the
    peak of a ViT-L forward in a probe process fell by about 15 MB, no slower; bench/memory.py measures the
    whole --low-memory worker."""
    for bounds in (_BIAS_ELEMENTS_PER_CHUNK, _MLP_ELEMENTS_PER_CHUNK):
        if bounds.get("cpu"):
            bounds["cpu"] = max(1, bounds["cpu"] // divisor)


class _Scratch:
    """A reusable buffer for the attention bias, shared by all layers of one network.

    Measured on 2 CPU cores, ViT-L, one row: building the (16, 1568, 1568) bias in a fresh tensor costs about
    90 ms, almost all of it first-touch page faults; writing it into a reused buffer costs about 6 ms.
    Used only without autograd, where nothing keeps a reference to the previous layer's bias.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        if torch.is_grad_enabled():
            return None
        numel = 1
        for dim in shape:
            numel *= dim
        buffer = self._buffer
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel].view(shape)


def default_masked_positions(config: SegGptConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """(1, num_patches) bool: True for every patch of the bottom (target) half, the inference default."""
    rows, cols = config.grid
    masked = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    masked[rows // 2 :] = True
    return masked.reshape(1, -1)


def _cache_key(param: torch.Tensor, *extra: object) -> tuple:
    return (param.device, param.dtype, param._version, *extra)


class SegGptPatchEmbeddings(nn.Module):
    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).permute(0, 2, 3, 1)


class SegGptEmbeddings(nn.Module):
    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        shape = (1, 1, 1, config.hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(shape))
        self.segment_token_input = nn.Parameter(torch.zeros(shape))
        self.segment_token_prompt = nn.Parameter(torch.zeros(shape))
        self.type_token_semantic = nn.Parameter(torch.zeros(shape))
        self.type_token_instance = nn.Parameter(torch.zeros(shape))
        self.patch_embeddings = SegGptPatchEmbeddings(config)
        side = config.pretrain_image_size // config.patch_size
        self.position_embeddings = nn.Parameter(torch.zeros(1, side * side + 1, config.hidden_size))
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def resized_position_embeddings(self, rows: int, cols: int) -> torch.Tensor:
        """(1, rows, cols, C): the pretrain-size table (cls dropped) resized bicubically; cached in eval mode."""
        key = _cache_key(self.position_embeddings, rows, cols)
        cached = None if self.training else self._pos_cache.get(key)
        if cached is not None:
            return cached
        table = self.position_embeddings[:, 1:]
        side = int(round(table.shape[1] ** 0.5))
        table = table.reshape(1, side, side, -1)
        if (side, side) != (rows, cols):
            table = F.interpolate(table.permute(0, 3, 1, 2), size=(rows, cols), mode="bicubic", align_corners=False)
            table = table.permute(0, 2, 3, 1)
        if not self.training:
            self._pos_cache = {key: table.detach()}
        return table

    def forward(
        self,
        image_canvas: torch.Tensor,
        mask_canvas: torch.Tensor,
        bool_masked_pos: torch.Tensor,
        embedding_type: str,
    ) -> torch.Tensor:
        """Returns (2B, rows, cols, C): the B image-stream rows, then the B mask-stream rows."""
        if embedding_type == "instance":
            type_token = self.type_token_instance
        elif embedding_type == "semantic":
            type_token = self.type_token_semantic
        else:
            raise ValueError(f"embedding_type must be 'instance' or 'semantic', got {embedding_type!r}")
        images = self.patch_embeddings(image_canvas)
        masks = self.patch_embeddings(mask_canvas)
        batch, rows, cols, _ = images.shape
        hidden = bool_masked_pos.reshape(-1, rows, cols, 1).to(masks.dtype)
        masks = masks * (1 - hidden) + self.mask_token * hidden
        shared = self.resized_position_embeddings(rows, cols) + type_token
        images = images + (self.segment_token_input + shared)
        masks = masks + (self.segment_token_prompt + shared)
        return torch.cat((images, masks), dim=0)


class SegGptAttention(nn.Module):
    """Global multi-head attention with decomposed relative position bias (MViTv2 / SAM style)."""

    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        rows, cols = config.grid
        self.num_heads = config.num_attention_heads
        self.use_rel_pos = config.use_relative_position_embeddings
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rows - 1, config.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * cols - 1, config.head_dim))
        self._table_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _relative_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
        """(size, size, head_dim): the embedding of every (query, key) offset along one axis."""
        length = 2 * size - 1
        if rel_pos.shape[0] != length:
            rel_pos = F.interpolate(rel_pos.t()[None], size=length, mode="linear")[0].t()
        coords = torch.arange(size, device=rel_pos.device)
        return rel_pos[coords[:, None] - coords[None, :] + (size - 1)]

    def relative_tables(self, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = _cache_key(self.rel_pos_h, self.rel_pos_w._version, rows, cols)
        cached = None if self.training else self._table_cache.get(key)
        if cached is not None:
            return cached
        tables = (self._relative_table(rows, self.rel_pos_h), self._relative_table(cols, self.rel_pos_w))
        # Not on the CPU: there the 24 cached pairs of ViT-L are 20 MB of resident memory, and rebuilding them made
        # the forward no slower (bench/core_vs_transformers.py).
        if not self.training and self.rel_pos_h.device.type != "cpu":
            self._table_cache = {key: tuple(t.detach() for t in tables)}
        return tables

    def _qkv(self, hidden: torch.Tensor, first_query_row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, rows, cols, _ = hidden.shape
        qkv = self.qkv(hidden).reshape(batch, rows * cols, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # (R, heads, N, d)
        return query[:, :, first_query_row * cols :], key, value

    def forward(self, hidden: torch.Tensor, first_query_row: int = 0, scratch: _Scratch | None = None) -> torch.Tensor:
        """hidden (R, rows, cols, C) -> (R, rows - first_query_row, cols, C).

        Keys and values cover the whole grid; queries start at `first_query_row`.
        """
        batch, rows, cols, channels = hidden.shape
        query_rows = rows - first_query_row
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(*self._qkv(hidden, first_query_row))
            return self.proj(out.transpose(1, 2).reshape(batch, query_rows, cols, channels))
        table_h, table_w = self.relative_tables(rows, cols)
        table_h = table_h[first_query_row:]
        # The bias is (rows x heads x queries x keys): build and use it a block of rows and heads at a time, and
        # project q, k, v per block of rows too, so that only one block's activations are alive at once.
        limit = _BIAS_ELEMENTS_PER_CHUNK.get(hidden.device.type, 2**27)
        per_row = cols * rows * cols  # bias elements of one head for one row of queries
        per_head = query_rows * per_row
        heads = max(1, min(self.num_heads, limit // per_head))
        step = max(1, limit // (per_head * self.num_heads)) if heads == self.num_heads else 1
        # Where one head's bias is over the limit, its queries go a block of rows at a time.
        row_step = query_rows if per_head <= limit else max(1, limit // per_row)
        whole = heads == self.num_heads and row_step == query_rows
        # Each block's result is written into one output tensor: a list joined by torch.cat held every block twice.
        out = hidden.new_empty(batch, query_rows, cols, channels)
        for start in range(0, batch, step):
            query, key, value = self._qkv(hidden[start : start + step], first_query_row)
            count = query.shape[0]
            attended = None if whole else query.new_empty(query.shape)
            for head in range(0, self.num_heads, heads):
                heads_kv = slice(head, head + heads)
                grid_q = query[:, heads_kv].reshape(count, -1, query_rows, cols, query.shape[-1])
                for row in range(0, query_rows, row_step):
                    block_q = grid_q[:, :, row : row + row_step]
                    block_rows = block_q.shape[2]
                    bias_h = torch.einsum("bnhwc,hkc->bnhwk", block_q, table_h[row : row + block_rows])[..., :, None]
                    bias_w = torch.einsum("bnhwc,wkc->bnhwk", block_q, table_w)[..., None, :]
                    out_shape = (count, block_q.shape[1], block_rows, cols, rows, cols)
                    buffer = scratch.get(out_shape, block_q) if scratch is not None else None
                    bias = torch.add(bias_h, bias_w, out=buffer) if buffer is not None else bias_h + bias_w
                    q = block_q.reshape(count, block_q.shape[1], block_rows * cols, -1)
                    bias = bias.reshape(count, block_q.shape[1], block_rows * cols, -1)  # a copy only off the buffer path
                    result = F.scaled_dot_product_attention(q, key[:, heads_kv], value[:, heads_kv], attn_mask=bias)
                    if attended is None:
                        attended = result
                    else:
                        attended[:, heads_kv, row * cols : (row + block_rows) * cols] = result
            out[start : start + count] = self.proj(attended.transpose(1, 2).reshape(count, query_rows, cols, channels))
        return out


class SegGptMlp(nn.Module):
    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.lin1 = nn.Linear(config.hidden_size, config.mlp_dim)
        self.lin2 = nn.Linear(config.mlp_dim, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        limit = _MLP_ELEMENTS_PER_CHUNK.get(hidden.device.type)
        tokens = hidden.numel() // hidden.shape[-1]
        if limit is None or torch.is_grad_enabled() or tokens * self.lin1.out_features <= limit:
            return self.lin2(F.gelu(self.lin1(hidden)))
        flat = hidden.reshape(tokens, hidden.shape[-1])
        out = flat.new_empty(tokens, self.lin2.out_features)
        step = max(1, limit // self.lin1.out_features)
        for start in range(0, tokens, step):
            out[start : start + step] = self.lin2(F.gelu(self.lin1(flat[start : start + step])))
        return out.reshape(*hidden.shape[:-1], self.lin2.out_features)


class SegGptLayer(nn.Module):
    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.attention = SegGptAttention(config)
        self.mlp = SegGptMlp(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden: torch.Tensor, num_prompts: int, first_query_row: int = 0, scratch: _Scratch | None = None
    ) -> torch.Tensor:
        """Pre-norm block. With num_prompts > 1, the target-half attention output is averaged over each group
        of `num_prompts` consecutive rows (the official feature ensemble), before the residual add."""
        attended = self.attention(self.layernorm_before(hidden), first_query_row, scratch)
        if num_prompts > 1:
            split = hidden.shape[1] // 2 - first_query_row  # first target row within the queried rows
            top, bottom = attended[:, :split], attended[:, split:]
            groups = bottom.reshape(-1, num_prompts, *bottom.shape[1:])
            bottom = groups.mean(dim=1, keepdim=True).expand_as(groups).reshape(bottom.shape)
            attended = torch.cat((top, bottom), dim=1)
        if torch.is_grad_enabled():
            hidden = hidden[:, first_query_row:] + attended
            return hidden + self.mlp(self.layernorm_after(hidden))
        # Inference: residual adds in place into fresh tensors, two fewer full-size activations alive at once.
        hidden = attended.add_(hidden[:, first_query_row:])
        return self.mlp(self.layernorm_after(hidden)).add_(hidden)


class SegGptEncoder(nn.Module):
    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(SegGptLayer(config) for _ in range(config.num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.scratch = _Scratch()

    def forward(self, hidden: torch.Tensor, num_prompts: int, first_output_row: int = 0) -> torch.Tensor:
        """(2B, rows, cols, C) -> decoder features (B, rows - first_output_row, cols, C * len(indices)).

        Layers after the last decoder feature are skipped; the last one queries only the rows the output needs.
        """
        indices = self.config.intermediate_hidden_state_indices
        last = max(indices)
        features = []
        for index, layer in enumerate(self.layers[: last + 1]):
            hidden = layer(hidden, num_prompts, first_output_row if index == last else 0, self.scratch)
            if index == self.config.merge_index:
                half = hidden.shape[0] // 2
                hidden = (hidden[:half] + hidden[half:]) * 0.5
            if index in indices:
                rows = hidden if index == last else hidden[:, first_output_row:]
                features.append(self.layernorm(rows))
        return torch.cat(features, dim=-1)


class SegGptDecoderHead(nn.Module):
    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        width = config.decoder_hidden_size
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)  # applied channels-first
        self.head = nn.Conv2d(width, 3, kernel_size=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(hidden)
        hidden = self.layernorm(hidden.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(F.gelu(hidden))


class SegGptDecoder(nn.Module):
    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.width = config.decoder_hidden_size
        features = config.hidden_size * len(config.intermediate_hidden_state_indices)
        self.decoder_embed = nn.Linear(features, config.patch_size**2 * config.decoder_hidden_size)
        self.decoder_pred = SegGptDecoderHead(config)

    def forward(self, features: torch.Tensor, rows_per_block: int | None = None) -> torch.Tensor:
        """(B, rows, cols, F) -> (B, 3, rows * patch, cols * patch).

        Without autograd, the (large, 64-channel, full-resolution) pixel map is built `rows_per_block` patch rows at
        a time, each with one patch row of context on both sides for the 3x3 convolution: the same result, a
        fraction of the peak memory.
        """
        rows = features.shape[1]
        if rows_per_block is None or rows_per_block >= rows or torch.is_grad_enabled():
            return self._decode(features)
        patch = self.patch_size
        blocks = []
        for start in range(0, rows, rows_per_block):
            stop = min(rows, start + rows_per_block)
            low, high = max(0, start - 1), min(rows, stop + 1)
            painted = self._decode(features[:, low:high])
            blocks.append(painted[:, :, (start - low) * patch : (stop - low) * patch])
        return torch.cat(blocks, dim=2)

    def _decode(self, features: torch.Tensor) -> torch.Tensor:
        batch, rows, cols, _ = features.shape
        pixels = self.decoder_embed(features).reshape(batch, rows, cols, self.patch_size, self.patch_size, self.width)
        pixels = pixels.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.width, rows * self.patch_size, cols * self.patch_size)
        return self.decoder_pred(pixels)


class SegGptEncoderModel(nn.Module):
    """Holds embeddings and encoder under the names transformers uses (`model.embeddings`, `model.encoder`)."""

    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.embeddings = SegGptEmbeddings(config)
        self.encoder = SegGptEncoder(config)


class SegGpt(nn.Module):
    """SegGPT for in-context segmentation; state-dict compatible with transformers' `SegGptForImageSegmentation`."""

    def __init__(self, config: SegGptConfig) -> None:
        super().__init__()
        self.config = config
        self.model = SegGptEncoderModel(config)
        self.decoder = SegGptDecoder(config)

    def forward(
        self,
        pixel_values: torch.Tensor,
        prompt_pixel_values: torch.Tensor,
        prompt_masks: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        embedding_type: str = "instance",
        num_prompts: int = 1,
        target_only: bool = False,
    ) -> torch.Tensor:
        """Paint the target half of the canvas.

        Args:
            pixel_values: (B, 3, h, w) normalized target images; (h, w) is one half of `config.image_size`.
            prompt_pixel_values: (B, 3, h, w) normalized prompt images.
            prompt_masks: (B, 3, h, w) normalized colored prompt masks.
            bool_masked_pos: (1 or B, num_patches) bool, True where the mask stream is hidden; default: the
                bottom half.
            embedding_type: "instance" (official default) or "semantic".
            num_prompts: K. The batch is B = T * K rows, T consecutive groups of K prompts for one target;
                the feature ensemble averages within each group. K = 1 means no ensemble.
            target_only: return only the painted target, (T, 3, h, w), one row per group, computing only what it
                needs. The first target pixel row sees the mean of the group's prompt rows above it (the official
                code uses prompt 0's), so the result does not depend on prompt order.

        Returns:
            (B, 3, 2h, w) the normalized canvas, like transformers' `pred_masks`; or (T, 3, h, w) with target_only.
        """
        config = self.config
        batch = pixel_values.shape[0]
        if num_prompts < 1 or batch % num_prompts:
            raise ValueError(f"batch of {batch} rows is not a whole number of groups of num_prompts={num_prompts}")
        half = config.half_size
        for name, tensor in (("pixel_values", pixel_values), ("prompt_pixel_values", prompt_pixel_values), ("prompt_masks", prompt_masks)):
            if tuple(tensor.shape) != (batch, config.num_channels, *half):
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {(batch, config.num_channels, *half)}")
        dtype = self.decoder.decoder_embed.weight.dtype
        image_canvas = torch.cat((prompt_pixel_values, pixel_values), dim=2).to(dtype)
        mask_canvas = torch.cat((prompt_masks, prompt_masks), dim=2).to(dtype)
        if bool_masked_pos is None:
            bool_masked_pos = default_masked_positions(config, pixel_values.device)
        hidden = self.model.embeddings(image_canvas, mask_canvas, bool_masked_pos, embedding_type)
        rows = config.grid[0]
        first_row = rows // 2 - 1 if target_only else 0  # one row of context for the decoder's 3x3 conv
        features = self.model.encoder(hidden, num_prompts, first_row)
        block = _DECODER_ROWS_PER_BLOCK.get(features.device.type)
        if not target_only:
            return self.decoder(features, block)
        groups = features.reshape(batch // num_prompts, num_prompts, *features.shape[1:])
        context = groups[:, :, :1].mean(dim=1)
        features = torch.cat((context, groups[:, 0, 1:]), dim=1)
        return self.decoder(features, block)[:, :, config.patch_size :]
