"""One schema per setting (issue 28): the label settings and the evaluation settings are each declared
once, and every entry point (stage main, froq CLI, API, table, comparison method) computes with
the same defaults. A second declaration with another default fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

import baselineFIQA.main as labels_stage
import froq.api as api
import froq.table as table
import methods.aux_fiqa as aux_fiqa
from baselineFIQA.perturbations import default_mpx
from baselineFIQA.settings import LABEL_OPTIONS, STAGE_KEYS, compute_arguments, label_options
from evaluation import settings as evaluation
from froq.commands import main as froq_main
from froq.core.errors import FroqError
from methods import resolve_options
from test_label_options import faces  # noqa: F401 (fixture)
from test_observer import SIZE, tiny_fr


class Called(BaseException):
    """Raised by the stand-in of compute_pseudo_labels with the keyword arguments it got."""


def stand_in(fr, root, **kwargs):
    raise Called(kwargs)


def captured(monkeypatch, module, call) -> dict:
    """The label keyword arguments ``call()`` passes to ``module.compute_pseudo_labels``."""
    monkeypatch.setattr(module, "compute_pseudo_labels", stand_in)
    with pytest.raises(Called) as info:
        call()
    kwargs = dict(info.value.args[0])
    return {k: v for k, v in kwargs.items() if k in compute_arguments(LABEL_OPTIONS)}


def test_label_options_are_declared_once():
    for name, key in STAGE_KEYS.items():
        if name != "seed":  # the stage's seed is its common key (same default)
            assert labels_stage.SCHEMA[key] is LABEL_OPTIONS[name], key
    assert labels_stage.SCHEMA["seed"].default == LABEL_OPTIONS["seed"].default
    assert aux_fiqa.OPTIONS is LABEL_OPTIONS
    with pytest.raises(FroqError, match="labels_options: unknown key 'mpxx'.*'mpx'"):
        table.parse_models([{"name": "m", "fr_config": "x.yaml", "labels_options": {"mpxx": 3}}], "t.yaml")
    with pytest.raises(FroqError, match="component_weights: must be three numbers"):
        table.parse_models([{"name": "m", "fr_config": "x.yaml", "labels_options": {"component_weights": [1, 1]}}],
                           "t.yaml")


def test_every_entry_point_computes_labels_with_the_same_defaults(faces, tmp_path, monkeypatch):  # noqa: F811
    fr_yaml = tmp_path / "fr.yaml"
    fr_yaml.write_text(f"model: {{arch: froq_test_tiny, weights: random}}\n"
                       f"preprocess: {{size: {SIZE}, mean: 0.5, std: 0.5, channels: [2, 1, 0]}}\n")
    cfg = tmp_path / "baseline.yaml"  # no label key: every default
    cfg.write_text(f"face_recognition_config: {fr_yaml}\ndevice: cpu\ndataset: {{path: {faces}}}\n"
                   f"outpath: {tmp_path}/l.csv\n")
    monkeypatch.setenv("FROQ_CACHE", "off")
    fr = tiny_fr()
    got = {
        "stage main": captured(monkeypatch, labels_stage, lambda: labels_stage.main(["-c", str(cfg)])),
        "froq CLI": captured(monkeypatch, labels_stage, lambda: froq_main(["labels", "-c", str(cfg)])),
        "API": captured(monkeypatch, api, lambda: api.pseudo_labels(fr_yaml, faces, device="cpu")),
        "table": captured(monkeypatch, api, lambda: table.labels_for(
            table.ModelSpec("m", str(fr_yaml), str(faces), None, 10, {}, ""), fr, tmp_path / "t",
            {"seed": 0, "batch_size": 4, "_source": "t.yaml"}, table.Progress())),
        "aux_fiqa": captured(monkeypatch, aux_fiqa, lambda: aux_fiqa.score(
            fr, faces, options=resolve_options("aux_fiqa", {}))),
    }
    want = compute_arguments(label_options({}, "defaults") | {"mpx": default_mpx(SIZE)})
    for where, kwargs in got.items():
        assert kwargs == want, where


def test_evaluation_settings_are_declared_once(tmp_path):
    from evaluation.main import SCHEMA as stage_schema

    assert stage_schema is evaluation.SCHEMA
    assert table.SCHEMA["discard_limits"] is evaluation.SCHEMA["discard_limit"]
    assert evaluation.DISCARD_LIMITS[0] == 0.3  # the primary limit: the spec's pAUC over [0, 0.3]
    spec = table.ModelSpec("m", "fr.yaml", None, None, 10, {}, "")
    tcfg = {"evaluation": {}, "discard_limits": table.SCHEMA["discard_limits"].default, "device": "cpu",
            "batch_size": 8, "num_workers": 0, "_source": "t.yaml"}
    ecfg = table.evaluation_config(spec, [({"name": "b", "type": "lfw_pairs"}, {})], tmp_path, tcfg)
    full = evaluation.evaluation_settings({"face_recognition_configs": [], "benchmarks": [], "outdir": "o"}, "x")
    for key in ("discard_limit", "bootstrap", "fmr", "threshold", "confidence", "pair_quality"):
        assert ecfg[key] == full[key] == evaluation.SCHEMA[key].default, key
    assert full["bootstrap"] == 1000


def test_no_evaluation_or_label_key_is_re_defaulted_in_code():
    """``cfg.get("key", default)`` on a schema key would bring back a second default."""
    import re

    keys = set(evaluation.SCHEMA) | set(LABEL_OPTIONS)
    pattern = re.compile(r"""(?:cfg|options|opts)\.get\(\s*["']([a-z_]+)["']\s*,""")
    repo = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted(repo.glob("*/*.py")):
        if path.parts[-2] in ("tests", ".venv"):
            continue
        for m in pattern.finditer(path.read_text(encoding="utf-8")):
            if m.group(1) in keys:
                found.append(f"{path.relative_to(repo)}: {m.group(0)}")
    assert not found, found
