"""The paper's table in one command: FR models × benchmarks × FIQA methods → pAUC table + EDC plots.

    froq table -c configs/table/lfw_dlib.yaml [--set outdir=DIR ...]

A table config lists (see ``configs/table/``)::

    outdir: outputs/table_lfw_dlib
    models:                                  # one block of the table per FR model
      - name: dlib
        fr_config: configs/fr/dlib_resnet.yaml
        calibration: data/calibration/dlib   # aligned calibration faces (FROQ's stages 1-2)
        labels: data/calibration/dlib_labels.csv   # optional: existing pseudo-labels (skips stage 1)
    benchmarks:                              # evaluation entries (evaluation/evaluate.py types)
      - {name: lfw, type: lfw_pairs, images: data/lfw_aligned, pairs: data/lfw/pairs.txt,
         download: "LFW from http://vis-www.cs.umass.edu/lfw/ -> align into data/lfw_aligned"}
    methods:                                 # rows of each block; key = the row's name
      froq: {}                               # FROQ (observer calibrated per model, cached)
      froq_plus: {method: froq, observer: {variant: plus}}
      serfiq: {options: {m: 100}}
      embedding_norm: {}
      their_numbers: {csv: "results/{benchmark}_{model}.csv", column: quality}

What it does, top to bottom, for every FR model: check its weights (missing: the model is skipped
with one line saying where to get them); pseudo-labels and observer (cached beside the outputs,
reused when present with the same settings); for every benchmark whose files are present (missing:
skipped with one line, the entry's ``download`` hint) and every method: the per-image qualities of
the benchmark's images (``methods.run_method``, resumable, reused when the CSV's provenance matches);
then one evaluation call per model, all benchmarks and discard limits together
(``evaluation.evaluate.run_evaluation``: its EDC, pAUC, bootstrap intervals, conventions, plots). Last, the table (``table.md``, ``table.csv``, ``table.json``
with provenance) and a summary of which cells were computed, reused or skipped.

Outputs under ``outdir``: ``models/<model>/`` (labels, observers), ``qualities/<benchmark>/<model>/
<method>.csv`` (+ ``.meta.json``, ``.table.json``), ``evaluation/<model>/`` (results, curves, EDC plots),
``table.md``, ``table.csv``, ``table.json``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from baselineFIQA.settings import label_options, resolve_mpx
from evaluation.edc import fmr_key
from evaluation.reporting import Cell, empty_reason, render_markdown
from evaluation.settings import SCHEMA as EVALUATION_SCHEMA, as_limits, evaluation_settings
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, device_name, load_config, positive_int, public, validate
from froq.core.errors import FroqError
from froq.core.io import (atomic_open, fingerprint, output_lock, read_json, sha256_file,
                          write_csv, write_json)
from froq.core.runner import file_identity

log = logging.getLogger("froq.table")


SCHEMA = {
    "outdir": Key("path", help="output folder (qualities, observers, evaluation, table)"),
    "models": Key("list", help="FR models: [{name, fr_config, calibration, labels?, top_n?, labels_options?}]"),
    "benchmarks": Key("list", help="evaluation benchmark entries ({name, type, ...}; optional 'download' hint)"),
    "methods": Key("dict", help="rows: name -> {method?, options?, observer?} or {csv: TEMPLATE, column?}"),
    "discard_limits": EVALUATION_SCHEMA["discard_limit"],  # the evaluation's key, one table per limit
    "evaluation": Key("dict", default={}, help="further evaluation keys (fmr, pair_quality, random_seeds, ...)"),
    "device": Key(device_name, default="auto"),
    "batch_size": Key(positive_int, default=32),
    "num_workers": Key("int", default=0, minimum=0),
    "seed": Key("int", default=0, help="seed of the seeded methods (SER-FIQ, aux_fiqa) unless set per method"),
}

MODEL_KEYS = {"name", "fr_config", "calibration", "labels", "top_n", "labels_options", "download"}
METHOD_KEYS = {"method", "options", "observer", "fr_config"}
CSV_KEYS = {"csv", "column", "higher_is_better"}
TABLE_ONLY_BENCH_KEYS = {"download"}
# evaluation keys the table sets itself
OWN_EVAL_KEYS = {"face_recognition_configs", "benchmarks", "qualities", "outdir", "discard_limit",
                 "device", "batch_size", "num_workers", "cache_dir"}


# ---------------------------------------------------------------- config

@dataclass
class ModelSpec:
    """One FR model of the table: its name, FR config, calibration folder, labels and options."""

    name: str
    fr_config: str
    calibration: str | None
    labels: str | None
    top_n: int
    labels_options: dict
    download: str


@dataclass
class MethodSpec:
    """One row: the registry method (or None for a CSV row), its options and observer options, and
    ``fr_config`` when the method scores with a model of its own (CR-FIQA's network) instead of the
    block's FR model."""

    name: str
    method: str | None
    options: dict = field(default_factory=dict)
    observer: dict = field(default_factory=dict)
    fr_config: str | None = None
    csv: str | None = None
    column: str = "quality"
    higher_is_better: bool = True


def parse_models(entries: list, source: str) -> list[ModelSpec]:
    """``models`` entries → ``ModelSpec`` list; FroqError naming the entry on a bad key or value."""
    out = []
    for i, e in enumerate(entries):
        where = f"{source}: models[{i}]"
        if not isinstance(e, Mapping) or not e.get("name") or not e.get("fr_config"):
            raise FroqError(f"{where}: expected a mapping with 'name' and 'fr_config' (and 'calibration')")
        unknown = sorted(set(e) - MODEL_KEYS)
        if unknown:
            raise FroqError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(MODEL_KEYS))})")
        lopts = dict(e.get("labels_options") or {})
        label_options(lopts, f"{where}.labels_options")  # checked now; defaults filled in labels_for
        top_n = e.get("top_n", 10)
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise FroqError(f"{where}.top_n: must be an integer >= 1 (got {top_n!r})")
        out.append(ModelSpec(str(e["name"]), str(e["fr_config"]), _opt_str(e.get("calibration")),
                             _opt_str(e.get("labels")), top_n, lopts, str(e.get("download") or "")))
    _unique([m.name for m in out], f"{source}: models")
    return out


