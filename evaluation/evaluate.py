"""The evaluation run: benchmarks × FR models × quality methods → EDC metrics and curves.

``run_evaluation(cfg)`` takes the validated config of ``evaluation/main.py`` and writes
``results.json``, ``run.json``, ``table.md``, ``table.csv``, ``table_long.csv``, ``curves.csv``,
``scores/``, ``protocols/`` (pair lists of generated protocols) and the EDC plots into
``cfg['outdir']``; it returns the results mapping. Keys added after the first release (conventions,
bootstrap, several discard limits) are read with their defaults, so a hand-built ``cfg`` without
them still runs.
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
from froq.core.io import sha256_file, write_csv

from evaluation import bootstrap, edc, edc_conventions, reporting, streaming
from evaluation.edc import fmr_key
from evaluation.settings import as_limits, evaluation_settings
from evaluation.comparison_scores import (protocol_pair_quality, protocol_pair_scores, read_scores_csv,
                                         streamed_pair_scores, write_scores_csv, write_template_scores_csv)
from evaluation.ijbc import TemplateProtocol
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
    "identity_folders": ("images",),
    "ijbc": ("root",),
    "adience": ("root",),
}
_COMMON_KEYS = {"name", "type", "scores", "qualities"}
_OPTIONAL_KEYS = {"lfw_pairs": set(), "xqlfw": {"root", "images", "pairs"}, "insightface_bin": {"images"},
                  "csv": {"allow_outside_root", "identity"},
                  "identity_folders": {"impostors", "seed", "max_images_per_identity"},
                  "ijbc": {"aligned", "template_quality", "flip", "normalise_images", "detector_weight"},
                  "adience": {"images", "identity", "impostors", "seed", "missing_images"}}


@dataclass
class ModelEntry:
    """One FR model of the run: its result name and FR config (None when scores come from files)."""

    name: str
    config: str | None
    named: bool = True


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


#: architectures that are loaders for any network file: a model is then named after its FR config
GENERIC_ARCHS = {"onnx"}


def _default_name(config: str, arch: str) -> str:
    return Path(config).stem if arch in GENERIC_ARCHS else arch


def parse_models(entries, source: str) -> list[ModelEntry]:
    """``face_recognition_configs`` → ``ModelEntry`` list. An entry is a config path, or a mapping
    ``{config: PATH, name: NAME}`` (``{name: X}`` alone means every benchmark gives ``scores`` files
    for model X). Without ``name`` a model is named after its FR config: its architecture (e.g.
    ``adaface_ir_101``), or the config's file stem when the architecture is a generic loader
    (``onnx``) or when two unnamed models share an architecture. Names must be unique."""
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
            arch = load_fr_config(config)["model"]["arch"]
            out.append(ModelEntry(name=_default_name(config, arch), config=str(config), named=False))
            continue
        out.append(ModelEntry(name=str(name), config=str(config) if config is not None else None))
    defaults = [m.name for m in out if not m.named]
    for m in out:
        if not m.named and defaults.count(m.name) > 1:
            m.name = Path(m.config).stem            # same architecture: the configs' file names
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


def _count(value, bench: str, key: str, minimum: int = 1) -> int:
    """A benchmark option that must be an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FroqError(f"benchmark {bench}: {key} must be an integer >= {minimum} (got {value!r})")
    return value


