"""The ``froq`` command: every job is a subcommand, with the stages' options, keys and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from froq.commands import COMMANDS, main

STAGES = {"labels": "dataset.mpx", "init": "top_n", "score": "observer_data",
          "evaluate": "discard_limit"}


def run_froq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "froq", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_help_lists_every_job():
    proc = run_froq("--help")
    assert proc.returncode == 0
    for name in ("labels", "init", "score", "methods", "evaluate", "align", "build-calibration", "run"):
        assert f"  {name} " in proc.stdout, name
    assert set(COMMANDS) == {"labels", "init", "score", "methods", "evaluate", "align",
                             "build-calibration", "run"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    try:
        code = main([name, "--help"])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage:" in out.lower() and len(out.splitlines()) > 5
    if name in STAGES:  # config-driven stages list their keys with defaults
        assert "config keys" in out and STAGES[name] in out


def test_unknown_command_and_stage_errors_are_one_line(tmp_path):
    proc = run_froq("bogus")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown command 'bogus'")
    proc = run_froq("init", "-c", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: config file not found: {tmp_path / 'missing.yaml'}"]


def test_console_script_is_installed_with_the_package():
    """``pip install -e .`` (install.sh) puts ``froq`` beside the interpreter."""
    script = Path(sys.executable).with_name("froq")
    if not script.exists():
        pytest.skip(f"{script} not installed: run ./install.sh (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "build-calibration" in proc.stdout
