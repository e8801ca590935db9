"""The ``froq`` command: every job is a subcommand, with the stages' options, keys and errors."""

from __future__ import annotations

import argparse
import re
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


def documented_options() -> dict[str, set[str]]:
    """The options each command's synopsis in froq/commands.py's docstring shows (``froq NAME ...``)."""
    import froq.commands
    out: dict[str, set[str]] = {}
    for line in froq.commands.__doc__.splitlines():
        words = line.split("#")[0].split()
        if len(words) >= 2 and words[0] == "froq":
            out[words[1]] = {w.strip("[]") for w in words[2:] if w.strip("[]").startswith("-")}
    return out


def help_and_parser(name: str, monkeypatch, capsys) -> tuple[str, argparse.ArgumentParser]:
    """``froq NAME --help``: its text and the command's argparse parser (the one with the most
    options among those that parsed the command line)."""
    parsers = []
    real = argparse.ArgumentParser.parse_known_args

    def spy(self, args=None, namespace=None):
        parsers.append(self)
        return real(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", spy)
    try:
        code = main([name, "--help"])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    assert code == 0 and parsers, (name, code)
    return capsys.readouterr().out, max(parsers, key=lambda p: len(p._actions))


def test_the_synopsis_covers_every_command():
    assert set(documented_options()) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, monkeypatch, capsys):
    """Each subcommand's --help lists every option of its parser, each with a help text; the
    options its synopsis documents exist (a removed or renamed option fails here)."""
    out, parser = help_and_parser(name, monkeypatch, capsys)
    assert "usage:" in out.lower() and len(out.splitlines()) > 5
    options = {o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
    missing = documented_options()[name] - options
    assert not missing, f"froq {name}: documented options {sorted(missing)} are not options of its parser"
    generated = any(isinstance(a, argparse._HelpAction) for a in parser._actions)  # else a typed text
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        assert action.help or not generated, f"froq {name} {action.option_strings}: no help text"
        for option in action.option_strings:
            assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", out, re.M), (name, option)
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
