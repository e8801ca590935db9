"""Config errors of the three stage CLIs: one ``error:`` line naming the file and the key, exit
code 2, no traceback; plus the pieces of froq/core/config.py they rely on (overrides, validation)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from baselineFIQA import main as baseline_cli
from froq.core.cli import run_main
from froq.core.config import (Key, float_list, int_or_auto, load_config, parse_overrides, positive_int,
                         read_yaml, validate)
from froq.core.errors import FroqError
from observer import inference as inference_cli
from observer import initialization as init_cli
from stage_helpers import error_line

STAGES = {"baseline": baseline_cli.main, "init": init_cli.main, "inference": inference_cli.main}


@pytest.fixture
def stage_configs(tmp_path):
    """A valid config per stage (tiny folder, AdaFace IR-18 with random weights, CPU)."""
    faces = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for k in range(3):
        (faces / "P").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(faces / "P" / f"P_{k:04d}.png")
    fr = tmp_path / "fr.yaml"
    fr.write_text("model: {arch: adaface_ir_18, weights: random}\n"
                  "preprocess: {size: 112, mean: 0.5, std: 0.5, channels: [2, 1, 0]}\n")
    common = f"face_recognition_config: {fr}\ndevice: cpu\n"
    texts = {
        "baseline": common + f"dataset: {{path: {faces}, batch_size: 2, mpx: 56, noise_count: 2}}\n"
                             f"outpath: {tmp_path}/out/labels.csv\n",
        "init": common + f"dataset: {{path: {faces}, batch_size: 2}}\n"
                         f"label_location: {tmp_path}/out/labels.csv\noutpath: {tmp_path}/out/observer.json\n",
        "inference": common + f"target_dataset: {faces}\nobserver_data: {tmp_path}/out/observer.json\n"
                              f"outpath: {tmp_path}/out/q.csv\n",
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text)
    return paths


def _run(stage, argv, capsys):
    rc = run_main(STAGES[stage], [str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err




def _without(path, key):
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{key}:")]
    path.write_text("\n".join(lines) + "\n")


# -- the stage CLIs -----------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_missing_required_key(stage, stage_configs, capsys):
    cfg = stage_configs[stage]
    _without(cfg, "outpath")
    rc, _, err = _run(stage, ["-c", cfg], capsys)
    error_line(rc, err, cfg, "missing required key 'outpath'")


@pytest.mark.parametrize("stage", STAGES)
def test_missing_required_nested_key(stage, stage_configs, capsys):
    cfg = stage_configs[stage]
    key = "target_dataset" if stage == "inference" else "dataset.path"
    if stage == "inference":
        _without(cfg, "target_dataset")
    else:
        cfg.write_text(cfg.read_text().replace("dataset: {path:", "dataset: {other:"))
    rc, _, err = _run(stage, ["-c", cfg], capsys)
    error_line(rc, err, cfg, f"missing required key '{key}'")


@pytest.mark.parametrize("stage, key", [("baseline", "dataset.batch_size"), ("init", "dataset.batch_size"),
                                        ("inference", "batch_size"), ("init", "top_n"),
                                        ("inference", "num_workers")])
def test_wrong_type_from_set(stage, key, stage_configs, capsys):
    cfg = stage_configs[stage]
    rc, _, err = _run(stage, ["-c", cfg, "--set", f"{key}=many"], capsys)
    error_line(rc, err, cfg, f"{key}: must be an integer", "'many'")


@pytest.mark.parametrize("stage", STAGES)
def test_wrong_type_in_file(stage, stage_configs, capsys):
    cfg = stage_configs[stage]
    cfg.write_text(cfg.read_text() + "seed: [1, 2]\n")
    rc, _, err = _run(stage, ["-c", cfg], capsys)
    error_line(rc, err, cfg, "seed: must be an integer")


def test_wrong_types_of_stage_specific_keys(stage_configs, capsys):
    cfg = stage_configs["baseline"]
    rc, _, err = _run("baseline", ["-c", cfg, "--set", "dataset.alphas=[a, b]"], capsys)
    error_line(rc, err, cfg, "dataset.alphas: must be a non-empty list of numbers")
    rc, _, err = _run("baseline", ["-c", cfg, "--set", "forward_batch=0"], capsys)
    error_line(rc, err, cfg, "forward_batch: must be an integer >= 1")
    cfg = stage_configs["inference"]
    rc, _, err = _run("inference", ["-c", cfg, "--set", "early_exit=maybe"], capsys)
    error_line(rc, err, cfg, "early_exit: must be true or false")
    cfg = stage_configs["init"]
    rc, _, err = _run("init", ["-c", cfg, "--set", "num_workers=-1"], capsys)
    error_line(rc, err, cfg, "num_workers: must be >= 0")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("item, message", [("foo", "--set 'foo': expected key=value"),
                                           ("=3", "--set '=3': empty key")])
def test_bad_set_syntax(stage, item, message, stage_configs, capsys):
    rc, _, err = _run(stage, ["-c", stage_configs[stage], "--set", item], capsys)
    error_line(rc, err, message)


@pytest.mark.parametrize("stage", STAGES)
def test_unknown_device(stage, stage_configs, capsys):
    cfg = stage_configs[stage]
    rc, _, err = _run(stage, ["-c", cfg, "--set", "device=gpu"], capsys)
    error_line(rc, err, cfg, "device: must be auto, cpu, cuda or cuda:N", "'gpu'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("stage", STAGES)
def test_cuda_requested_without_cuda(stage, stage_configs, capsys):
    cfg = stage_configs[stage]
    if stage == "inference":  # the observer file is read first: give it one
        (cfg.parent / "out").mkdir(exist_ok=True)
        (cfg.parent / "out" / "observer.json").write_text('{"selected_layers": ["body.0"]}')
    rc, _, err = _run(stage, ["-c", cfg, "--set", "device=cuda:1"], capsys)
    error_line(rc, err, cfg, "device:", "CUDA is not available", "device: cpu")


@pytest.mark.parametrize("stage", STAGES)
def test_yaml_syntax_error(stage, tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("device: cpu\ndataset: {path: x, batch_size: 2\noutpath: y\n")
    rc, _, err = _run(stage, ["-c", cfg], capsys)
    error_line(rc, err, cfg, "not valid YAML", "(line ")


@pytest.mark.parametrize("stage", STAGES)
def test_missing_config_file(stage, tmp_path, capsys):
    rc, _, err = _run(stage, ["-c", tmp_path / "nope.yaml"], capsys)
    error_line(rc, err, f"config file not found: {tmp_path / 'nope.yaml'}")


@pytest.mark.parametrize("content, message", [
    ("- a\n- b\n", "expected a mapping of keys at the top level"),
    (b"device: caf\xe9\n", "not UTF-8 text"),
    ("", "missing required key 'face_recognition_config'"),
])
def test_config_file_not_a_mapping_or_not_text(content, message, tmp_path, capsys):
    cfg = tmp_path / "odd.yaml"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, _, err = _run("baseline", ["-c", cfg], capsys)
    error_line(rc, err, cfg, message)


@pytest.mark.parametrize("stage", STAGES)
def test_missing_fr_config_names_the_stage_key(stage, stage_configs, tmp_path, capsys):
    cfg = stage_configs[stage]
    if stage == "inference":
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "observer.json").write_text('{"selected_layers": ["body.0"]}')
    rc, _, err = _run(stage, ["-c", cfg, "--set", f"face_recognition_config={tmp_path}/fr/none.yaml"], capsys)
    error_line(rc, err, cfg, "face_recognition_config", f"{tmp_path}/fr/none.yaml")


def test_bad_fr_config_names_the_fr_file(stage_configs, tmp_path, capsys):
    fr = tmp_path / "fr_bad.yaml"
    fr.write_text("model: {arch: adaface_ir_18, weights: random}\npreprocess: {channels: [0, 0, 1]}\n")
    rc, _, err = _run("baseline", ["-c", stage_configs["baseline"], "--set", f"face_recognition_config={fr}"],
                      capsys)
    error_line(rc, err, fr, "preprocess.channels")
    fr.write_text("model: {weights: random}\n")
    rc, _, err = _run("baseline", ["-c", stage_configs["baseline"], "--set", f"face_recognition_config={fr}"],
                      capsys)
    error_line(rc, err, fr, "missing required key 'model.arch'")


def test_fr_overrides_reach_the_fr_config(stage_configs, tmp_path, capsys):
    rc, _, err = _run("baseline", ["-c", stage_configs["baseline"],
                                   "--set", "fr_overrides=[preprocess.size=64]"], capsys)
    # AdaFace's output layer needs 112 px: refused up front, naming the FR config and the key
    error_line(rc, err, "fr.yaml: adaface_ir_18 cannot take inputs of preprocess.size [64, 64]")


def test_image_size_and_mpx_checked_against_the_model(stage_configs, capsys):
    cfg = stage_configs["baseline"]
    rc, _, err = _run("baseline", ["-c", cfg, "--set", "dataset.image_size=96"], capsys)
    error_line(rc, err, cfg, "dataset.image_size is 96", "[112, 112]")
    rc, _, err = _run("baseline", ["-c", cfg, "--set", "dataset.mpx=113"], capsys)
    error_line(rc, err, cfg, "dataset.mpx", "113", "[112, 112]")
    assert not (cfg.parent / "out" / "labels.csv").exists()


def test_unknown_key_stops_the_run_with_the_closest_key(stage_configs, capsys):
    """A typo in --set or in the file is an error before any work (issue 10, class 12); keys of
    your own live under ``extra:``."""
    cfg = stage_configs["baseline"]
    rc, _, err = _run("baseline", ["-c", cfg, "--set", "dataset.batchsize=5"], capsys)
    error_line(rc, err, f"{cfg}: unknown key 'dataset.batchsize' (did you mean 'dataset.batch_size'?)",
               "extra:")
    typo = cfg.parent / "typo.yaml"
    typo.write_text(stage_configs["init"].read_text() + "\ntop_nn: 3\n")
    rc, _, err = _run("init", ["-c", typo], capsys)
    error_line(rc, err, f"{typo}: unknown key 'top_nn'")
    rc, _, err = _run("baseline", ["-c", cfg, "--set", "extra={note: mine, run: 7}",
                                   "--set", f"dataset.path={cfg.parent}/nowhere"], capsys)
    error_line(rc, err, f"image folder not found: {cfg.parent}/nowhere")  # extra: accepted


# -- froq/core/config.py pieces ----------------------------------------------------------------------

def test_parse_overrides_values_are_yaml():
    out = parse_overrides(["a.b=1", "c=[1, 2]", "d=true", "e=", "f=x=y", " g =null", "h={k: 1}",
                           "i=[unclosed"])
    assert out == {"a.b": 1, "c": [1, 2], "d": True, "e": "", "f": "x=y", "g": None, "h": {"k": 1},
                   "i": "[unclosed"}
    with pytest.raises(FroqError, match="expected key=value"):
        parse_overrides(["novalue"])


def test_load_config_overrides_defaults_and_source(tmp_path):
    schema = {"a.b": Key("int", default=3), "a.c": Key("str"), "l": Key(float_list, default=[1.0]),
              "n": Key(positive_int, default=1), "f": Key(int_or_auto, default="auto")}
    path = tmp_path / "c.yaml"
    path.write_text("a: {c: hello}\nl: 0.5\n")
    cfg = load_config(path, schema, ["a.b=7", "n=4", "f=AUTO"])
    assert cfg["a"] == {"b": 7, "c": "hello"} and cfg["l"] == [0.5] and cfg["n"] == 4
    assert cfg["f"] == "auto" and cfg["_source"] == str(path)
    cfg = load_config(path, schema)
    assert cfg["a"]["b"] == 3 and cfg["f"] == "auto"


def test_validate_messages_name_source_and_key():
    schema = {"x.y": Key("float", default=1.0, minimum=0.5), "z": Key("str", choices=["p", "q"]),
              "b": Key("bool", default=False)}
    with pytest.raises(FroqError, match=r"^cfg.yaml: x.y: must be >= 0.5 \(got 0.1\)$"):
        validate({"x": {"y": 0.1}, "z": "p"}, schema, "cfg.yaml")
    with pytest.raises(FroqError, match=r"^cfg.yaml: z: must be one of p, q \(got 'r'\)$"):
        validate({"z": "r"}, schema, "cfg.yaml")
    with pytest.raises(FroqError, match=r"^cfg.yaml: b: must be true or false"):
        validate({"z": "p", "b": "yes"}, schema, "cfg.yaml")
    with pytest.raises(FroqError, match=r"^cfg.yaml: x.y: must be a number \(got True\)"):
        validate({"z": "p", "x": {"y": True}}, schema, "cfg.yaml")
    with pytest.raises(FroqError, match=r"^cfg.yaml: z: must be a non-empty string"):
        validate({"z": ""}, schema, "cfg.yaml")
    with pytest.raises(FroqError, match=r"^cfg.yaml: unknown key 'zz' \(did you mean 'z'\?\)"):
        validate({"z": "p", "zz": 1}, schema, "cfg.yaml", allow_extra=False)


def test_validate_unknown_keys_error_or_warn(caplog):
    schema = {"dataset.path": Key("str"), "free": Key("dict", default={})}
    cfg = {"dataset": {"path": "x", "pth": "y"}, "free": {"any": 1}, "extra": {"mine": 2}, "_source": "s"}
    with pytest.raises(FroqError, match=r"^cfg.yaml: unknown key 'dataset.pth' \(did you mean 'dataset.path'\?\)"):
        validate(dict(cfg), schema, "cfg.yaml")
    with caplog.at_level(logging.WARNING, logger="froq.core.config"):
        validate(cfg, schema, "cfg.yaml", allow_extra=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["cfg.yaml: unknown key 'dataset.pth' ignored (did you mean 'dataset.path'?)"]
    with pytest.raises(FroqError, match=r"^cfg.yaml: seed: must fit in 64 bits"):
        validate({"seed": 2**70}, {"seed": Key("int", default=0)}, "cfg.yaml")


def test_read_yaml_errors(tmp_path):
    with pytest.raises(FroqError, match="config file not found"):
        read_yaml(tmp_path)  # a folder is not a config file
    bad = tmp_path / "tab.yaml"
    bad.write_text("a:\n\tb: 1\n")
    with pytest.raises(FroqError, match=r"tab.yaml: not valid YAML \(line 2\)"):
        read_yaml(bad)


def test_the_scoring_stages_refuse_a_batch_size_of_zero():
    from methods.score import SCHEMA as SCORE
    from observer.inference import SCHEMA as INFERENCE

    given = {"face_recognition_config": "fr.yaml", "target_dataset": "faces", "observer_data": "o.json",
             "outpath": "q.csv", "batch_size": 0}
    for schema in (SCORE, INFERENCE):
        with pytest.raises(FroqError, match="batch_size: must be an integer >= 1"):
            validate({k: v for k, v in given.items() if k in schema}, schema, "stage.yaml")
