"""The identity split, the calibration subsampling and the identity rule (preparation/split.py), and
the run orchestrator's own helpers (froq/pipeline.py: options, summary, steps), on tiny temporary
folders (no shared data, no model run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from baselineFIQA.perturbations import default_mpx
from froq import pipeline
from froq.core.errors import FroqError
from preparation import calibration, split
from preparation.split import (choose_calibration, evenly_spaced, identity_of, split_aligned,
                               subsample_folder)


def make_images(root: Path, rels) -> list[str]:
    """Tiny PNGs at ``root/rel`` (plus a non-image file, which must be ignored). Out: sorted rels."""
    for i, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), i % 256, np.uint8)).save(root / rel)
    (root / "landmarks.csv").write_text("path\n")
    return sorted(rels)


def links(folder: Path) -> dict[str, Path]:
    """``{relative path: resolved target}`` of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): p.resolve() for p in folder.rglob("*") if p.is_file()}


# -- identity_of, evenly_spaced ---------------------------------------------------------------------

def test_identity_is_the_parent_folder_and_shared_with_the_builder():
    assert identity_of("Ann/Ann_0001.png") == "Ann"
    assert identity_of("x.png") == ""
    assert identity_of("a/b/x.png") == "a/b"
    assert calibration.identity_of is split.identity_of  # one rule for the split and the builder


def test_evenly_spaced_keeps_all_or_spreads_over_the_list():
    items = list(range(10))
    assert evenly_spaced(items, 10) == items and evenly_spaced(items, 25) == items
    assert evenly_spaced(items, 3) == [0, 3, 6]
    assert evenly_spaced(items, 4) == [0, 2, 5, 7]
    big = [f"p{i:05d}" for i in range(1542)]
    picked = evenly_spaced(big, 300)
    assert len(picked) == 300 == len(set(picked)) and picked == sorted(picked)
    assert picked[0] == big[0] and picked[-1] in big[-6:]  # spread over the whole list
    gaps = np.diff([big.index(p) for p in picked])
    assert gaps.min() >= 5 and gaps.max() <= 6
    with pytest.raises(FroqError, match="at least 1"):
        evenly_spaced(items, 0)


# -- choose_calibration -----------------------------------------------------------------------------

def test_choose_calibration_rules(tmp_path):
    rels = sorted(f"{p}/{p}_{k}.png" for p in ("A", "B", "C", "D", "E") for k in (1, 2))
    calib, rule = choose_calibration(rels, "split", every=2)
    assert calib == {r for r in rels if r[0] in "ACE"} and "1 in 2 identity folders" in rule
    calib, _ = choose_calibration(rels, "split", every=4)
    assert calib == {r for r in rels if r[0] in "AE"}
    ids = tmp_path / "pool.txt"
    ids.write_text("B\n\n  D \nZ\n")
    calib, rule = choose_calibration(rels, "split", every=2, ids=ids)
    assert calib == {r for r in rels if r[0] in "BD"} and rule == f"identities listed in {ids}"
    assert choose_calibration(rels, "all-target")[0] == set()
    assert choose_calibration(rels, "all-calibration")[0] == set(rels)
    with pytest.raises(FroqError, match="unknown split mode"):
        choose_calibration(rels, "sideways")
    with pytest.raises(FroqError, match="not found"):
        choose_calibration(rels, "split", ids=tmp_path / "missing.txt")


def test_choose_calibration_flat_folder_takes_every_kth_image():
    flat = [f"img_{i:02d}.png" for i in range(9)]
    calib, rule = choose_calibration(flat, "split", every=4)
    assert calib == {"img_00.png", "img_04.png", "img_08.png"} and "images (sorted)" in rule
    # one named folder beside top-level images is still "flat": fewer than two named identities
    mixed = sorted(flat[:3] + ["Solo/a.png", "Solo/b.png"])
    calib, rule = choose_calibration(mixed, "split", every=2)
    assert calib == {mixed[0], mixed[2], mixed[4]} and "images" in rule


# -- split_aligned ----------------------------------------------------------------------------------

