"""benchmarks/ablation.py ``qualities``: finished quality CSVs join the variants, checked first."""

from __future__ import annotations

import importlib.util

import pytest

from froq.core.errors import FroqError
from conftest import REPO


def load_ablation():
    spec = importlib.util.spec_from_file_location("bench_ablation", REPO / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extra_qualities_checked(tmp_path):
    ablation = load_ablation()
    csv = tmp_path / "teacher.csv"
    csv.write_text("path,quality\na/1.png,0.5\n", encoding="utf-8")
    variants = {"paper": "p.csv", "plus": "q.csv"}
    assert ablation.extra_qualities({"teacher": str(csv)}, variants) == {"teacher": str(csv)}
    assert ablation.extra_qualities({}, variants) == {}
    with pytest.raises(FroqError, match="qualities.plus: the name of a variant"):
        ablation.extra_qualities({"plus": str(csv)}, variants)
    with pytest.raises(FroqError, match="qualities.teacher: .*missing.csv is not a file"):
        ablation.extra_qualities({"teacher": str(tmp_path / "missing.csv")}, variants)