def parse_methods(entries: Mapping, source: str) -> list[MethodSpec]:
    """``methods`` mapping → ``MethodSpec`` list (registry methods validated, CSV rows checked)."""
    from evaluation.quality_methods import REFERENCE_METHODS, check_template
    from methods import get_method, resolve_options

    out = []
    for name, e in entries.items():
        where = f"{source}: methods.{name}"
        e = {} if e is None else e
        if not isinstance(e, Mapping):
            raise FroqError(f"{where}: expected a mapping ({{}} for the defaults)")
        if name in REFERENCE_METHODS:
            raise FroqError(f"{where}: '{name}' is a built-in reference of the evaluation; choose another name")
        if "csv" in e:
            unknown = sorted(set(e) - CSV_KEYS)
            if unknown:
                raise FroqError(f"{where}: unknown key(s) {', '.join(unknown)} for a CSV row "
                                f"(allowed: {', '.join(sorted(CSV_KEYS))})")
            hib = e.get("higher_is_better", True)
            if not isinstance(hib, bool):
                raise FroqError(f"{where}.higher_is_better: must be true or false")
            out.append(MethodSpec(str(name), None, csv=check_template(e["csv"], f"{where}.csv"),
                                  column=str(e.get("column", "quality")), higher_is_better=hib))
            continue
        unknown = sorted(set(e) - METHOD_KEYS)
        if unknown:
            raise FroqError(f"{where}: unknown key(s) {', '.join(unknown)} "
                            f"(allowed: {', '.join(sorted(METHOD_KEYS | {'csv'}))})")
        method = str(e.get("method", name))
        try:
            get_method(method)
        except FroqError as exc:
            raise FroqError(f"{where}: {exc}") from None
        options = dict(e.get("options") or {})
        if method == "froq" and "observer" in options:
            raise FroqError(f"{where}.options.observer: the table calibrates the observer itself; "
                            "give observer settings under methods.{name}.observer")
        resolve_options(method, options, f"{where}.options")  # fail early on a bad option
        observer = dict(e.get("observer") or {})
        if observer and method != "froq":
            raise FroqError(f"{where}.observer: only a froq row has observer settings")
        if e.get("fr_config") and method == "froq":
            raise FroqError(f"{where}.fr_config: FROQ observes the block's own FR model; remove fr_config")
        out.append(MethodSpec(str(name), method, options, observer, _opt_str(e.get("fr_config"))))
    if not out:
        raise FroqError(f"{source}: methods: give at least one method (e.g. froq: {{}})")
    return out


