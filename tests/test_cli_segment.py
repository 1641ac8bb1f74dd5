"""`seggpt-ls demo` and `seggpt-ls segment`: in-process and through the queue, every output format."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import SAMPLES, main
from worker import EmbeddedRedis


def _prompt_args() -> list[str]:
    return ["--prompt", f"{SAMPLES / 'prompt.png'}:{SAMPLES / 'prompt_dotted.png'}:round thing",
            "--prompt", f"{SAMPLES / 'prompt.png'}:{SAMPLES / 'prompt_striped.png'}"]


# What tiny-appearance scores on the six bundled targets (measured 0.696), less a margin.
DEMO_MIOU_FLOOR = 0.6


def test_demo_runs_the_queue_path_and_writes_every_format(tmp_path, model_dir, capsys):
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "the project's own small SegGPT trained on synthetic appearance episodes" in printed  # it says honestly what it runs
    assert "through the queue" in printed
    # the bundled images come with the generator's truth: the shipped model must find the prompted classes, and
    # not their look-alikes
    line = next(l for l in printed.splitlines() if l.startswith("IoU against the generator's ground truth"))
    assert float(line.rsplit("mIoU ", 1)[1]) >= DEMO_MIOU_FLOOR, line
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == ["dotted", "striped"]
    targets = sorted(SAMPLES.glob("target_*.png"))
    assert sorted(results["images"]) == [p.name for p in targets]
    for target in targets:
        with Image.open(target) as image:
            size = image.size
        for label in ("dotted", "striped"):
            with Image.open(out / "masks" / f"{target.stem}__{label}.png") as mask:
                assert mask.size == size
                assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    with Image.open(out / "preview.png") as preview:
        assert preview.width > 300 and preview.height > 100
        # the legend's swatches: one per label, in its display color
        from backend.preview import display_color

        pixels = np.asarray(preview.convert("RGB"))
        for index in range(2):
            assert (pixels[-60:] == display_color(index)).all(axis=-1).sum() > 100


def test_queue_and_in_process_give_the_same_masks(tmp_path, model_dir):
    assert main(["segment", "--weights", "random:tiny", "--device", "cpu", "--images", str(SAMPLES), "--out", str(tmp_path / "q"), *_prompt_args()]) == 0
    assert main(["segment", "--no-queue", "--weights", "random:tiny", "--device", "cpu", "--images", str(SAMPLES), "--out", str(tmp_path / "p"), *_prompt_args()]) == 0
    queued = sorted((tmp_path / "q" / "masks").iterdir())
    assert len(queued) == 2 * len(list(SAMPLES.glob("*.png")))
    for path in queued:
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "p" / "masks" / path.name))), path.name


def test_coco_output_reads_back_with_pycocotools(tmp_path):
    from pycocotools import mask as coco_mask

    out = tmp_path / "out"
    assert main(["segment", "--no-queue", "--weights", "random:tiny", "--device", "cpu", "--format", "png,coco,ls-json",
                 "--images", str(SAMPLES), "--out", str(out), *_prompt_args()]) == 0
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["round thing", "prompt_striped"]
    assert coco["annotations"], "nothing was painted"
    names = {image["id"]: image for image in coco["images"]}
    for annotation in coco["annotations"]:
        image = names[annotation["image_id"]]
        rle = {"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"].encode()}
        decoded = coco_mask.decode(rle).astype(bool)
        label = coco["categories"][annotation["category_id"] - 1]["name"]
        png = np.asarray(Image.open(out / "masks" / f"{Path(image['file_name']).stem}__{label.replace(' ', '_')}.png")) > 0
        assert decoded.shape == (image["height"], image["width"])
        assert np.array_equal(decoded, png)
        assert int(coco_mask.area(rle)) == annotation["area"]
    tasks = json.loads((out / "label-studio.json").read_text())
    assert len(tasks) == len(coco["images"]) and tasks[0]["data"]["image"].startswith("/data/local-files/?d=")
    assert "<BrushLabels" in (out / "label-config.xml").read_text()


def test_prompts_dir_reuses_a_previous_output_layout(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    shutil.copy(SAMPLES / "prompt.png", prompts / "scene.png")
    shutil.copy(SAMPLES / "prompt_dotted.png", prompts / "scene__dotted.png")
    assert main(["segment", "--no-queue", "--weights", "random:tiny", "--device", "cpu", "--prompts-dir", str(prompts),
                 "--images", str(SAMPLES), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["labels"] == ["dotted"]
    assert not (tmp_path / "out" / "preview.png").exists()  # --preview was not asked for


def test_segment_skips_a_corrupt_image_and_reports_it(tmp_path, model_dir, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES / "target_1.png", images / "good one.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    code = main(["segment", "--weights", "random:tiny", "--device", "cpu", "--images", str(images), "--out", str(out), "--preview", *_prompt_args()])
    assert code == 1  # something failed: the exit code says so
    printed = capsys.readouterr().out
    assert "failed 1" in printed and "broken.jpg" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["images"]) == ["good one.png"]
    assert set(results["images"]["good one.png"]["labels"]) == {"round thing", "prompt_striped"}
    assert "corrupt or truncated image" in results["failed"][str(images / "broken.jpg")]
    assert (out / "masks" / "good_one__round_thing.png").is_file() and (out / "preview.png").is_file()


def test_segment_refuses_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="expected IMAGE:MASK or IMAGE:MASK:LABEL"):
        main(["segment", "--images", str(tmp_path), "--out", str(tmp_path), "--prompt", "just-one-part"])
    with pytest.raises(SystemExit, match="no such file"):
        main(["segment", "--images", str(tmp_path), "--out", str(tmp_path), "--prompt", "a.png:b.png"])
    with pytest.raises(SystemExit, match="choose from png, ls-json, coco"):
        main(["segment", "--images", str(SAMPLES), "--out", str(tmp_path), "--format", "tiff", *_prompt_args()])


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "seggpt-ls"
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "data")}
    env.pop("REDIS_URL", None)
    try:
        result = subprocess.run([str(script), "demo", "--no-queue", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env)
    finally:
        EmbeddedRedis(tmp_path / "data" / "redis").stop()
    assert result.returncode == 0, result.stderr
    assert "segmented 6 image(s)" in result.stdout
