"""The `seggpt-ls demo` and `seggpt-ls segment` commands, in-process and as the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import SAMPLES, main


def test_demo_writes_masks_results_and_preview(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "untrained, seeded random network" in printed  # the demo says honestly what its masks are
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["labels"] == ["disc", "star"]
    targets = sorted(SAMPLES.glob("target_*.png"))
    assert sorted(results["images"]) == [p.name for p in targets]
    for target in targets:
        with Image.open(target) as image:
            size = image.size
        for label in ("disc", "star"):
            with Image.open(tmp_path / "masks" / f"{target.stem}__{label}.png") as mask:
                assert mask.size == size
                assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    with Image.open(tmp_path / "preview.png") as preview:
        assert preview.width > 300 and preview.height > 100


def test_segment_skips_a_corrupt_image_and_reports_it(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES / "target_1.png", images / "good one.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    code = main([
        "segment", "--weights", "random:tiny", "--images", str(images), "--out", str(out),
        "--prompt", f"{SAMPLES / 'prompt.png'}:{SAMPLES / 'prompt_disc.png'}:round thing",
        "--prompt", f"{SAMPLES / 'prompt.png'}:{SAMPLES / 'prompt_star.png'}",
    ])
    assert code == 1  # something failed: the exit code says so
    printed = capsys.readouterr().out
    assert "failed 1" in printed and "broken.jpg" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["images"]) == ["good one.png"]
    assert set(results["images"]["good one.png"]["labels"]) == {"round thing", "prompt_star"}
    assert "corrupt or truncated image" in results["failed"][str(images / "broken.jpg")]
    assert (out / "masks" / "good_one__round_thing.png").is_file()


def test_segment_refuses_a_bad_prompt_spec(tmp_path):
    with pytest.raises(SystemExit, match="expected IMAGE:MASK or IMAGE:MASK:LABEL"):
        main(["segment", "--images", str(tmp_path), "--out", str(tmp_path), "--prompt", "just-one-part"])
    with pytest.raises(SystemExit, match="no such file"):
        main(["segment", "--images", str(tmp_path), "--out", str(tmp_path), "--prompt", "a.png:b.png"])


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "seggpt-ls"
    result = subprocess.run([str(script), "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "segmented 3 image(s)" in result.stdout