def test_split_aligned_links_calibration_and_targets(tmp_path):
    aligned = tmp_path / "aligned"
    rels = make_images(aligned, [f"P{i}/P{i}_{k}.png" for i in range(6) for k in (1, 2)])
    res = split_aligned(aligned, tmp_path / "split", "split", every=2)
    cal, tgt = links(tmp_path / "split" / "calibration"), links(tmp_path / "split" / "target")
    assert set(cal) == {r for r in rels if r[1] in "024"} and set(tgt) == {r for r in rels if r[1] in "135"}
    assert all(cal[r] == (aligned / r).resolve() for r in cal)
    assert (res.calibration, res.target, res.pool) == (6, 6, 6)
    assert res.summary_line() == ("split (1 in 2 identity folders (sorted by name) to calibration): "
                                  "6 calibration sources, 6 targets")

    # the cap: evenly spaced sources kept; the others are neither calibrated on nor scored;
    # an earlier split is replaced, not merged
    res = split_aligned(aligned, tmp_path / "split", "split", every=2, cap=4)
    cal, tgt = links(tmp_path / "split" / "calibration"), links(tmp_path / "split" / "target")
    pool = [r for r in rels if r[1] in "024"]
    assert sorted(cal) == evenly_spaced(pool, 4) and len(tgt) == 6
    assert (res.calibration, res.pool) == (4, 6) and "(4 of 6, evenly spaced: --max-calibration)" in res.summary_line()


def test_split_aligned_modes_and_errors(tmp_path):
    aligned = tmp_path / "aligned"
    rels = make_images(aligned, [f"P{i}/x.png" for i in range(4)])
    res = split_aligned(aligned, tmp_path / "s1", "all-target")
    assert res.calibration == 0 and sorted(links(tmp_path / "s1" / "target")) == rels
    res = split_aligned(aligned, tmp_path / "s2", "all-calibration", cap=3)
    assert res.target == 0 and sorted(links(tmp_path / "s2" / "calibration")) == evenly_spaced(rels, 3)
    # 1 in 4 of 4 identities = 1 calibration source: too few for a split
    with pytest.raises(FroqError, match=r"gives 1 calibration and 3 target images: pass more photos"):
        split_aligned(aligned, tmp_path / "s3", "split", every=4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FroqError, match=r"^no aligned face to use: no images .*no face found in the photos\?"):
        split_aligned(empty, tmp_path / "s4")


# -- subsample_folder -------------------------------------------------------------------------------

def test_subsample_folder(tmp_path):
    src = tmp_path / "calib"
    rels = make_images(src, [f"id_{i}/v.png" for i in range(7)])
    folder, total = subsample_folder(src, 7, tmp_path / "sub")
    assert folder == src and total == 7 and not (tmp_path / "sub").exists()
    (tmp_path / "sub" / "stale").mkdir(parents=True)
    folder, total = subsample_folder(src, 3, tmp_path / "sub")
    assert folder == tmp_path / "sub" and total == 7
    got = links(folder)
    assert sorted(got) == evenly_spaced(rels, 3) == ["id_0/v.png", "id_2/v.png", "id_4/v.png"]
    assert all(got[r] == (src / r).resolve() for r in got) and not (folder / "stale").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FroqError, match="no images"):
        subsample_folder(tmp_path / "empty", 3, tmp_path / "x")


# -- the orchestrator's helpers ---------------------------------------------------------------------

def write_run_outputs(out: Path, qualities, n_labels: int, layers) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "observer.json").write_text(json.dumps({
        "selected_layers": layers,
        "greedy": [{"layer": name, "spearman": 0.4 + 0.1 * i} for i, name in enumerate(layers + ["extra"])]}))
    (out / "qualities.csv").write_text("path,quality\n" + "".join(
        f"t{i}.png,{q}\n" for i, q in enumerate(qualities)))
    (out / "labels.csv").write_text("path,flip,noise,occlusion,quality\n" + "".join(
        f"c{i}.png,1,1,1,0.5\n" for i in range(n_labels)))


def test_write_summary(tmp_path):
    out = tmp_path / "out"
    write_run_outputs(out, [0.5, 2.0, 1.0, 4.0], 6, ["a.b", "c"])
    summary = pipeline.write_summary(out, "configs/fr/dlib_resnet.yaml", "/cal", "/tgt")
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["calibration_images"] == 6 and summary["target_images"] == 4
    assert summary["selected_layers"] == ["a.b", "c"]
    assert summary["calibration_spearman"] == pytest.approx(0.5)  # the greedy step of the 2nd layer
    assert summary["quality"] == {"min": 0.5, "median": 1.5, "max": 4.0}
    assert summary["outputs"]["qualities"] == str(out / "qualities.csv")
    assert (summary["fr_config"], summary["calibration"], summary["target"]) == \
        ("configs/fr/dlib_resnet.yaml", "/cal", "/tgt")
    text = "\n".join(pipeline.summary_lines(summary, out))
    assert text.startswith("\n== summary\nFR config:        configs/fr/dlib_resnet.yaml")
    assert "selected layers:  a.b, c" in text and "calibration set): 0.500" in text
    assert "4 images scored (/tgt); quality min/median/max 0.5/1.5/4 (higher = better)" in text
    assert str(out / "summary.json") in text


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unknown argument '--bogus' (see ./run.sh -h)"),
    (["--photos"], "option --photos needs a value (see ./run.sh -h)"),
    (["--out", ""], "option --out needs a value (see ./run.sh -h)"),
    (["--seed", "1.5"], "expected a whole number, got '1.5'"),
    (["--max-calibration", "2"], "--max-calibration must be at least 3"),
    (["--every", "1"], "--every must be at least 2"),
    (["--target", "/nonexistent/faces"], "--target: folder not found: /nonexistent/faces"),
    (["--fallback", "guess"], "--fallback must be none or center-box, got 'guess'"),
])
def test_option_errors_are_one_runsh_line(argv, message, capsys):
    assert pipeline.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"run.sh: {message}\n"


