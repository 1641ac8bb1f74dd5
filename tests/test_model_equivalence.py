"""Our network against transformers' SegGptForImageSegmentation on random weights (fp32, no ensemble)."""

from __future__ import annotations

import pytest
import torch

from seggpt_core import SegGptConfig, load_model
from seggpt_core.model import default_masked_positions

from .oracle import SMALL_CONFIGS, hf_model, random_inputs

TOLERANCE = 1e-4


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
@pytest.mark.parametrize("embedding_type", ["instance", "semantic"])
def test_small_configs_match_transformers(name, embedding_type, tmp_path):
    config = SMALL_CONFIGS[name]
    reference = hf_model(config, seed=3)
    reference.save_pretrained(tmp_path)
    ours = load_model(tmp_path, device="cpu")
    assert ours.config == SegGptConfig.from_dict(reference.config.to_dict())
    inputs = random_inputs(config, batch=3)
    with torch.no_grad():
        expected = reference(**inputs, embedding_type=embedding_type).pred_masks
        canvas = ours(**inputs, embedding_type=embedding_type)
        target = ours(**inputs, embedding_type=embedding_type, target_only=True)
    half = config["image_size"][0] // 2
    assert canvas.shape == expected.shape
    assert (canvas - expected).abs().max().item() <= TOLERANCE
    assert target.shape == expected[:, :, half:].shape
    assert (target - expected[:, :, half:]).abs().max().item() <= TOLERANCE


def test_custom_masked_positions_match_transformers(tiny_pair, tiny_model):
    reference, _, config = tiny_pair
    inputs = random_inputs(config, batch=2, seed=5)
    generator = torch.Generator().manual_seed(0)
    masked = torch.rand(2, default_masked_positions(tiny_model.config).shape[1], generator=generator) > 0.5
    with torch.no_grad():
        expected = reference(**inputs, bool_masked_pos=masked).pred_masks
        ours = tiny_model(**inputs, bool_masked_pos=masked)
        default = tiny_model(**inputs)
    assert (ours - expected).abs().max().item() <= TOLERANCE
    assert (ours - default).abs().max().item() > 1e-3  # the argument is really used


def test_outputs_differ_between_embedding_types(tiny_model, tiny_pair):
    inputs = random_inputs(tiny_pair[2], batch=1)
    with torch.no_grad():
        instance = tiny_model(**inputs, embedding_type="instance")
        semantic = tiny_model(**inputs, embedding_type="semantic")
    assert (instance - semantic).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="embedding_type"):
        tiny_model(**inputs, embedding_type="panoptic")


def test_wrong_input_shape_is_refused(tiny_model, tiny_pair):
    inputs = random_inputs(tiny_pair[2], batch=2)
    inputs["prompt_masks"] = inputs["prompt_masks"][:, :, :-1]
    with pytest.raises(ValueError, match="prompt_masks has shape"):
        tiny_model(**inputs)
    with pytest.raises(ValueError, match="num_prompts=3"):
        tiny_model(**random_inputs(tiny_pair[2], batch=2), num_prompts=3)


@pytest.mark.slow
def test_vit_large_matches_transformers(tmp_path):
    """The full ViT-L config (370 M parameters), once: random weights saved by transformers, loaded by us."""
    from transformers import SegGptConfig as HfConfig
    from transformers import SegGptForImageSegmentation

    torch.manual_seed(0)
    reference = SegGptForImageSegmentation(HfConfig()).eval()
    reference.save_pretrained(tmp_path)
    ours = load_model(tmp_path, device="cpu", dtype=torch.float32)
    assert ours.config == SegGptConfig()
    generator = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(1, 3, 448, 448, generator=generator) for k in ("pixel_values", "prompt_pixel_values", "prompt_masks")}
    with torch.no_grad():
        expected = reference(**inputs).pred_masks
        del reference
        got = ours(**inputs)
    assert got.shape == (1, 3, 896, 448)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_attention_in_blocks_of_rows_and_heads_is_exact(tiny_pair, tiny_model, monkeypatch):
    """The bias is built a few heads at a time when it would be large; the result must not change."""
    import seggpt_core.model as model_module

    reference, _, config = tiny_pair
    inputs = random_inputs(config, batch=3, seed=11)
    with torch.no_grad():
        whole = tiny_model(**inputs)
        rows, cols = tiny_model.config.grid
        monkeypatch.setitem(model_module._BIAS_ELEMENTS_PER_CHUNK, "cpu", rows * cols * rows * cols)  # one head at a time
        per_head = tiny_model(**inputs)
        expected = reference(**inputs).pred_masks
    assert (per_head - whole).abs().max().item() <= 1e-5
    assert (per_head - expected).abs().max().item() <= TOLERANCE