def parse_benchmark_entries(entries: list, outdir: Path, source: str) -> list[tuple[dict, str]]:
    """``benchmarks`` → ``(evaluation entry, download hint)`` pairs, validated by the evaluation's own
    parser (``download`` is the table's key; an insightface ``.bin`` exports, and IJB-C chips are
    aligned, under ``outdir`` unless the entry says where)."""
    from evaluation.evaluate import parse_benchmarks, safe_name

    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise FroqError(f"{source}: benchmarks[{i}]: expected a mapping like {{name, type, ...}}")
        entry = {k: v for k, v in e.items() if k not in TABLE_ONLY_BENCH_KEYS}
        if "qualities" in entry:
            raise FroqError(f"{source}: benchmarks[{i}].qualities: the table computes the qualities; "
                            "list CSV methods under 'methods' ({csv: TEMPLATE})")
        if entry.get("type") == "insightface_bin" and not entry.get("images"):
            entry["images"] = str(outdir / "bin_images" / safe_name(str(entry.get("name"))))
        if entry.get("type") == "ijbc" and not entry.get("aligned"):  # one chip folder for qualities and evaluation
            entry["aligned"] = str(outdir / "ijbc_aligned" / safe_name(str(entry.get("name"))))
        out.append((entry, str(e.get("download") or "")))
    parse_benchmarks([entry for entry, _ in out], source)
    return out


def _opt_str(value) -> str | None:
    return None if value in (None, "") else str(value)


def _unique(names: list[str], where: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FroqError(f"{where}: duplicate name(s) {', '.join(dup)}")


# ---------------------------------------------------------------- progress

@dataclass
class Progress:
    """What happened to every cell: ``(model, benchmark, method, status, detail)`` with status
    computed | reused | given | skipped."""

    cells: list = field(default_factory=list)

    def add(self, model: str, bench: str, method: str, status: str, detail: str = "") -> None:
        """Record one cell (a skip is also logged as a warning)."""
        self.cells.append((model, bench, method, status, detail))
        if status == "skipped":
            log.warning("skip %s / %s / %s: %s", model, bench, method, detail)

    def counts(self, cells: bool = True) -> dict:
        """``{status: n}`` over the quality cells (``cells``) or over the labels/observer stages."""
        out: dict = {}
        for _, bench, _, status, _ in self.cells:
            if (bench != "-") == cells:
                out[status] = out.get(status, 0) + 1
        return out

    def lines(self) -> list[str]:
        """The end summary: counts, then one line per distinct skip reason (with its cells)."""
        c = self.counts(cells=True)
        s = self.counts(cells=False)
        lines = [f"cells: {c.get('computed', 0)} computed, {c.get('reused', 0)} reused, "
                 f"{c.get('given', 0)} given (CSV), {c.get('skipped', 0)} skipped; labels/observers: "
                 f"{s.get('computed', 0)} computed, {s.get('reused', 0)} reused, {s.get('given', 0)} given"]
        reasons: dict[str, list[str]] = {}
        for model, bench, method, status, detail in self.cells:
            if status == "skipped":
                reasons.setdefault(detail, []).append(f"{model}/{bench}/{method}")
        for detail, cells in reasons.items():
            shown = ", ".join(cells[:3]) + (f" and {len(cells) - 3} more" if len(cells) > 3 else "")
            lines.append(f"skipped {shown}: {detail}")
        return lines


# ---------------------------------------------------------------- cached stages

def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".table.json")


def _cached(path: Path, key: str) -> bool:
    """Whether ``path`` exists and its ``.table.json`` records the settings fingerprint ``key``."""
    side = _sidecar(path)
    if not (path.is_file() and side.is_file()):
        return False
    try:
        return read_json(side).get("fingerprint") == key
    except FroqError:
        return False


