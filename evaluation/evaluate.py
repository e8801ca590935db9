"""The evaluation run: benchmarks × FR models × quality methods → EDC metrics and curves.

``run_evaluation(cfg)`` takes the validated config of ``evaluation/main.py`` and writes
``results.json``, ``run.json``, ``table.md``, ``table.csv``, ``curves.csv``, ``scores/`` and the
EDC plots into ``cfg['outdir']``; it returns the results mapping.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from froq.core.errors import FroqError
from froq.core.io import write_json

from evaluation import edc, reporting
from evaluation.edc import fmr_key
from evaluation.comparison_scores import protocol_scores, read_scores_csv, write_scores_csv
from evaluation.pair_protocols import (PairProtocol, read_insightface_bin, read_lfw_pairs, read_pairs_csv,
                                       read_xqlfw)
from evaluation.quality_methods import (check_template, image_qualities, method_specs,
                                        random_image_qualities, resolve_sources)

log = logging.getLogger(__name__)

BENCHMARK_TYPES = {
    "lfw_pairs": ("images", "pairs"),
    "xqlfw": (),
    "insightface_bin": ("path",),
    "csv": ("images", "pairs"),
}
_COMMON_KEYS = {"name", "type", "scores", "qualities"}
_OPTIONAL_KEYS = {"lfw_pairs": set(), "xqlfw": {"root", "images", "pairs"}, "insightface_bin": {"images"},
                  "csv": {"allow_outside_root"}}


@dataclass
class ModelEntry:
    """One FR model of the run: its result name and FR config (None when scores come from files)."""

    name: str
    config: str | None


@dataclass
class BenchmarkEntry:
    """One benchmark of the run, as configured."""

    name: str
    type: str
    options: dict
    scores: str | None = None
    qualities: dict = field(default_factory=dict)


def safe_name(name: str) -> str:
    """A name usable in file names (anything but letters, digits, ``._-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def parse_models(entries, source: str) -> list[ModelEntry]:
    """``face_recognition_configs`` → ``ModelEntry`` list. An entry is a config path, or a mapping
    ``{config: PATH, name: NAME}`` (``name`` defaults to the config's architecture; ``{name: X}``
    alone means every benchmark gives ``scores`` files for model X). Names must be unique."""
    from face_recognition_model.loading import load_fr_config

    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise FroqError(f"{source}: face_recognition_configs: expected a non-empty list of FR config paths")
    out: list[ModelEntry] = []
    for i, e in enumerate(entries):
        where = f"{source}: face_recognition_configs[{i}]"
        if isinstance(e, str):
            e = {"config": e}
        if not isinstance(e, Mapping) or not set(e) <= {"config", "name"} or not e:
            raise FroqError(f"{where}: expected a config path or a mapping with 'config' and/or 'name'")
        config = e.get("config")
        name = e.get("name")
        if config is None and name is None:
            raise FroqError(f"{where}: give 'config' (an FR config) and/or 'name'")
        if name is None:
            name = load_fr_config(config)["model"]["arch"]
        out.append(ModelEntry(name=str(name), config=str(config) if config is not None else None))
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FroqError(f"{source}: face_recognition_configs: several models are named {', '.join(dup)}; "
                        "give each a distinct 'name' ({config: PATH, name: NAME})")
    return out


def parse_benchmarks(entries, source: str) -> list[BenchmarkEntry]:
    """``benchmarks`` list → ``BenchmarkEntry`` list, checking names, types and keys."""
    if not isinstance(entries, list) or not entries:
        raise FroqError(f"{source}: benchmarks: expected a non-empty list of benchmark entries")
    out: list[BenchmarkEntry] = []
    for i, e in enumerate(entries):
        where = f"{source}: benchmarks[{i}]"
        if not isinstance(e, Mapping):
            raise FroqError(f"{where}: expected a mapping like {{name: lfw, type: lfw_pairs, images: DIR, pairs: FILE}}")
        name, kind = e.get("name"), e.get("type")
        if not isinstance(name, str) or not name:
            raise FroqError(f"{where}: missing 'name'")
        if kind not in BENCHMARK_TYPES:
            raise FroqError(f"{where} ({name}): type must be one of {', '.join(BENCHMARK_TYPES)} (got {kind!r})")
        allowed = _COMMON_KEYS | set(BENCHMARK_TYPES[kind]) | _OPTIONAL_KEYS[kind]
        unknown = sorted(set(e) - allowed)
        if unknown:
            raise FroqError(f"{where} ({name}): unknown key(s) {', '.join(unknown)} for type {kind} "
                            f"(allowed: {', '.join(sorted(allowed))})")
        missing = [k for k in BENCHMARK_TYPES[kind] if not e.get(k)]
        if missing:
            raise FroqError(f"{where} ({name}): type {kind} needs {', '.join(missing)}")
        if kind == "xqlfw" and not e.get("root") and not (e.get("images") and e.get("pairs")):
            raise FroqError(f"{where} ({name}): type xqlfw needs 'root' or both 'images' and 'pairs'")
        scores = e.get("scores")
        if scores is not None:
            check_template(scores, f"{where}.scores")
        qualities = e.get("qualities") or {}
        if not isinstance(qualities, Mapping):
            raise FroqError(f"{where}.qualities: expected a mapping method -> CSV path template")
        options = {k: v for k, v in e.items() if k not in _COMMON_KEYS}
        out.append(BenchmarkEntry(name=name, type=kind, options=options, scores=scores, qualities=dict(qualities)))
    names = [b.name for b in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FroqError(f"{source}: benchmarks: duplicate name(s) {', '.join(dup)}")
    return out


def load_protocol(entry: BenchmarkEntry, outdir: Path) -> PairProtocol:
    """Read a benchmark's protocol (an insightface ``.bin`` is exported to its ``images`` folder,
    default ``<outdir>/bin_images/<name>``)."""
    o = entry.options
    if entry.type == "lfw_pairs":
        return read_lfw_pairs(o["images"], o["pairs"], name=entry.name)
    if entry.type == "xqlfw":
        return read_xqlfw(o.get("root"), o.get("images"), o.get("pairs"), name=entry.name)
    if entry.type == "csv":
        return read_pairs_csv(o["images"], o["pairs"], name=entry.name,
                              allow_outside_root=bool(o.get("allow_outside_root", False)))
    export = o.get("images") or outdir / "bin_images" / safe_name(entry.name)
    return read_insightface_bin(o["path"], export, name=entry.name)


@dataclass
class CurveRows:
    """Rows of ``curves.csv``: (benchmark, model, fmr, method, discard_fraction, fnmr)."""

    rows: list = field(default_factory=list)

    def add(self, bench: str, model: str, fmr: float, method: str, x, y) -> None:
        for a, b in zip(x, y):
            self.rows.append((bench, model, fmr, method, float(a), float(b)))


def _curve_points(curve: edc.EdcCurve, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The step points of ``curve`` within ``[0, limit]`` plus the value at ``limit``."""
    x, y = curve.discard_fractions, curve.fnmr
    keep = x <= limit
    x, y = x[keep], y[keep]
    if x[-1] < limit:
        x, y = np.append(x, limit), np.append(y, y[-1])
    return x, y


def _mean_curve(curves: list[edc.EdcCurve], limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of step curves over the same n pairs, at every discard count up to ``limit`` (exact:
    all points are integer counts)."""
    n = curves[0].n
    k = np.arange(0, int(np.floor(limit * n + 1e-9)) + 1)
    y = np.mean([c.fnmr_at_count(k) for c in curves], axis=0)
    x = k / n
    if x[-1] < limit:
        x, y = np.append(x, limit), np.append(y, y[-1])
    return x, y


def evaluate_pairs(scores: np.ndarray, genuine: np.ndarray, pair_q: Mapping[str, np.ndarray],
                   random_q: list[np.ndarray], fmrs, limit: float) -> tuple[dict, dict]:
    """Metrics of every method for one benchmark × model.

    In: all pair scores, genuine flags, per-method genuine-pair qualities (user methods), the
    random reference's genuine-pair qualities (one array per seed), FMR targets and discard limit.
    Out: ``(metrics {method: {fmr_key: dict}}, curves {fmr_key: {method: (x, y)}})``; ``perfect``
    and ``random`` are included.
    """
    gen = scores[genuine]
    imp = scores[~genuine]
    metrics: dict[str, dict] = {m: {} for m in list(pair_q) + ["random", "perfect"]}
    curves: dict[str, dict] = {}
    for fmr in fmrs:
        th = edc.fmr_threshold(imp, fmr)
        common = {"fmr": fmr, "threshold": th.threshold, "n_impostor": th.n_impostor,
                  "n_impostor_accepted": th.n_accepted, "fmr_achieved": th.fmr_achieved,
                  "discard_limit": limit}
        key = fmr_key(fmr)
        curves[key] = {}
        for method, q in list(pair_q.items()) + [("perfect", gen)]:
            res = edc.evaluate_edc(gen, th.threshold, q, limit)
            metrics[method][key] = {**res.metrics(), **common}
            curves[key][method] = _curve_points(res.curve, limit)
        runs = [edc.evaluate_edc(gen, th.threshold, q, limit) for q in random_q]
        paucs = np.array([r.pauc for r in runs])
        norms = np.array([r.pauc_norm for r in runs])
        metrics["random"][key] = {**runs[0].metrics(), "pauc": float(paucs.mean()),
                                  "pauc_norm": float(norms.mean()), "pauc_std": float(paucs.std()),
                                  "pauc_norm_std": float(norms.std()), "seeds": len(runs), **common}
        curves[key]["random"] = _mean_curve([r.curve for r in runs], limit)
    return metrics, curves


def _genuine_pair_quality(img_q: np.ndarray, pairs: np.ndarray, rule: str) -> np.ndarray:
    return edc.pair_quality(img_q[pairs[:, 0]], img_q[pairs[:, 1]], rule)


def run_evaluation(cfg: dict) -> dict:
    """Run the configured evaluation (see ``evaluation/main.py``) and write every output.

    Out: ``{benchmark: {model: {method: metrics}}}`` as written to ``results.json``.
    """

    source = cfg.get("_source", "evaluation config")
    outdir = Path(cfg["outdir"])
    models = parse_models(cfg["face_recognition_configs"], source)
    benches = parse_benchmarks(cfg["benchmarks"], source)
    specs = {b.name: method_specs(cfg.get("qualities"), b.qualities, f"{source}: qualities",
                                  f"{source}: benchmarks[{b.name}].qualities") for b in benches}
    for m in models:
        if m.config is None:
            lacking = [b.name for b in benches if not b.scores]
            if lacking:
                raise FroqError(f"{source}: model '{m.name}' has no FR config, so benchmark(s) "
                                f"{', '.join(lacking)} need a 'scores' CSV")
    fmrs = cfg["fmr"]
    limit = cfg["discard_limit"]
    rule = cfg["pair_quality"]
    seeds = list(range(cfg["random_seeds"]))
    cache_dir = (Path(cfg.get("cache_dir") or outdir / "cache")) if cfg["cache"] else None

    protocols: dict[str, PairProtocol] = {}
    results: dict = {b.name: {} for b in benches}
    curves = CurveRows()
    run_info: dict = {"config": {k: v for k, v in cfg.items() if not str(k).startswith("_")},
                      "config_file": source, "benchmarks": {}, "models": {}}
    started = time.time()

    for model in models:
        fr = None
        for bench in benches:
            if bench.name not in protocols:
                protocols[bench.name] = load_protocol(bench, outdir)
                p = protocols[bench.name]
                log.info("%s", p.summary())
                run_info["benchmarks"][bench.name] = {
                    "source": p.source, "images_dir": str(p.image_root), "n_pairs": int(len(p.genuine)),
                    "n_genuine": p.n_genuine, "n_impostor": p.n_impostor, "n_images": len(p.images)}
            protocol = protocols[bench.name]
            # qualities first: a missing CSV or image fails before any FR work
            gen_pairs = protocol.pairs[protocol.genuine]
            pair_q = {}
            for src in resolve_sources(specs[bench.name], bench.name, model.name):
                img_q = image_qualities(src, protocol, cfg["missing_quality"])
                pair_q[src.method] = _genuine_pair_quality(img_q, gen_pairs, rule)
            if bench.scores:
                score_file = bench.scores.format(benchmark=bench.name, model=model.name)
                scores = read_scores_csv(score_file, protocol)
                run_info["models"].setdefault(model.name, {})[f"scores:{bench.name}"] = score_file
            else:
                if fr is None:
                    from face_recognition_model.loading import load_fr_model
                    from froq.core.device import resolve_device

                    fr = load_fr_model(model.config, resolve_device(cfg["device"]))
                    run_info["models"].setdefault(model.name, {}).update(fr.identity())
                scores = protocol_scores(fr, protocol, cache_dir, cfg["batch_size"], cfg["num_workers"])
            if not np.all(np.isfinite(scores)):
                raise FroqError(f"{bench.name}/{model.name}: non-finite comparison scores")
            write_scores_csv(outdir / "scores" / f"{safe_name(bench.name)}_{safe_name(model.name)}.csv",
                             protocol, scores)
            random_q = [_genuine_pair_quality(random_image_qualities(len(protocol.images), s), gen_pairs, rule)
                        for s in seeds]
            metrics, bench_curves = evaluate_pairs(scores, protocol.genuine, pair_q, random_q, fmrs, limit)
            primary = fmr_key(fmrs[0])
            results[bench.name][model.name] = {
                m: {**by_fmr[primary], "by_fmr": by_fmr} for m, by_fmr in metrics.items()}
            for key, per_method in bench_curves.items():
                for method, (x, y) in per_method.items():
                    curves.add(bench.name, model.name, float(key), method, x, y)
            first = results[bench.name][model.name]
            log.info("%s / %s @ FMR %s: threshold %.4f (%d of %d impostors above), FNMR(0) %.4f; "
                     "pAUC_norm %s", bench.name, model.name, primary, first["perfect"]["threshold"],
                     first["perfect"]["n_impostor_accepted"], first["perfect"]["n_impostor"],
                     first["perfect"]["fnmr0"],
                     ", ".join(f"{m}={v['pauc_norm']:.3f}" for m, v in first.items()))
            if cfg["plots"]:
                for key, per_method in bench_curves.items():
                    suffix = "" if key == primary else f"_fmr{key}"
                    reporting.plot_edc(outdir / f"edc_{safe_name(bench.name)}_{safe_name(model.name)}{suffix}.png",
                                       per_method, bench.name, model.name, float(key), limit)
    run_info["seconds"] = round(time.time() - started, 3)
    method_order = list(dict.fromkeys(m for s in specs.values() for m in s)) + ["random", "perfect"]
    reporting.write_outputs(outdir, results, curves.rows, run_info, [b.name for b in benches],
                            [m.name for m in models], method_order, fmrs, limit)
    return results