def test_options_help_and_paths(tmp_path, capsys):
    assert pipeline.main(["-h"]) == 0
    out = capsys.readouterr().out
    for opt in ("--photos DIR", "--calibration DIR", "--target DIR", "--fr CFG", "--out DIR", "--device DEV",
                "--max-calibration N", "--variants N", "--keep-clean", "--seed S", "--calibration-ids F",
                "--every K", "--select central|largest|center", "--fallback none|center-box", "-h, --help"):
        assert opt in out
    (tmp_path / "photos").mkdir()
    (tmp_path / "my.yaml").write_text("x: 1\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # folders are checked relative to the caller's folder
    try:
        opts = pipeline.parse_args(["--photos", "photos", "--fr", "my.yaml", "--out", "o",
                                    "--max-calibration", "50", "--keep-clean"])
    finally:
        os.chdir(cwd)
    assert (opts.max_calibration, opts.keep_clean, opts.every, opts.variants) == (50, True, 4, 1)
    opts = pipeline.resolve_user_paths(opts, str(tmp_path))
    assert opts.photos == f"{tmp_path}/photos" and opts.fr == f"{tmp_path}/my.yaml" and opts.out == f"{tmp_path}/o"
    # an FR config that is no file here stays relative to the repository; the default out too
    opts = pipeline.resolve_user_paths(pipeline.Options(fr="configs/fr/nowhere.yaml"), str(tmp_path))
    assert opts.fr == "configs/fr/nowhere.yaml" and opts.out == "outputs"
    assert (default_mpx(112), default_mpx(150)) == (14, 19)
    odd = "/a b/it's: [x]"
    assert yaml.safe_load(pipeline.yaml_quoted(odd)) == odd
    assert pipeline.stage_argv("init", ["--set", "seed=0"], dataset__path="'d'") == \
        ["-c", "configs/init.yaml", "--set", "seed=0", "--set", "dataset.path='d'"]


def test_step_reports_a_failing_step(capsys):
    assert pipeline.step("fine", lambda: 42) == 42

    def broken():
        raise FroqError("the input is bad")

    with pytest.raises(pipeline.Stopped) as stop:
        pipeline.step("demo", broken)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "== fine\n== demo\n" in captured.out
    assert captured.err == ("error: the input is bad\nrun.sh: stopped: demo failed (exit 2); fix the problem "
                            "above and run again (finished work resumes)\n")


def test_calibration_ids_found_beside_the_photos(tmp_path):
    (tmp_path / "photos").mkdir()
    assert pipeline.calibration_ids_beside(str(tmp_path / "photos")) is None
    (tmp_path / "calibration_pool.txt").write_text("A\n")
    found = pipeline.calibration_ids_beside(str(tmp_path / "photos"))
    assert found == f"{tmp_path / 'photos'}/../calibration_pool.txt" and Path(found).is_file()


def test_main_without_inputs_says_what_to_pass_and_restores_the_folder(tmp_path, capsys):
    repo = Path(pipeline.__file__).resolve().parents[1]
    if any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in (repo / "calibration_dataset").rglob("*")):
        pytest.skip("calibration_dataset/ holds images: the run would use them")
    cwd = os.getcwd()
    code = pipeline.main(["--fr", str(repo / "configs" / "fr" / "dlib_resnet.yaml"), "--device", "cpu",
                          "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2 and os.getcwd() == cwd
    assert "FR model: dlib_resnet (" in captured.out and "input 150px" in captured.out
    assert captured.err.startswith("run.sh: nothing to calibrate on: pass --photos DIR")
    assert captured.err.count("\n") == 1


def test_run_options_from_a_config_file_and_set(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("variants: 3\nkeep-clean: true\nevery: 5\n")
    opts = pipeline.parse_args(["-c", str(cfg), "--set", "seed=7", "--every", "6"])
    assert (opts.variants, opts.keep_clean, opts.seed, opts.every) == (3, True, 7, 6)
    with pytest.raises(FroqError, match="unknown key 'varients' \\(did you mean 'variants'\\?\\)"):
        pipeline.parse_args(["--set", "varients=2"])