def test_mlp_in_chunks_of_tokens_is_exact(tiny_pair, tiny_model, monkeypatch):
    """Without autograd the MLP runs a chunk of tokens at a time on the CPU (memory); the result must not change,
    including a last chunk shorter than the others."""
    import seggpt_core.model as model_module

    reference, _, config = tiny_pair
    inputs = random_inputs(config, batch=2, seed=13)
    with torch.no_grad():
        monkeypatch.setitem(model_module._MLP_ELEMENTS_PER_CHUNK, "cpu", None)
        whole = tiny_model(**inputs)
        mlp_width = tiny_model.model.encoder.layers[0].mlp.lin1.out_features
        monkeypatch.setitem(model_module._MLP_ELEMENTS_PER_CHUNK, "cpu", 7 * mlp_width)  # 7 tokens: ragged tail
        chunked = tiny_model(**inputs)
        expected = reference(**inputs).pred_masks
    assert (chunked - whole).abs().max().item() <= 1e-5
    assert (chunked - expected).abs().max().item() <= TOLERANCE


def test_attention_in_blocks_of_query_rows_is_exact(tiny_pair, tiny_model, monkeypatch):
    """Below one head's bias (the low-memory setting of ViT-L) the queries go a few grid rows at a time: same
    canvas, and the same target-only output, with a ragged last block."""
    import seggpt_core.model as model_module

    reference, _, config = tiny_pair
    inputs = random_inputs(config, batch=2, seed=14)
    rows, cols = tiny_model.config.grid
    with torch.no_grad():
        whole = tiny_model(**inputs)
        whole_target = tiny_model(**inputs, target_only=True)
        monkeypatch.setitem(model_module._BIAS_ELEMENTS_PER_CHUNK, "cpu", 3 * cols * rows * cols)  # 3 query rows
        blocked = tiny_model(**inputs)
        blocked_target = tiny_model(**inputs, target_only=True)
        expected = reference(**inputs).pred_masks
    assert rows % 3 != 0
    assert (blocked - whole).abs().max().item() <= 1e-5
    assert (blocked_target - whole_target).abs().max().item() <= 1e-5
    assert (blocked - expected).abs().max().item() <= TOLERANCE


def test_decoder_in_blocks_of_rows_is_exact(tiny_pair, tiny_model, monkeypatch):
    import seggpt_core.model as model_module

    reference, _, config = tiny_pair
    inputs = random_inputs(config, batch=2, seed=12)
    with torch.no_grad():
        monkeypatch.setitem(model_module._DECODER_ROWS_PER_BLOCK, "cpu", None)
        whole = tiny_model(**inputs)
        whole_target = tiny_model(**inputs, target_only=True)
        for rows in (1, 2, 3):
            monkeypatch.setitem(model_module._DECODER_ROWS_PER_BLOCK, "cpu", rows)
            assert (tiny_model(**inputs) - whole).abs().max().item() <= 1e-5
            assert (tiny_model(**inputs, target_only=True) - whole_target).abs().max().item() <= 1e-5
        assert (whole - reference(**inputs).pred_masks).abs().max().item() <= TOLERANCE


def test_training_mode_forward_matches_and_backpropagates(tiny_pair, tiny_model):
    """With autograd (training), the same outputs as transformers, and finite gradients everywhere."""
    from seggpt_core import build_model

    reference, _, config = tiny_pair
    model = build_model(tiny_model.config, init=False)
    model.load_state_dict(tiny_model.state_dict())
    model.train()
    inputs = random_inputs(config, batch=2, seed=13)
    painted = model(**inputs)
    with torch.no_grad():
        expected = reference(**inputs).pred_masks
    assert (painted.detach() - expected).abs().max().item() <= TOLERANCE
    painted.square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if name != "model.embeddings.type_token_semantic"}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())  # (the semantic token is unused here)
