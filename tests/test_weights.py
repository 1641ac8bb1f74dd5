"""Weight loading: every accepted source, the original key layout, and strict errors that name the keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seggpt_core import SegGptConfig, WeightsError, build_model, load_model, save_model
from seggpt_core.weights import _config_from_shapes, from_original_keys, to_original_keys

from .oracle import random_inputs

TOLERANCE = 1e-4


def _same_output(reference, ours, config_kwargs) -> float:
    """Max abs difference between a transformers model and ours on the same random inputs."""
    inputs = random_inputs(config_kwargs, batch=2, seed=7)
    with torch.no_grad():
        a = reference(**inputs).pred_masks
        b = ours(**inputs)
    return (a - b).abs().max().item()


def test_original_pth_loads_and_matches(tiny_pair, tmp_path):
    reference, _, config = tiny_pair
    original = to_original_keys(reference.state_dict())
    assert "blocks.0.attn.qkv.weight" in original and "decoder_pred.3.weight" in original
    assert "segment_token_x" in original and "type_token_ins" in original
    assert not any(key.startswith(("model.", "decoder.")) for key in original)
    path = tmp_path / "seggpt_tiny.pth"
    torch.save({"model": original, "epoch": 7}, path)
    model = load_model(path, device="cpu")
    assert _same_output(reference, model, config) <= TOLERANCE


def test_key_mapping_round_trips():
    state = build_model("tiny", init=False).state_dict()
    assert set(from_original_keys(to_original_keys(state))) == set(state)


def test_config_inferred_from_vit_large_shapes_is_the_official_one():
    with torch.device("meta"):
        state = build_model(SegGptConfig(), init=False).state_dict()
    assert _config_from_shapes(state) == SegGptConfig()


def test_single_safetensors_file_without_config(tiny_pair, tmp_path):
    reference, directory, config = tiny_pair
    alone = tmp_path / "weights.safetensors"
    shutil.copy(directory / "model.safetensors", alone)  # written by transformers: config inferred from shapes
    assert _same_output(reference, load_model(alone, device="cpu"), config) <= TOLERANCE


def test_save_model_round_trip_keeps_config_in_metadata(tmp_path):
    model = build_model("tiny", seed=1)
    save_model(model, tmp_path / "dir")
    alone = tmp_path / "alone.safetensors"
    shutil.copy(tmp_path / "dir" / "model.safetensors", alone)
    for source in (tmp_path / "dir", alone):
        loaded = load_model(source, device="cpu")
        assert loaded.config == model.config  # merge index and feature indices survive without config.json
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, loaded.state_dict()[key]), key
    assert json.loads((tmp_path / "dir" / "config.json").read_text())["model_type"] == "seggpt"


def _broken_copy(directory: Path, tmp_path: Path, edit) -> Path:
    target = tmp_path / "broken"
    target.mkdir()
    shutil.copy(directory / "config.json", target / "config.json")
    state = load_file(str(directory / "model.safetensors"))
    edit(state)
    save_file(state, str(target / "model.safetensors"))
    return target


def test_missing_key_is_named(tiny_pair, tmp_path):
    broken = _broken_copy(tiny_pair[1], tmp_path, lambda s: s.pop("model.encoder.layers.1.mlp.lin2.bias"))
    with pytest.raises(WeightsError, match=r"1 missing keys: model\.encoder\.layers\.1\.mlp\.lin2\.bias"):
        load_model(broken, device="cpu")


def test_unexpected_key_is_named(tiny_pair, tmp_path):
    broken = _broken_copy(tiny_pair[1], tmp_path, lambda s: s.update({"decoder.extra_head.weight": torch.zeros(3)}))
    with pytest.raises(WeightsError, match=r"1 unexpected keys: decoder\.extra_head\.weight"):
        load_model(broken, device="cpu")


def test_misshaped_key_is_named(tiny_pair, tmp_path):
    def shrink(state):
        state["model.embeddings.mask_token"] = torch.zeros(1, 1, 1, 8)

    broken = _broken_copy(tiny_pair[1], tmp_path, shrink)
    with pytest.raises(WeightsError, match=r"mis-shaped keys: model\.embeddings\.mask_token \(checkpoint \(1, 1, 1, 8\), model \(1, 1, 1, 64\)\)"):
        load_model(broken, device="cpu")


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="has no model.safetensors"):
        load_model(tmp_path / "empty")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_model(tmp_path / "junk.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match="cannot read safetensors"):
        load_model(tmp_path / "bad.safetensors")


def _hub_subprocess(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_hub_id_loads_from_the_huggingface_cache(tiny_pair, tmp_path):
    """A hub id resolves through huggingface_hub's cache layout (offline: the cache is filled by hand)."""
    reference, directory, config = tiny_pair
    repo = tmp_path / "hub" / "models--acme--seggpt-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(directory / name, snapshot / name)
    expected = _same_output(reference, load_model(directory, device="cpu"), config)
    code = (
        "import torch; from seggpt_core import load_model; "
        "m = load_model('acme/seggpt-tiny', device='cpu'); "
        "print(m.config.hidden_size, sum(p.double().sum().item() for p in m.parameters()))"
    )
    result = _hub_subprocess(code, tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    hidden, checksum = result.stdout.split()
    assert int(hidden) == config["hidden_size"]
    assert abs(float(checksum) - sum(p.double().sum().item() for p in reference.parameters())) < 1e-6
    assert expected <= TOLERANCE


def test_unreachable_hub_id_explains_what_to_do(tmp_path):
    result = _hub_subprocess("from seggpt_core import load_model; load_model('BAAI/seggpt-vit-large')", tmp_path / "hub")
    assert result.returncode != 0
    assert "WeightsError: cannot fetch 'BAAI/seggpt-vit-large' from the Hugging Face hub" in result.stderr
    assert "pass the local directory" in result.stderr
    assert "tiny-appearance" in result.stderr and "SEGGPT_WEIGHTS" in result.stderr


def test_shipped_weights_load_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_model("tiny-appearance", device="cpu").config.patch_size == 4


def test_a_shipped_name_whose_files_are_missing_says_how_to_get_them(tmp_path, monkeypatch):
    from seggpt_core import weights

    monkeypatch.setitem(weights.SHIPPED_WEIGHTS, "tiny-appearance", tmp_path / "absent")  # an install without the data files
    with pytest.raises(WeightsError, match="'tiny-appearance' are not shipped in this version yet .or this install lacks its data files.; train them with `seggpt-ls train-tiny"):
        load_model("tiny-appearance")