def _record(path: Path, key: str, settings: Mapping) -> None:
    write_json(_sidecar(path), {"fingerprint": key, "settings": settings,
                                "written": time.strftime("%Y-%m-%d %H:%M:%S")})


def folder_fingerprint(root: str | Path, paths: list[str] | None = None) -> str:
    """Fingerprint of a folder's images (relative path, size, mtime): changes when any image does.
    In: the folder and optionally the relative paths to consider (default: every image in it)."""
    from froq.core.images import list_images

    root = Path(root)
    paths = list(paths) if paths is not None else list_images(root)
    return fingerprint([(p, file_identity(root / p)) for p in paths])


def labels_for(model: ModelSpec, fr, outdir: Path, cfg: dict, progress: Progress) -> Path:
    """The pseudo-labels CSV of ``model``'s calibration folder: the configured file when it exists
    (reused as given), else computed (stage 1, resumable) into ``models/<name>/labels.csv`` or the
    configured path, and reused on a rerun with the same settings."""
    from froq.api import pseudo_labels

    opts = label_options({"seed": cfg["seed"], **model.labels_options}, f"{cfg['_source']}: {model.name}")
    opts["mpx"] = resolve_mpx(opts["mpx"], fr.preprocess.size)
    path = Path(model.labels) if model.labels else outdir / "models" / model.name / "labels.csv"
    if path.is_file() and not _sidecar(path).is_file():
        progress.add(model.name, "-", "labels", "given", str(path))
        return path
    settings = {"model": fr.identity(), "calibration": str(model.calibration),
                "images": folder_fingerprint(model.calibration), **opts}
    key = fingerprint(settings)
    if _cached(path, key):
        progress.add(model.name, "-", "labels", "reused", str(path))
        return path
    log.info("%s: pseudo-labels of %s (stage 1; ~0.6 s/image/core with dlib on CPU)", model.name, model.calibration)
    pseudo_labels(fr, model.calibration, device=fr.device, batch_size=cfg["batch_size"], save=path, **opts)
    _record(path, key, settings)
    progress.add(model.name, "-", "labels", "computed", str(path))
    return path


def observer_for(model: ModelSpec, method: MethodSpec, fr, outdir: Path, cfg: dict,
                 progress: Progress) -> Path:
    """The observer JSON of ``model`` for the froq row ``method``, made by the stage-2 functions
    (``observer.initialization``) with the row's ``observer`` settings: ``variant`` (paper | plus),
    ``cv_folds`` and the observer option keys (null/absent: the variant's). Reused when calibrated
    with the same model, folder, labels and settings. FroqError (the cell is skipped, one line)
    when the calibration folder is missing or a setting is unknown."""
    from froq.api import calibrate
    from observer import initialization as stage2

    if not model.calibration or not Path(model.calibration).is_dir():
        raise FroqError(f"calibration folder {model.calibration or '(not set)'} not found: build it with "
                        "'froq build-calibration' (docs/cli.md#calibration-set) and set models[].calibration")
    settings_in = dict(method.observer)
    variant = settings_in.pop("variant", "paper")
    cv_folds = settings_in.pop("cv_folds", 5)
    unknown = sorted(set(settings_in) - set(stage2.OPTION_KEYS))
    if unknown:
        raise FroqError(f"observer setting(s) {', '.join(unknown)} are not known to the observer "
                        f"initialisation (known: variant, cv_folds, {', '.join(sorted(stage2.OPTION_KEYS))})")
    options = stage2.resolve_options(variant, settings_in)
    labels = labels_for(model, fr, outdir, cfg, progress)
    path = outdir / "models" / model.name / f"observer_{method.name}.json"
    settings = {"model": fr.identity(), "calibration": str(model.calibration),
                "images": folder_fingerprint(model.calibration), "labels_sha256": sha256_file(labels),
                "top_n": model.top_n, "variant": variant, "cv_folds": cv_folds, "options": options,
                "seed": cfg["seed"]}
    key = fingerprint(settings)
    if _cached(path, key):
        progress.add(model.name, "-", f"observer:{method.name}", "reused", str(path))
        return path
    provenance = {"top_n": model.top_n, "table_config": cfg["_source"],
                  **({} if stage2.is_paper(options) and variant == "paper"
                     else {"variant": variant, "cv_folds": cv_folds, **settings_in})}
    calibrate(fr, model.calibration, str(labels), top_n=model.top_n, batch_size=cfg["batch_size"],
              num_workers=cfg["num_workers"], save=path, variant=variant, options=settings_in,
              cv_folds=cv_folds, seed=cfg["seed"], provenance=provenance)
    _record(path, key, settings)
    progress.add(model.name, "-", f"observer:{method.name}", "computed", str(path))
    return path