def load_protocol(entry: BenchmarkEntry, outdir: Path) -> PairProtocol:
    """Read a benchmark's protocol (an insightface ``.bin`` is exported to its ``images`` folder,
    default ``<outdir>/bin_images/<name>``)."""
    o = entry.options
    if entry.type == "lfw_pairs":
        return read_lfw_pairs(o["images"], o["pairs"], name=entry.name)
    if entry.type == "xqlfw":
        return read_xqlfw(o.get("root"), o.get("images"), o.get("pairs"), name=entry.name)
    if entry.type == "ijbc":
        from evaluation.ijbc import DEFAULT_OPTIONS, read_ijbc

        if entry.scores:
            raise FroqError(f"benchmark {entry.name}: 'scores' files are not supported for type ijbc "
                            "(template scores are computed from the FR config); remove 'scores'")
        return read_ijbc(o["root"], o.get("aligned") or outdir / "ijbc_aligned" / safe_name(entry.name),
                         name=entry.name, options={k: o[k] for k in DEFAULT_OPTIONS if k in o})
    if entry.type == "adience":
        from evaluation.adience import read_adience

        return read_adience(o["root"], o.get("images"), name=entry.name, identity=o.get("identity", "face_id"),
                            impostors=o.get("impostors", "all"), seed=o.get("seed", 0),
                            missing_images=o.get("missing_images", "error"))
    if entry.type == "csv":
        if o.get("identity", "none") not in ("none", "folder"):
            raise FroqError(f"benchmark {entry.name}: identity must be 'none' or 'folder' (got {o['identity']!r})")
        return read_pairs_csv(o["images"], o["pairs"], name=entry.name,
                              allow_outside_root=bool(o.get("allow_outside_root", False)),
                              identity_from_folder=o.get("identity") == "folder")
    if entry.type == "identity_folders":
        from evaluation.identity_folders import DEFAULT_IMPOSTORS, read_identity_folders

        return read_identity_folders(o["images"], name=entry.name,
                                     impostors=_count(o.get("impostors", DEFAULT_IMPOSTORS), entry.name, "impostors"),
                                     seed=_count(o.get("seed", 0), entry.name, "seed", minimum=0),
                                     max_images_per_identity=None if o.get("max_images_per_identity") is None else
                                     _count(o["max_images_per_identity"], entry.name, "max_images_per_identity",
                                            minimum=2))
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


