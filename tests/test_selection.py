"""Choosing K prompts per label for each target: `recent` and `similar`, and the predictor honouring a choice."""

from __future__ import annotations

import numpy as np
import torch
import pytest

from seggpt_core import Prompt, SegGptPredictor
from seggpt_core.embedding import image_embedding
from seggpt_core.research.shapes import make_scene
from worker.selection import select


def test_recent_takes_the_first_k_of_each_label():
    annotated_by = {"a": (0, 1, 2, 3), "b": (2, 4)}
    assert select(annotated_by, 2, "recent") == {"a": [0, 1], "b": [2, 4]}


def test_similar_prefers_images_that_look_like_the_target():
    scenes = [make_scene(seed, size=(80, 100)) for seed in range(6)]
    embeddings = [image_embedding(s.image) for s in scenes]
    target = image_embedding(scenes[4].image.transpose(0))  # a mirrored copy of prompt 4
    chosen = select({"x": (0, 1, 2, 3, 4, 5)}, 1, "similar", embeddings, target)
    assert chosen == {"x": [4]}
    assert float(embeddings[4] @ target) > max(float(embeddings[i] @ target) for i in (0, 1, 2, 3, 5))
    with pytest.raises(ValueError, match="strategy"):
        select({"x": (0,)}, 1, "random")


def test_predictor_uses_only_the_selected_prompts(tiny_model):
    scenes = [make_scene(seed, size=(60, 70), must_include=("disc",)) for seed in range(3)]
    prompts = [Prompt(s.image, {"disc": s.masks["disc"]}) for s in scenes]
    target = make_scene(9, size=(50, 50)).image
    predictor = SegGptPredictor(tiny_model)
    predictor.set_prompts(prompts)
    prepared = predictor.prepare_target(target)
    chosen = predictor.predict_prepared([prepared], [{"disc": [1]}])[0]
    alone = SegGptPredictor(tiny_model).segment([target], [prompts[1]])[0]
    assert np.array_equal(chosen.masks["disc"], alone.masks["disc"])
    # the three-prompt ensemble paints something else than prompt 1 alone (masks of a random model may be empty)
    batch = prepared.tensor[None]
    [everything] = predictor._groups_for(predictor.annotated_by())
    [selected] = predictor._groups_for({"disc": [1]})
    assert everything.rows == 3 and selected.rows == 1
    assert not torch.allclose(predictor.paint(batch, everything), predictor.paint(batch, selected), atol=1e-5)