def image_root_for(protocol, fr) -> Path:
    """The folder a model's qualities are computed in for a benchmark: the protocol's image folder,
    or, for a template benchmark read from loose crops (IJB-C), the model's aligned chips (written
    once, resumably, by ``evaluation.ijbc.align_chips`` — the evaluation reads the same folder)."""
    if not hasattr(protocol, "aligned_root"):
        return Path(protocol.image_root)
    from evaluation.ijbc import align_chips, model_template

    return align_chips(protocol, model_template(fr))


def quality_cell(model: ModelSpec, bench: str, protocol, root: Path, method: MethodSpec, fr,
                 outdir: Path, cfg: dict, observers: dict, own_models: dict, progress: Progress) -> dict | None:
    """Per-image qualities of one model × benchmark × method. Out: the evaluation's quality spec
    ``{path, column, higher_is_better}``, or None when the cell is skipped (one line says why).
    Computed with ``methods.run_method`` on the benchmark's images under ``root`` (resumable), reused
    when the CSV's ``.table.json`` records the same settings (model, method options, observer,
    images). A method with its own ``fr_config`` (CR-FIQA's network) scores with that model, loaded
    once into ``own_models``; its CSV is shared by the blocks of every FR model."""
    from froq.core.images import FailureLog
    from froq.core.runner import finish_stage
    from methods import get_method, resolve_options, run_method

    if method.method is None:  # a CSV row
        path = Path(method.csv.format(benchmark=bench, model=model.name))
        if not path.is_file():
            progress.add(model.name, bench, method.name, "skipped", f"quality CSV {path} not found")
            return None
        progress.add(model.name, bench, method.name, "given", str(path))
        return {"path": str(path), "column": method.column, "higher_is_better": method.higher_is_better}
    if method.fr_config:
        if method.name not in own_models:
            own_models[method.name] = _method_model(method, cfg)
        if isinstance(own_models[method.name], FroqError):
            progress.add(model.name, bench, method.name, "skipped", str(own_models[method.name]))
            return None
        fr = own_models[method.name]
    options = dict(method.options)
    if "seed" in get_method(method.method).OPTIONS:
        options.setdefault("seed", cfg["seed"])
    if method.method == "aux_fiqa" and "mpx" not in options:
        from baselineFIQA.perturbations import default_mpx
        options["mpx"] = default_mpx(min(fr.preprocess.size))  # the paper's 8x8 grid at this size
    try:
        if method.method == "froq":
            if method.name not in observers:
                try:
                    observers[method.name] = observer_for(model, method, fr, outdir, cfg, progress)
                except FroqError as exc:
                    observers[method.name] = exc
            if isinstance(observers[method.name], FroqError):
                raise observers[method.name]
            options["observer"] = str(observers[method.name])
        options = resolve_options(method.method, options, f"methods.{method.name}")
        get_method(method.method).check(fr, options)
    except FroqError as exc:
        progress.add(model.name, bench, method.name, "skipped", str(exc))
        return None
    out = outdir / "qualities" / bench / (f"{method.name}.csv" if method.fr_config else
                                          f"{model.name}/{method.name}.csv")
    settings = {"method": method.method, "options": options, "model": fr.identity(),
                "observer_sha256": sha256_file(options["observer"]) if options.get("observer") else None,
                "image_root": str(root), "images": folder_fingerprint(root, protocol.images)}
    key = fingerprint(settings)
    spec = {"path": str(out), "column": "quality", "higher_is_better": True}
    if _cached(out, key):
        progress.add(model.name, bench, method.name, "reused", str(out))
        return spec
    with output_lock(out):
        failures = FailureLog(method.name)
        started = time.perf_counter()
        try:
            result = run_method(method.method, fr, root, batch_size=cfg["batch_size"],
                                num_workers=cfg["num_workers"], paths=protocol.images, options=options,
                                failures=failures, resume_path=out, source=f"methods.{method.name}")
        except FroqError as exc:  # e.g. no readable image: this cell only; finished rows stay in .partial
            progress.add(model.name, bench, method.name, "skipped", str(exc))
            return None
        write_csv(out, ["path", *result.columns], result.rows())
        finish_stage(out, "table", images=len(result), failures=failures, started=started,
                     label=f"{model.name}/{bench}/{method.name}",
                     meta={"method": method.method, "row": method.name, "options": options,
                           "model": fr.identity(), "benchmark": bench,
                           "image_root": str(root)})
        _record(out, key, settings)
    progress.add(model.name, bench, method.name, "computed", str(out))
    return spec


