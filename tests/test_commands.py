"""The ``froq`` command: every job is a subcommand, with the stages' options, keys and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from froq.commands import COMMANDS, main

STAGES = {"labels": "dataset.mpx", "init": "top_n", "score": "observer_data",
          "evaluate": "discard_limit", "optimize-labels": "epsilon"}


def run_froq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "froq", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_help_lists_every_job():
    proc = run_froq("--help")
    assert proc.returncode == 0
    names = {"labels", "optimize-labels", "init", "score", "score-photos", "methods", "evaluate",
             "align", "build-calibration", "run", "table"}
    for name in names:
        assert f"  {name} " in proc.stdout, name
    assert set(COMMANDS) == names


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


def test_flag_style_commands_take_a_config_file_and_set(tmp_path, capsys):
    """build-calibration/align accept -c CONFIG (keys = long option names) and --set, like the
    stages; flags on the command line win; a typo names the closest key."""
    from PIL import Image

    src = tmp_path / "src" / "p1"
    src.mkdir(parents=True)
    for k in range(2):
        Image.new("RGB", (32, 32), (40 * k, 90, 10)).save(src / f"a{k}.png")
    cfg = tmp_path / "build.yaml"
    cfg.write_text(f"source: {tmp_path / 'src'}\noutput: {tmp_path / 'out'}\nvariants: 2\nkeep-clean: true\n")
    assert main(["build-calibration", "-c", str(cfg), "--set", "ext=png"]) == 0
    built = sorted(p.name for p in (tmp_path / "out").rglob("*.png"))
    assert built == ["a0_v0.png", "a0_v1.png", "a0_v2.png", "a1_v0.png", "a1_v1.png", "a1_v2.png"]
    assert main(["build-calibration", "-c", str(cfg), "--output", str(tmp_path / "o2"), "--variants", "1"]) == 0
    assert len(list((tmp_path / "o2").rglob("*.jpg"))) == 4  # v0 + v1 per source, jpg default
    capsys.readouterr()
    assert main(["build-calibration", "-c", str(cfg), "--set", "variant=3"]) == 2
    assert "unknown key 'variant' (did you mean 'variants'?)" in capsys.readouterr().err
    assert main(["align", "--set", "template=nope", "--input", str(src), "--output", str(tmp_path / "a")]) == 2
    assert "template: must be one of" in capsys.readouterr().err


def test_optimize_labels_is_the_stage_script(tmp_path, capsys):
    """``froq optimize-labels`` runs baselineFIQA/optimize.py: its keys, its one-line errors."""
    cfg = REPO / "configs" / "label_optimisation.yaml"
    assert main(["optimize-labels", "-c", str(cfg), "--set", "epsilon=-1",
                 "--set", f"outpath={tmp_path / 'o.csv'}"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == ["error: epsilon=-1.0: must be in (0, 1] (published: 0.001)"]
    assert main(["optimize-labels", "-c", str(cfg), "--set", "epsilon=0.01",
                 "--set", f"label_location={tmp_path / 'none.csv'}", "--set", f"outpath={tmp_path / 'o.csv'}"]) == 2
    assert "none.csv" in capsys.readouterr().err
