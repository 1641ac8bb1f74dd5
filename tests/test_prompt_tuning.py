"""Learnable prompt tuning in seggpt_core: the frozen model, the learned tensors, saving, and use by the predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seggpt_core import PromptError, SegGptPredictor, build_model
from seggpt_core.predictor import Prompt
from seggpt_core.prompt_tuning import LearnedPrompt, TuneSettings, tune_prompt
from seggpt_core.research.shapes import make_scene


def _examples(count: int, category: str = "disc") -> list[Prompt]:
    scenes = [make_scene(300 + i, size=(64, 64), must_include=(category,)) for i in range(count)]
    return [Prompt(s.image, {category: s.masks[category]}) for s in scenes]


def test_tuning_lowers_the_loss_and_leaves_the_model_unchanged():
    model = build_model("tiny", seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    learned = tune_prompt(model, _examples(6), TuneSettings(steps=25, batch=6, lr=0.05), progress=lambda s, n, loss: losses.append(loss))
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # the prompt learned something
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # restored for whoever trains the model next
    assert learned.labels == ("disc",) and learned.image.shape == (3, 64, 64)
    assert learned.info["examples"] == 6 and learned.info["steps"] == 25


def test_learned_prompt_round_trips_through_bytes_and_files(tmp_path):
    learned = tune_prompt(build_model("tiny", seed=1), _examples(2), TuneSettings(steps=2, batch=2))
    again = LearnedPrompt.from_bytes(learned.to_bytes())
    assert again.labels == learned.labels and torch.equal(again.image, learned.image) and torch.equal(again.mask, learned.mask)
    assert again.digest == learned.digest
    path = learned.save(tmp_path / "prompts" / "p.safetensors")
    assert LearnedPrompt.load(path).digest == learned.digest
    changed = LearnedPrompt(learned.labels, learned.image + 0.01, learned.mask)
    assert changed.digest != learned.digest
    with pytest.raises(PromptError, match="not a learned prompt"):
        LearnedPrompt.from_bytes(b"garbage", where="upload")


def test_predictor_uses_the_learned_prompt_for_its_labels_and_the_pool_for_the_rest():
    model = build_model("tiny", seed=2)
    learned = tune_prompt(model, _examples(3, "disc"), TuneSettings(steps=2, batch=3))
    pool = [Prompt(s.image, {"star": s.masks["star"], "disc": s.masks["disc"]})
            for s in (make_scene(500 + i, size=(64, 64), must_include=("disc", "star")) for i in range(2))]
    predictor = SegGptPredictor(model)
    predictor.set_prompts(pool, learned=learned)
    assert sorted(predictor.labels) == ["disc", "star"]
    assert predictor.annotated_by() == {"star": (0, 1)}  # disc comes from the learned prompt only
    assert ((("star",), (0, 1)) in predictor.groups) and ((("disc",), ()) in predictor.groups)
    target = make_scene(900, size=(50, 70)).image
    [result] = predictor.predict([target])
    assert set(result.masks) == {"disc", "star"} and result.masks["disc"].shape == (50, 70)
    # the learned group alone gives the same disc mask: the pool prompts do not leak into it
    alone = SegGptPredictor(model)
    alone.set_prompts([], learned=learned)
    [only] = alone.predict([target])
    assert set(only.masks) == {"disc"} and np.array_equal(only.masks["disc"], result.masks["disc"])


def test_a_prompt_tuned_for_another_model_size_is_refused():
    learned = LearnedPrompt(("disc",), torch.zeros(3, 32, 32), torch.zeros(3, 32, 32))
    with pytest.raises(PromptError, match="tuned for another model"):
        SegGptPredictor(build_model("tiny", seed=0)).set_prompts([], learned=learned)


def test_tuning_refuses_examples_without_labels():
    with pytest.raises(PromptError, match="at least one"):
        tune_prompt(build_model("tiny", seed=0), [])


def test_a_large_project_is_sampled_down_to_max_examples():
    learned = tune_prompt(build_model("tiny", seed=0), _examples(5), TuneSettings(steps=1, batch=2, max_examples=3))
    assert learned.info["examples"] == 3