def _method_model(method: MethodSpec, cfg: dict):
    """The FR model of a method with its own ``fr_config``, or the FroqError saying why it cannot
    be loaded (e.g. where to download its weights)."""
    from face_recognition_model.loading import load_fr_model
    from froq.core.device import resolve_device

    try:
        return load_fr_model(method.fr_config, resolve_device(cfg["device"]))
    except FroqError as exc:
        return exc


# ---------------------------------------------------------------- evaluation

def evaluation_config(model: ModelSpec, benches: list[tuple[dict, dict]], outdir: Path, cfg: dict) -> dict:
    """The evaluation config of one model: its benchmarks with their quality CSVs, every discard
    limit, the table's ``evaluation`` keys (conventions, bootstrap, ...), ``outdir/evaluation/<model>``,
    validated by the evaluation's own schema (so its conventions and defaults apply)."""
    extra = dict(cfg["evaluation"])
    clash = sorted(set(extra) & OWN_EVAL_KEYS)
    if clash:
        raise FroqError(f"{cfg['_source']}: evaluation: key(s) {', '.join(clash)} are set by the table "
                        "(use the table's own keys: discard_limits, device, batch_size, ...)")
    ecfg = {"face_recognition_configs": [{"config": model.fr_config, "name": model.name}],
            "benchmarks": [{**entry, "qualities": quals} for entry, quals in benches],
            "outdir": str(outdir / "evaluation" / model.name), "discard_limit": as_limits(cfg["discard_limits"]),
            "device": cfg["device"], "batch_size": cfg["batch_size"], "num_workers": cfg["num_workers"],
            "cache_dir": str(outdir / "cache" / model.name), **extra}
    return evaluation_settings(ecfg, f"{cfg['_source']} (evaluation of {model.name})") | {
        "_source": cfg["_source"]}


def evaluate_model(model: ModelSpec, benches: list[tuple[dict, dict]], outdir: Path,
                   cfg: dict) -> tuple[dict, str]:
    """Run (or reuse) the one evaluation call of a model (all its benchmarks and limits). Out: its
    results mapping ``{benchmark: {model: {method: metrics}}}`` and ``"computed"``/``"reused"``
    (reused when its config, FR config and quality CSVs are byte-identical to the last run's)."""
    from evaluation.evaluate import run_evaluation

    ecfg = evaluation_config(model, benches, outdir, cfg)
    results_path = Path(ecfg["outdir"]) / "results.json"
    inputs = {"config": public(ecfg), "fr_config_sha256": sha256_file(model.fr_config),
              "qualities": {q["path"]: sha256_file(q["path"]) for _, quals in benches for q in quals.values()}}
    key = fingerprint(inputs)
    if _cached(results_path, key):
        return read_json(results_path), "reused"
    results = run_evaluation(ecfg)
    _record(results_path, key, inputs)
    return results, "computed"


# ---------------------------------------------------------------- the table

def cell_value(results: Mapping, bench: str, model: str, method: str, limit: float) -> dict | None:
    """The table value of one cell from the evaluation's results: ``{value, ci}`` at discard limit
    ``limit`` (``pauc_value``: the pAUC under the evaluation's normalisation convention, and its
    bootstrap interval when computed), or None when absent / not finite."""
    entry = ((results.get(bench) or {}).get(model) or {}).get(method) or {}
    metrics = (entry.get("by_limit") or {}).get(format(limit, "g"))
    if metrics is None:
        return None
    value = metrics.get("pauc_value", metrics.get("pauc_norm"))
    if value is None or not math.isfinite(float(value)):
        return None
    ci = metrics.get("pauc_value_ci") or metrics.get("pauc_norm_ci")
    return {"value": float(value), "ci": [float(c) for c in ci] if ci else None}


