"""The README stays true: its two opening commands and its configuration reference."""

from pathlib import Path

from backend.settings import ENVIRONMENT

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in block] == ["bash scripts/run.sh demo", "bash scripts/run.sh test"]
    assert "bash scripts/run.sh test" in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_every_setting_is_documented():
    for variable, _ in ENVIRONMENT.values():
        assert f"`{variable}`" in README, variable