def _mean_step_curve(curves: list[edc_conventions.ConventionCurve], limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of step curves at the union of their points up to ``limit`` (exact)."""
    x = np.unique(np.concatenate([c.points(limit)[0] for c in curves]))
    y = np.mean([[c.fnmr_at(v) for v in x] for c in curves], axis=0)
    return x, y


@dataclass
class Convention:
    """How the EDC is computed (see ``edc_conventions``): threshold ``fixed``/``per_step``, discard
    over ``mated``/``all`` pairs, pAUC normalisation ``start``/``raw``/``best``. The default is
    ISO/IEC 29794-1 and the paper."""

    threshold: str = "fixed"
    discard_over: str = "mated"
    normalisation: str = "start"

    @property
    def is_iso(self) -> bool:
        return self.threshold == "fixed" and self.discard_over == "mated"

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "discard_over": self.discard_over,
                "normalisation": self.normalisation}


@dataclass
class BootstrapSpec:
    """Bootstrap settings of one benchmark: its clusters, the number of resamples (0 = none), the
    seed and the interval's level."""

    clusters: bootstrap.Clusters
    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def as_dict(self) -> dict:
        return {"unit": self.clusters.unit, "n_clusters": int(self.clusters.n), "resamples": self.resamples,
                "seed": self.seed, "level": self.level}


def _limit_key(limit: float) -> str:
    return format(limit, "g")


def _all_pair_quality(q: np.ndarray, genuine: np.ndarray, method: str) -> np.ndarray:
    """A method's qualities for all pairs: given for all pairs, or for the genuine ones only (the
    impostors then get NaN: fine unless impostor pairs are discarded)."""
    q = np.asarray(q, dtype=np.float64).ravel()
    if len(q) == len(genuine):
        return q
    if len(q) == int(genuine.sum()):
        out = np.full(len(genuine), np.nan)
        out[genuine] = q
        return out
    raise ValueError(f"qualities of '{method}': {len(q)} values for {len(genuine)} pairs "
                     f"({int(genuine.sum())} genuine)")


def _method_metrics(scores, genuine, q_all, fmr, th, limits, conv: Convention):
    """Point metrics of one quality array at one FMR: (metrics by limit, curve points, raw curve)."""
    primary = limits[0]
    if conv.is_iso:
        res = edc.evaluate_edc(scores[genuine], th.threshold, q_all[genuine], primary)
        curve = res.curve
        base = res.metrics()
        by_limit = {}
        for lim in limits:
            area = res.pauc if lim == primary else edc.pauc(curve, lim)
            by_limit[lim] = {"pauc": area,
                             "pauc_norm": area / (lim * res.fnmr0) if res.fnmr0 > 0 else float("nan"),
                             "fnmr_at_limit": float(curve.fnmr_at_count(int(np.floor(lim * curve.n + 1e-9))))}
        return base, by_limit, curve
    if conv.discard_over == "all" and np.isnan(q_all).any():
        raise FroqError("discard_over: all needs the qualities of impostor pairs too")
    curve = edc_conventions.convention_curve(scores, genuine, q_all, fmr, max(limits), conv.threshold,
                                             conv.discard_over)
    gen = scores[genuine]
    base = {"pauc": None, "pauc_norm": None, "fnmr0": curve.fnmr0,
            "n_false_nonmatch": int(np.count_nonzero(gen <= th.threshold)), "n_genuine": int(gen.size)}
    by_limit = {}
    for lim in limits:
        area = curve.pauc(lim)
        by_limit[lim] = {"pauc": area, "pauc_norm": area / (lim * curve.fnmr0) if curve.fnmr0 > 0 else float("nan"),
                         "fnmr_at_limit": curve.fnmr_at(lim)}
    base["pauc"], base["pauc_norm"] = by_limit[primary]["pauc"], by_limit[primary]["pauc_norm"]
    return base, by_limit, curve


def evaluate_pairs(scores: np.ndarray, genuine: np.ndarray, pair_q: Mapping[str, np.ndarray],
                   random_q: list[np.ndarray], fmrs, limit, convention: Convention | None = None,
                   boot: BootstrapSpec | None = None,
                   thresholds: Mapping[float, edc.Threshold] | None = None) -> tuple[dict, dict]:
    """Metrics of every method for one benchmark × model.

    In: all pair scores, genuine flags, per-method pair qualities (user methods; for the genuine
    pairs only, or for all pairs — needed with ``discard_over: all``), the random reference's pair
    qualities (one array per seed, same rule), FMR targets, the discard limit(s) (a number or a list;
    the first is the primary one), the convention (default ISO), optional bootstrap settings and
    optional thresholds fixed beforehand per FMR (the streaming path: the arrays then hold the
    genuine pairs only, which is all the ISO convention reads).
    Out: ``(metrics {method: {fmr_key: dict}}, curves {fmr_key: {method: (x, y)}})``; ``perfect``
    and ``random`` are included. Each metrics dict holds the primary limit's values at its top
    level and every limit's under ``by_limit``; with ``boot``, ``*_ci`` intervals too.
    """
    conv = convention or Convention()
    limits = as_limits(limit)
    primary, top = limits[0], max(limits)
    scores = np.asarray(scores, dtype=np.float64)
    genuine = np.asarray(genuine, dtype=bool)
    imp = scores[~genuine]
    user = {m: _all_pair_quality(q, genuine, m) for m, q in pair_q.items()}
    perfect_q = np.where(genuine, scores, np.inf)          # oracle: genuine pairs by score, impostors last
    rand = [_all_pair_quality(q, genuine, "random") for q in random_q]
    metrics: dict[str, dict] = {m: {} for m in list(user) + ["random", "perfect"]}
    curves: dict[str, dict] = {}
    samples = None
    if boot is not None and boot.resamples > 0:
        started = time.time()
        samples = bootstrap.bootstrap_samples(scores, genuine, {**{m: [q] for m, q in user.items()},
                                                                "random": rand, "perfect": [perfect_q]},
                                              fmrs, limits, boot.clusters, boot.resamples, boot.seed,
                                              conv.threshold, conv.discard_over)
        log.info("bootstrap: %d resamples of %s in %.1f s", boot.resamples, boot.clusters.unit,
                 time.time() - started)
    for fmr in fmrs:
        th = thresholds[fmr] if thresholds is not None else edc.fmr_threshold(imp, fmr)
        common = {"fmr": fmr, "threshold": th.threshold, "n_impostor": th.n_impostor,
                  "n_impostor_accepted": th.n_accepted, "fmr_achieved": th.fmr_achieved,
                  "discard_limit": primary}
        key = fmr_key(fmr)
        curves[key] = {}
        best_base, best_limits, best_curve = _method_metrics(scores, genuine, perfect_q, fmr, th, limits, conv)
        best = {lim: v["pauc"] for lim, v in best_limits.items()}
        per_method = {}
        for method, q in list(user.items()) + [("perfect", perfect_q)]:
            base, by_limit, curve = ((best_base, best_limits, best_curve) if method == "perfect" else
                                     _method_metrics(scores, genuine, q, fmr, th, limits, conv))
            per_method[method] = (base, by_limit)
            curves[key][method] = _curve_points(curve, top) if conv.is_iso else curve.points(top)
        runs = [_method_metrics(scores, genuine, q, fmr, th, limits, conv) for q in rand]
        base = dict(runs[0][0])
        paucs = np.array([r[0]["pauc"] for r in runs])
        norms = np.array([r[0]["pauc_norm"] for r in runs])
        base.update({"pauc": float(paucs.mean()), "pauc_norm": float(norms.mean()), "pauc_std": float(paucs.std()),
                     "pauc_norm_std": float(norms.std()), "seeds": len(runs)})
        rand_limits = {lim: {k: float(np.mean([r[1][lim][k] for r in runs])) for k in runs[0][1][lim]}
                       for lim in limits}
        per_method["random"] = (base, rand_limits)
        curves[key]["random"] = (_mean_curve([r[2] for r in runs], top) if conv.is_iso
                                 else _mean_step_curve([r[2] for r in runs], top))
        for method, (base, by_limit) in per_method.items():
            out_limits = {}
            for lim in limits:
                v = dict(by_limit[lim])
                v["pauc_minus_best"] = v["pauc"] - best[lim]
                v["pauc_value"] = edc_conventions.normalised(v["pauc"], base["fnmr0"], lim, best[lim],
                                                             conv.normalisation)
                if method == "random":
                    v["pauc_value"] = {"start": v["pauc_norm"], "raw": v["pauc"],
                                       "best": v["pauc_minus_best"]}[conv.normalisation]
                if samples is not None:
                    for metric in bootstrap.METRICS + ("pauc_value",):
                        src = {"pauc_value": {"start": "pauc_norm", "raw": "pauc",
                                              "best": "pauc_minus_best"}[conv.normalisation]}.get(metric, metric)
                        v[f"{metric}_ci"] = bootstrap.interval(samples[method][key][lim][src], boot.level)
                out_limits[_limit_key(lim)] = v
            entry = {**base, **out_limits[_limit_key(primary)], **common,
                     "convention": conv.as_dict(), "by_limit": out_limits}
            if samples is not None:
                entry["bootstrap"] = boot.as_dict()
            metrics[method][key] = entry
    return metrics, curves


def _clusters(protocol: PairProtocol, unit: str) -> bootstrap.Clusters:
    """What the bootstrap resamples for ``protocol``: identities when known (and asked), else pairs."""
    identities = None if isinstance(protocol, TemplateProtocol) else protocol.identities
    if unit == "identities" and identities is None:
        raise FroqError(f"{protocol.name}: bootstrap_unit: identities, but this benchmark does not tell the "
                        "identity of its images; use bootstrap_unit: auto or pairs")
    return bootstrap.identity_clusters(None if unit == "pairs" else identities, protocol.pairs)


def _protocol_provenance(protocol: PairProtocol, outdir: Path) -> dict:
    """A generated protocol's pair list → ``<outdir>/protocols/<name>.csv`` (``path1,path2,genuine``,
    usable as a ``csv`` benchmark) unless it is streamed; returns its provenance for run.json (empty
    for file protocols)."""
    if not protocol.info or isinstance(protocol, TemplateProtocol):
        return {}
    if streaming.is_streamed(protocol):
        log.info("%s: %d pairs: the pair list is not written (streamed)", protocol.name, protocol.n_pairs)
        return dict(protocol.info)
    path = outdir / "protocols" / f"{safe_name(protocol.name)}.csv"
    rows = ((protocol.images[i], protocol.images[j], int(g))
            for (i, j), g in zip(protocol.pairs.tolist(), protocol.genuine.tolist()))
    write_csv(path, ["path1", "path2", "genuine"], rows)
    return {**protocol.info, "pair_list": str(path), "pair_list_sha256": sha256_file(path)}


def run_evaluation(cfg: dict) -> dict:
    """Run the configured evaluation (see ``evaluation/main.py``) and write every output.

    Out: ``{benchmark: {model: {method: metrics}}}`` as written to ``results.json``.
    """

    source = cfg.get("_source", "evaluation config")
    cfg = evaluation_settings(cfg, source)  # every default from the one schema
    outdir = Path(cfg["outdir"])
    models = parse_models(cfg["face_recognition_configs"], source)
    benches = parse_benchmarks(cfg["benchmarks"], source)
    specs = {b.name: method_specs(cfg["qualities"], b.qualities, f"{source}: qualities",
                                  f"{source}: benchmarks[{b.name}].qualities") for b in benches}
    for m in models:
        if m.config is None:
            lacking = [b.name for b in benches if not b.scores]
            if lacking:
                raise FroqError(f"{source}: model '{m.name}' has no FR config, so benchmark(s) "
                                f"{', '.join(lacking)} need a 'scores' CSV")
    fmrs = cfg["fmr"]
    limit = as_limits(cfg["discard_limit"])
    rule = cfg["pair_quality"]
    conv = Convention(threshold=cfg["threshold"], discard_over=cfg["discard_over"],
                      normalisation=cfg["pauc_normalisation"])
    resamples = cfg["bootstrap"]
    seeds = list(range(cfg["random_seeds"]))
    cache_dir = (Path(cfg["cache_dir"] or outdir / "cache")) if cfg["cache"] else None

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
                    "source": p.source, "images_dir": str(p.image_root), "n_pairs": p.n_pairs,
                    "n_genuine": p.n_genuine, "n_impostor": p.n_impostor, "n_images": len(p.images),
                    "streamed": streaming.is_streamed(p),
                    **_protocol_provenance(p, outdir)}
            protocol = protocols[bench.name]
            streamed = streaming.is_streamed(protocol)
            if streamed:
                streaming.check_convention(conv.threshold, conv.discard_over, protocol.n_pairs, bench.name)
                if bench.scores:
                    raise FroqError(f"benchmark {bench.name}: {protocol.n_pairs} pairs are evaluated streamed, "
                                    "which reads no 'scores' CSV; remove 'scores' (scores come from the FR config)")
            scored = streaming.genuine_pairs(protocol) if streamed else None  # pairs whose qualities count
            # qualities first: a missing CSV or image fails before any FR work
            pair_q = {}
            for src in resolve_sources(specs[bench.name], bench.name, model.name):
                img_q = image_qualities(src, protocol, cfg["missing_quality"])
                pair_q[src.method] = protocol_pair_quality(protocol, img_q, rule, scored)
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
                get_scores = streamed_pair_scores if streamed else protocol_pair_scores
                scores = get_scores(fr, protocol, cache_dir, cfg["batch_size"], cfg["num_workers"])
            genuine, thresholds = protocol.genuine, None
            if streamed:
                thresholds = streaming.impostor_thresholds(scores.impostor_chunks, scores.n_impostor, fmrs)
                scores, genuine = scores.genuine_scores, np.ones(len(scores.genuine_scores), dtype=bool)
            if not np.all(np.isfinite(scores)):
                raise FroqError(f"{bench.name}/{model.name}: non-finite comparison scores")
            if streamed:
                log.info("%s: %d pairs evaluated streamed: no scores CSV, no bootstrap intervals", bench.name,
                         protocol.n_pairs)
            else:
                (write_template_scores_csv if isinstance(protocol, TemplateProtocol) else write_scores_csv)(
                    outdir / "scores" / f"{safe_name(bench.name)}_{safe_name(model.name)}.csv", protocol, scores)
            random_q = [protocol_pair_quality(protocol, random_image_qualities(len(protocol.images), s), rule, scored)
                        for s in seeds]
            boot = None
            if resamples > 0 and not streamed:
                boot = BootstrapSpec(clusters=_clusters(protocol, cfg["bootstrap_unit"]),
                                     resamples=resamples, seed=cfg["bootstrap_seed"],
                                     level=cfg["confidence"])
            metrics, bench_curves = evaluate_pairs(scores, genuine, pair_q, random_q, fmrs, limit, conv, boot,
                                                   thresholds)
            if streamed and resamples > 0:
                for entry in (e for by_fmr in metrics.values() for e in by_fmr.values()):
                    entry["bootstrap"] = {"not_computed": streaming.BOOTSTRAP_NOTE}
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
                                       per_method, bench.name, model.name, float(key), max(limit))
    run_info["seconds"] = round(time.time() - started, 3)
    method_order = list(dict.fromkeys(m for s in specs.values() for m in s)) + ["random", "perfect"]
    run_info["convention"] = conv.as_dict()
    reporting.write_outputs(outdir, results, curves.rows, run_info, [b.name for b in benches],
                            [m.name for m in models], method_order, fmrs, limit,
                            normalisation=conv.normalisation, show_ci=resamples > 0)
    return results