def table_markdown(cells: dict, models: list[str], benches: list[str], methods: list[str],
                   limits: list[float], fmr: float, normalisation: str = "start",
                   reasons: Mapping | None = None) -> str:
    """The paper's layout as Markdown (``evaluation.reporting.render_markdown``): per discard limit,
    benchmarks as columns, methods as rows, one block per FR model, a mean column (over the
    benchmarks present; ``(k/n)`` when some are missing); ``± h`` = half-width of the evaluation's
    bootstrap interval when it gave one; an empty cell carries a footnote with its reason.
    In: ``cells[(model, method, bench, limit)] = {value, ci}``, ``reasons`` for the empty ones."""
    out = []
    what = {"start": "normalised pAUC", "raw": "raw pAUC", "best": "pAUC minus the best possible"}.get(
        normalisation, f"pAUC ({normalisation})")
    for limit in limits:
        rows = []
        for model in models:
            for method in methods:
                keys = [(model, method, b, limit) for b in benches]
                vals = [cells.get(k) for k in keys]
                have = [v["value"] for v in vals if v is not None]
                row = [Cell(v["value"], tuple(v["ci"]) if v["ci"] else None) if v is not None
                       else Cell(None, why=(reasons or {}).get(k)) for k, v in zip(keys, vals)]
                mean = Cell(sum(have) / len(have) if have else None, why="no benchmark has a value",
                            suffix="" if len(have) == len(vals) else f"({len(have)}/{len(vals)})")
                rows.append([model, method, *row, mean])
        out += [f"### EDC {what}, FMR {fmr:g}, discard limit {limit:g} (lower = better)\n",
                render_markdown(["FR model", "method", *benches, "mean"], rows), ""]
    return "\n".join(out)


