"""Every command's --help works (serve's once crashed on the `%` of a help text) and serve's --host is documented."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from backend.cli import build_parser


def _commands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_the_command_list_is_complete():
    assert {"demo", "tryout", "serve", "worker", "bootstrap", "status", "segment"} <= set(_commands())


@pytest.mark.parametrize("argv", [[]] + [[name] for name in _commands()], ids=lambda argv: " ".join(argv) or "seggpt-ls")
def test_help_prints_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: seggpt-ls {' '.join(argv)}".rstrip()), out[:200]


def test_serve_help_from_the_shell_names_the_host_default():
    result = subprocess.run([sys.executable, "-m", "backend.cli", "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    text = " ".join(result.stdout.split())
    assert "--host HOST address to listen on (default: 127.0.0.1" in text
    assert "a share of the image (0.5%)" in text  # the help text that once crashed it
