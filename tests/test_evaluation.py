"""The evaluation harness: IoU, episodes, the FSS-1000 folder layout and the `seggpt-ls eval` command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from seggpt_core.research.evaluation import HELD_OUT_SEED, EvalReport, iou
from seggpt_core.research.shapes import make_episode, make_scene


def test_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou(a, b) == 1.0  # nothing to find, nothing found
    a[:2] = True
    assert iou(a, b) == 0.0
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12)


def test_report_averages_per_class_then_over_classes():
    report = EvalReport()
    for category, value in (("disc", 1.0), ("disc", 0.0), ("star", 1.0)):
        report.add(category, value)
    assert report.class_means == {"disc": 0.5, "star": 1.0}
    assert report.miou == 0.75


def test_episodes_are_deterministic_and_contain_their_categories():
    first, again = make_episode(HELD_OUT_SEED + 3, shots=2, labels=2), make_episode(HELD_OUT_SEED + 3, shots=2, labels=2)
    assert first.categories == again.categories and len(first.categories) == 2
    assert np.array_equal(np.asarray(first.targets[0].image), np.asarray(again.targets[0].image))
    for scene in first.prompts + first.targets:
        assert all(scene.masks[c].any() for c in first.categories)
    assert not np.array_equal(np.asarray(first.prompts[0].image), np.asarray(make_episode(HELD_OUT_SEED + 4).prompts[0].image))


def test_eval_command_on_synthetic_episodes(capsys):
    assert main(["eval", "--synthetic", "--episodes", "4", "--shots", "2", "--weights", "random:tiny", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("mIoU=") and 0.0 <= float(lines[-1].split("=")[1]) <= 1.0
    assert any("IoU" in line for line in lines[1:-1])


def test_eval_command_on_a_folder_in_fss_layout(tmp_path, capsys):
    for category in ("disc", "star"):
        folder = tmp_path / category
        folder.mkdir()
        for index in range(3):
            scene = make_scene(100 * len(category) + index, size=(64, 80), must_include=(category,))
            scene.image.save(folder / f"{index}.jpg")
            Image.fromarray(scene.masks[category].astype(np.uint8) * 255).save(folder / f"{index}.png")
    assert main(["eval", "--dataset", str(tmp_path), "--weights", "random:tiny", "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "disc: IoU" in output and "star: IoU" in output and "over 2 target(s)" in output
    with pytest.raises(SystemExit, match="needs more than 3"):
        main(["eval", "--dataset", str(tmp_path), "--shots", "3", "--weights", "random:tiny", "--device", "cpu"])


def test_prompt_swap_shows_each_target_a_prompt_of_another_category(capsys):
    from seggpt_core import SegGptPredictor, load_model
    from seggpt_core.research.evaluation import evaluate_synthetic

    predictor = SegGptPredictor(load_model("tiny-appearance", device="cpu"), labels_per_forward=1)
    plain = evaluate_synthetic(predictor, 8)
    swapped = evaluate_synthetic(predictor, 8, prompt_swap=True)
    assert swapped.miou == plain.miou  # the ordinary scores are untouched
    assert len(swapped.swaps) == 8 and all(own != shown for own, shown in swapped.swaps)
    assert sorted(swapped.swapped) == sorted(plain.per_class)  # scored against each target's own category
    assert 0.0 <= swapped.swapped_miou <= 1.0
    with pytest.raises(ValueError, match="one label"):
        evaluate_synthetic(predictor, 2, labels=2, prompt_swap=True)

    assert main(["eval", "--synthetic", "--episodes", "6", "--weights", "tiny-appearance", "--device", "cpu", "--prompt-swap"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("prompt of another class: mIoU ") for line in lines)
    assert lines[-1].startswith("mIoU=")
    assert any("appearance episodes, train family" in line and "1 label(s) per forward" in line for line in lines)


def test_eval_command_on_every_task_and_family(capsys):
    for extra in (["--task", "shapes"], ["--family", "heldout", "--jitter", "20"], ["--labels", "2", "--shots", "2"]):
        assert main(["eval", "--synthetic", "--episodes", "3", "--weights", "tiny-appearance", "--device", "cpu", *extra]) == 0
    lines = capsys.readouterr().out
    assert "held-out shapes episodes" in lines and "heldout family, jitter 20" in lines and "2 label(s), 2-shot" in lines


def test_swap_on_appearance_episodes_uses_the_same_images_with_another_mask():
    from seggpt_core import SegGptPredictor, build_model
    from seggpt_core.research.evaluation import evaluate_episodes, make_episodes

    made = list(make_episodes(5))
    report = evaluate_episodes(SegGptPredictor(build_model("tiny", seed=0)), made, prompt_swap=True)
    assert len(report.swaps) == 5
    for episode, (own, shown) in zip(made, report.swaps):
        # another class of the same episode, shown in the same prompt image
        assert own == episode.categories[0] and shown != own and shown in episode.classes
        assert episode.prompts[0].masks[shown].any()