def run_table(cfg: dict) -> dict:
    """The whole table from a validated table config (``SCHEMA``). Out: the ``table.json`` record
    (cells, statuses, provenance). Writes everything under ``cfg['outdir']``."""
    from face_recognition_model.loading import load_fr_config, load_fr_model, resolve_weights
    from evaluation.evaluate import load_protocol
    from froq import __version__
    from froq.core.device import resolve_device

    source = cfg["_source"]
    started = time.time()
    outdir = Path(cfg["outdir"])
    models = parse_models(cfg["models"], source)
    methods = parse_methods(cfg["methods"], source)
    bench_entries = parse_benchmark_entries(cfg["benchmarks"], outdir, source)
    limits = as_limits(cfg["discard_limits"])
    device = resolve_device(cfg["device"])
    progress = Progress()
    column = {k: EVALUATION_SCHEMA[k] for k in ("fmr", "pauc_normalisation")}  # the rest: evaluation_config
    shown = validate({k: v for k, v in cfg["evaluation"].items() if k in column}, column, f"{source}: evaluation")
    fmr = shown["fmr"][0]  # the table's column: the first FMR

    # benchmarks: a missing dataset is skipped once, for every model
    protocols = {}
    for entry, download in bench_entries:
        try:
            protocols[entry["name"]] = load_protocol(_entry_object(entry), outdir)
            log.info("%s", protocols[entry["name"]].summary())
        except FroqError as exc:
            hint = f" — download: {download}" if download else ""
            progress.add("*", entry["name"], "*", "skipped", f"{exc}{hint}")

    cells: dict = {}
    reasons: dict = {}  # why an empty cell is empty (its footnote)
    own_models: dict = {}  # method name -> its own FR model (or why not)
    evaluations: dict = {}
    identities: dict = {}
    no_intervals: dict = {}  # benchmark -> why it has no bootstrap intervals
    for model in models:
        try:
            fr_cfg = load_fr_config(model.fr_config)
            resolve_weights(fr_cfg)
        except FroqError as exc:
            hint = f" — download: {model.download}" if model.download else ""
            progress.add(model.name, "*", "*", "skipped", f"{exc}{hint}")
            continue
        fr = load_fr_model(fr_cfg, device)
        identities[model.name] = fr.identity()
        observers: dict = {}
        benches = []
        for entry, _ in bench_entries:
            if entry["name"] not in protocols:
                continue
            try:
                root = image_root_for(protocols[entry["name"]], fr)
            except FroqError as exc:
                progress.add(model.name, entry["name"], "*", "skipped", str(exc))
                continue
            quals = {}
            for method in methods:
                spec = quality_cell(model, entry["name"], protocols[entry["name"]], root, method, fr,
                                    outdir, cfg, observers, own_models, progress)
                if spec is not None:
                    quals[method.name] = spec
            benches.append((entry, quals))
        del fr
        if not benches:
            continue
        results, status = evaluate_model(model, benches, outdir, cfg)
        evaluations[model.name] = {"status": status, "outdir": str(outdir / "evaluation" / model.name)}
        for entry, quals in benches:
            for method in quals:
                boot = (((results.get(entry["name"]) or {}).get(model.name) or {}).get(method) or {}).get("bootstrap")
                if boot and "not_computed" in boot:      # a streamed benchmark: say why it has no ±
                    no_intervals[entry["name"]] = boot["not_computed"]
                for limit in limits:
                    value = cell_value(results, entry["name"], model.name, method, limit)
                    if value is not None:
                        cells[(model.name, method, entry["name"], limit)] = value
                    else:
                        reasons[(model.name, method, entry["name"], limit)] = empty_reason(
                            results, entry["name"], model.name, method, fmr_key(fmr))

    model_names = [m.name for m in models]
    bench_names = [e["name"] for e, _ in bench_entries]
    method_names = [m.name for m in methods]
    for model, bench, method, status, detail in progress.cells:  # skipped cells: the skip's reason
        if status == "skipped":
            for key in [(m, meth, b, lim) for m in model_names for meth in method_names for b in bench_names
                        for lim in limits if model in ("*", m) and method in ("*", meth) and bench in ("*", b)]:
                reasons.setdefault(key, f"skipped: {detail}")
    text = table_markdown(cells, model_names, bench_names, method_names, limits, fmr,
                          shown["pauc_normalisation"], reasons)
    ev = [e["status"] for e in evaluations.values()]
    summary = progress.lines() + [f"evaluations: {ev.count('computed')} computed, {ev.count('reused')} reused"]
    summary += [f"no bootstrap intervals for {bench}: {why}" for bench, why in no_intervals.items()]
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_open(outdir / "table.md") as fh:
        fh.write(f"<!-- froq {__version__}; config {source}; {time.strftime('%Y-%m-%d %H:%M:%S')} -->\n\n")
        fh.write(text + "\n" + "\n".join(f"- {line}" for line in summary) + "\n")
    write_csv(outdir / "table.csv", ["model", "method", "benchmark", "fmr", "discard_limit", "pauc", "ci_low", "ci_high"],
              [[m, meth, b, fmr, lim, v["value"], *(v["ci"] or ["", ""])]
               for (m, meth, b, lim), v in sorted(cells.items())])
    record = {"froq_version": __version__, "config_file": source, "config": public(cfg),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
              "seconds": round(time.time() - started, 1), "models": identities,
              "evaluations": evaluations, "summary": summary,
              "cells": [dict(zip(("model", "benchmark", "method", "status", "detail"), c)) for c in progress.cells]}
    write_json(outdir / "table.json", record)
    return {**record, "markdown": text}


def _entry_object(entry: dict):
    """An evaluation ``BenchmarkEntry`` for ``load_protocol`` from a table benchmark entry."""
    from evaluation.evaluate import parse_benchmarks

    return parse_benchmarks([entry], "table")[0]


def main(argv=None) -> dict:
    """``froq table``: parse arguments, build the table, print it and the progress summary."""
    args = stage_parser(__doc__.strip().splitlines()[0], SCHEMA, prog="froq table").parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    record = run_table(cfg)
    print(record["markdown"])
    for line in record["summary"]:
        print(line)
    print(f"table: {Path(cfg['outdir']) / 'table.md'} (EDC plots under {Path(cfg['outdir']) / 'evaluation'})")
    return record


if __name__ == "__main__":
    sys.exit(run_main(main))
