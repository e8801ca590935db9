"""Stage 2 — observer initialisation (spec §3): which layers of the FR model know quality.

    python observer/initialization.py -c configs/init.yaml [--set top_n=5 ...]

One forward pass per calibration image with a hook on every layer (norms reduced in the hooks),
Spearman utility per layer against the pseudo-labels, top-n candidates, greedy layer set.
Writes a JSON observer file (see docs/output-formats.md#observer-json).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from face_recognition_model.loading import FRModel, identity_difference
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, load_config, positive_int, public
from froq.core.device import autocast_context
from froq.core.errors import FroqError
from froq.core.images import FailureLog, read_image_list
from froq.core import distributed
from froq.core.io import read_json, read_quality_csv, write_json
from froq.core.runner import finish_stage, open_source, run_images
from froq.core.stage import COMMON_KEYS, output_path, refuse_overwriting_inputs
from face_recognition_model.loading import fr_from_stage_config
from observer.depth import early_exit_cost, module_costs
from observer.hooks import NormRecorder, check_statistics, observable_layers
from observer.scale import scale_record
from observer.stability import (STABLE_THRESHOLD, plus_stability, resampled_selections,
                                selection_stability, stability_text, stable_features)
from observer.combination import STANDARDISATIONS, WEIGHTINGS, combined_quality, fit_standardisation
from observer.selection import (alias_groups, cross_validate_size, fit_features, greedy_selection,
                                layer_utilities, top_candidates)
from preparation.split import identity_of

log = logging.getLogger("observer.init")

#: selection rules of the observer options
SELECTIONS = ("greedy", "cv", "stable")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config"),
    "dataset.path": Key("path", help="folder of aligned calibration faces (the labelled ones), or an insightface train.rec"),
    "dataset.list": Key("path", default=None,
                        help="text file of image paths relative to dataset.path, one a line (instead of walking the folder)"),
    "dataset.batch_size": Key(positive_int, default=32),
    "label_location": Key("path", help="pseudo-label CSV written by baselineFIQA/main.py"),
    "label_column": Key("str", default="quality", help="which column of the label CSV to use"),
    "allow_foreign_labels": Key("bool", default=False,
                                help="use labels whose .meta.json names another FR network (recorded in the observer file)"),
    "top_n": Key(positive_int, default=10, help="candidate layers for the greedy search"),
    "variant": Key("str", default="paper", choices=["paper", "plus"],
                   help="paper = the published FROQ; plus = FROQ+ (docs/method.md#froq-plus)"),
    "statistics": Key("list", default=None, nullable=True,
                      help="per-layer statistics of the candidates (null: the variant's)"),
    "standardise": Key("str", default=None, nullable=True, choices=list(STANDARDISATIONS),
                       help="none | zscore | rank before averaging (null: the variant's)"),
    "signed": Key("bool", default=None, nullable=True,
                  help="rank by |rho|, flip features that fall with quality (null: the variant's)"),
    "weights": Key("str", default=None, nullable=True, choices=list(WEIGHTINGS),
                   help="equal | rho (null: the variant's)"),
    "selection": Key("str", default=None, nullable=True, choices=list(SELECTIONS),
                     help="greedy on all images | cv: set size by identity-grouped CV | stable: features "
                          "chosen by cv in most bootstrap resamples (null: the variant's)"),
    "depth_budget": Key("any", default=None, nullable=True,
                        help="none | paper | a cost share in (0, 1]: how deep the selected modules may be "
                             "(null: the variant's)"),
    "cv_folds": Key(positive_int, default=5, help="identity-grouped folds of selection: cv"),
    "autocast": Key("bool", default=True, help="fp16 autocast on CUDA (ignored on CPU)"),
    "outpath": Key("path", help="observer JSON (or a folder: observer.json inside)"),
    **COMMON_KEYS,
}

FORMAT = "froq-observer/1"

#: the observer options (issue 12) and the two variants' values; a config key that is not null
#: overrides its variant's value (e.g. ``variant: paper`` + ``standardise: zscore`` = one option alone)
OPTION_KEYS = ("statistics", "standardise", "signed", "weights", "selection", "depth_budget")
VARIANTS = {
    "paper": {"statistics": ["l2"], "standardise": "none", "signed": False, "weights": "equal",
              "selection": "greedy", "depth_budget": "none"},
    "plus": {"statistics": ["l2", "l1", "mean", "std", "spatial_std"], "standardise": "zscore",
             "signed": True, "weights": "equal", "selection": "cv", "depth_budget": "paper"},
}


def check_depth_budget(value) -> str | float:
    """A ``depth_budget`` value → ``'none'``, ``'paper'`` or a float in (0, 1]; FroqError otherwise."""
    if value in ("none", "paper"):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise FroqError(f"depth_budget {value!r}: must be none, paper or a cost share in (0, 1] "
                    "(e.g. depth_budget: paper or depth_budget: 0.5)")


def resolve_options(variant: str = "paper", overrides: Mapping | None = None) -> dict:
    """The observer options of ``variant`` with the non-null ``overrides`` applied.

    In: a variant name of ``VARIANTS`` and a mapping of option keys (null = keep the variant's).
    Out: ``{statistics, standardise, signed, weights, selection, depth_budget}``; FroqError for an
    unknown variant, option, statistic or budget."""
    if variant not in VARIANTS:
        raise FroqError(f"unknown observer variant {variant!r}; known: {', '.join(VARIANTS)}")
    options = dict(VARIANTS[variant], statistics=list(VARIANTS[variant]["statistics"]))
    for key, value in (overrides or {}).items():
        if key not in OPTION_KEYS:
            raise FroqError(f"unknown observer option {key!r}; known: {', '.join(OPTION_KEYS)}")
        if value is not None:
            options[key] = list(value) if key == "statistics" else value
    options["statistics"] = check_statistics(options["statistics"])
    options["depth_budget"] = check_depth_budget(options["depth_budget"])
    if options["standardise"] not in STANDARDISATIONS or options["weights"] not in WEIGHTINGS \
            or options["selection"] not in SELECTIONS or not isinstance(options["signed"], bool):
        raise FroqError(f"observer options {options}: standardise must be one of "
                        f"{', '.join(STANDARDISATIONS)}, weights one of {', '.join(WEIGHTINGS)}, "
                        f"selection one of {', '.join(SELECTIONS)}, signed true or false")
    return options


def is_paper(options: Mapping | None) -> bool:
    """True when ``options`` are the published method's (None counts as the paper)."""
    return options is None or dict(options) == VARIANTS["paper"]


def match_labels(root: str | Path, labels: dict[str, float], label_file: str,
                 paths: Sequence[str] | None = None) -> list[str]:
    """Keys of the images that are both in ``root`` and in the label file (in ``root``'s order).

    In: the folder (its images, or the listed relative ``paths``) or a RecordIO ``train.rec`` (keys:
    record indices), the labels by key, the label file's name. Warns about images without a label
    and labels without an image; FroqError when fewer than three images remain (Spearman needs at
    least three).
    """
    on_disk = open_source(root, paths, FailureLog("observer init")).keys
    if not on_disk:
        raise FroqError(f"{root}: no images found (.jpg .jpeg .png .bmp .webp, searched recursively)")
    in_both = [p for p in on_disk if p in labels]
    unlabelled = len(on_disk) - len(in_both)
    disk = set(on_disk)
    missing = [p for p in labels if p not in disk]
    if unlabelled:
        example = next(p for p in on_disk if p not in labels)
        log.warning("%d of %d images in %s have no label in %s (e.g. %s); they are left out",
                    unlabelled, len(on_disk), root, label_file, example)
    if missing:
        log.warning("%d labels in %s name images not in %s (e.g. %s); they are left out",
                    len(missing), label_file, root, missing[0])
    if len(in_both) < 3:
        raise FroqError(f"{label_file}: only {len(in_both)} of its paths match images under {root}; "
                        "the label file must come from this calibration folder (paths relative to it)")
    return in_both


def collect_statistics(fr: FRModel, root: str | Path, paths: Sequence[str],
                       statistics: Sequence[str] = ("l2",), batch_size: int = 32,
                       num_workers: int = 0, autocast: bool = True,
                       resume_path: str | Path | None = None,
                       failures: FailureLog | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Per-image statistics (``observer.hooks.STATISTICS``) of every layer's output, in **one**
    forward pass per image, reduced inside the hooks.

    In: a loaded FR model, the calibration folder and the relative paths to read, the statistic
    names, batch size, and optionally the observer output path (finished rows are kept in
    ``<path>.partial``).
    Out: (layer names in ``named_modules()`` order, paths read, (N, L, S) float64 statistics; NaN
    where a layer did not fire, gave no batch tensor, or the statistic is undefined for its shape).
    Unreadable images go to ``failures``.
    """
    statistics = check_statistics(statistics)
    layers = observable_layers(fr.network)
    key = {"stage": "observer_init", "model": fr.identity(), "root": str(root),
           "autocast": autocast and fr.device.type == "cuda"}
    if statistics == ["l2"]:  # the paper's: one column per layer (resume files as before)
        columns = layers
    else:
        key["statistics"] = statistics
        columns = [f"{layer}:{stat}" for layer in layers for stat in statistics]
    with NormRecorder(fr.network, layers, statistics=statistics) as recorder, torch.no_grad(), \
            autocast_context(fr.device, autocast):
        def batch_fn(_paths: list[str], images: torch.Tensor) -> np.ndarray:
            recorder.run(fr.network, images)
            return recorder.stats().reshape(images.shape[0], -1)

        result = run_images(root, batch_fn, columns, preprocess=fr.preprocess, device=fr.device,
                            batch_size=batch_size, paths=paths, num_workers=num_workers,
                            resume_path=resume_path, settings=key, failures=failures,
                            desc="observer init", allow_empty=True)
    values = result.values[:, -len(columns):]  # a RecordIO set's first column is the label
    values = values.reshape(len(result.paths), len(layers), len(statistics))
    return layers, result.paths, values


def collect_norms(fr: FRModel, root: str | Path, paths: Sequence[str], batch_size: int = 32,
                  num_workers: int = 0, autocast: bool = True, resume_path: str | Path | None = None,
                  failures: FailureLog | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Per-image L2 norms of every layer's output, in **one** forward pass per image.

    In: as ``collect_statistics``. Out: (layer names in ``named_modules()`` order, paths read,
    (N, L) float64 norms; NaN where a layer did not fire or gave no batch tensor).
    """
    layers, read, values = collect_statistics(fr, root, paths, ("l2",), batch_size, num_workers,
                                              autocast, resume_path, failures)
    return layers, read, values[:, :, 0]


def select_layers(layers: Sequence[str], norms: np.ndarray, labels: np.ndarray, top_n: int = 10) -> dict:
    """Spec §3.2–3.5 on collected norms → the JSON-able selection record.

    Out: ``{selected_layers, greedy: [{layer, spearman}], candidates, layers: [{name, utility}],
    never_called, aliases}``; FroqError if no layer has a defined utility.
    """
    utilities = layer_utilities(norms, labels)
    candidates = top_candidates(utilities, top_n)
    if not candidates:
        raise FroqError("no layer has a defined Spearman utility (all outputs constant or missing): "
                        "check the calibration set (identical images?) and the pseudo-labels")
    greedy = greedy_selection(norms, labels, candidates)
    never = [name for j, name in enumerate(layers) if np.all(np.isnan(norms[:, j]))]
    undefined = sum(u is None for u in utilities)
    if undefined:
        log.info("%d of %d layers have no utility (never called, no tensor output, or constant)",
                 undefined, len(layers))
    return {
        "selected_layers": [layers[j] for j in greedy.selected],
        "greedy": [{"layer": layers[j], "spearman": r} for j, r in zip(greedy.order, greedy.rhos)],
        "candidates": [layers[j] for j in candidates],
        "layers": [{"name": n, "utility": u} for n, u in zip(layers, utilities)],
        "never_called": never,
        "aliases": alias_groups(norms, layers),
    }


def select_features(layers: Sequence[str], stats: np.ndarray, labels: np.ndarray,
                    options: Mapping, top_n: int = 10, groups: Sequence[str] | None = None,
                    cv_folds: int = 5, seed: int = 0, allowed: np.ndarray | None = None,
                    resampled: Sequence[Sequence[int]] | None = None) -> dict:
    """FROQ+ selection (issue 12) on collected statistics → the JSON-able selection record.

    In: layer names, (N, L, S) statistics (S = ``options['statistics']`` in order), N labels, the
    resolved options, top-n, and for ``selection: cv`` the identity of every image (folds by
    identity), the number of folds and the fold seed; ``allowed``: optional (L·S,) bool mask of
    the features that may be candidates (the depth budget; the same mask on every CV fold);
    for ``selection: stable`` the selections of the bootstrap resamples
    (``observer.stability.resampled_selections``, feature column indices).
    Out: ``{selected_layers, features: [{layer, statistic, utility, sign, weight, mean/std or
    quantiles}], standardise, greedy, candidates, layers, never_called, aliases, cv? / stable?,
    calibration_quality}`` — everything inference needs is in ``features`` + ``standardise``.
    """
    stat_names = list(options["statistics"])
    n, n_layers, n_stats = stats.shape
    values = stats.reshape(n, n_layers * n_stats)
    method, weighting, signed = options["standardise"], options["weights"], options["signed"]

    def feature(j: int) -> tuple[str, str]:
        return layers[j // n_stats], stat_names[j % n_stats]

    fit = fit_features(values, labels, top_n, method, signed, weighting, allowed)
    if not fit.candidates:
        raise FroqError("no layer statistic has a defined Spearman utility (all outputs constant or "
                        "missing): check the calibration set (identical images?) and the pseudo-labels"
                        + ("" if allowed is None else ", or raise depth_budget"))
    size = fit.greedy.selected_count
    cv = stable = None
    if options["selection"] == "cv":
        if groups is None:
            raise FroqError("selection: cv needs the identity (parent folder) of every image")
        try:
            cv = cross_validate_size(values, labels, groups, top_n, cv_folds, seed, method, signed,
                                     weighting, allowed)
        except ValueError as exc:
            raise FroqError(f"selection: cv: {exc}; lower cv_folds or use selection: greedy") from None
        size = min(cv.size, len(fit.greedy.order))
    chosen = fit.greedy.order[:size]
    if options["selection"] == "stable":
        if resampled is None:
            raise FroqError("selection: stable needs the bootstrap selections (observer_from_statistics "
                            "computes them); use selection: cv")
        key = [None if u is None else (abs(u) if signed else u) for u in fit.utilities]
        chosen = stable_features(resampled, key) or chosen
        stable = {"base": "cv", "threshold": STABLE_THRESHOLD, "resamples": len(resampled),
                  "same_selection": sum(frozenset(r) == frozenset(chosen) for r in resampled)
                  / max(len(resampled), 1)}
    features = []
    for j in chosen:
        layer, stat = feature(j)
        if j not in fit.params:  # a stable feature outside the all-image candidates
            fit.signs[j] = -1 if signed and fit.utilities[j] < 0 else 1
            fit.params[j] = fit_standardisation(values[:, j], method)
            fit.weights[j] = abs(fit.utilities[j]) if weighting == "rho" else 1.0
        features.append({"layer": layer, "statistic": stat, "utility": fit.utilities[j],
                         "sign": fit.signs[j], "weight": fit.weights[j], **fit.params[j]})
    selected_layers = list(dict.fromkeys(f["layer"] for f in features))
    l2 = stat_names.index("l2") if "l2" in stat_names else 0
    record = {
        "selected_layers": selected_layers,
        "standardise": method,
        "features": features,
        "greedy": [{"layer": feature(j)[0], "statistic": feature(j)[1], "spearman": r}
                   for j, r in zip(fit.greedy.order, fit.greedy.rhos)],
        "candidates": [{"layer": feature(j)[0], "statistic": feature(j)[1],
                        "utility": fit.utilities[j]} for j in fit.candidates],
        "layers": [{"name": name, "utilities": {stat: fit.utilities[i * n_stats + k]
                                                for k, stat in enumerate(stat_names)}}
                   for i, name in enumerate(layers)],
        "never_called": [name for i, name in enumerate(layers) if np.all(np.isnan(stats[:, i, :]))],
        "aliases": alias_groups(stats[:, :, l2], layers),
    }
    if cv is not None:
        record["cv"] = {"folds": cv.folds, "seed": seed, "grouped_by": "parent folder",
                        "selected_size": size, "spearman_by_size": cv.spearman_by_size,
                        "per_fold": cv.per_fold}
    if stable is not None:
        record["stable"] = stable
    record["calibration_quality"] = combined_quality(values[:, chosen], features, method)
    return record


def check_labels_model(label_file: str | Path, fr: FRModel, allow_foreign: bool = False) -> dict | None:
    """Whether the pseudo-labels' ``<labels>.meta.json`` names ``fr``'s network
    (``identity_difference``; the observer would otherwise learn what another network finds
    unstable). Out: None when it does or the labels have no meta file (taken as given); with
    ``allow_foreign`` the provenance to keep in the observer file; else FroqError naming both."""
    meta_path = Path(label_file).with_suffix(".meta.json")
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    model = (meta.get("model") if isinstance(meta, dict) else None) or {}
    difference = identity_difference(model, fr.identity())
    if difference is None:
        return None
    if not allow_foreign:
        raise FroqError(f"{label_file}: these pseudo-labels were computed with another FR model "
                        f"({difference}; see {meta_path.name}): compute the labels with this FR "
                        "config, or set allow_foreign_labels: true to use them anyway")
    log.warning("%s: using pseudo-labels of another FR model (allow_foreign_labels): %s", label_file, difference)
    return {"labels": str(label_file), "model": model, "difference": difference}


def initialize_observer(fr: FRModel, root: str | Path, label_file: str | Path | Mapping[str, float],
                        batch_size: int = 32, top_n: int = 10, label_column: str = "quality",
                        num_workers: int = 0, autocast: bool = True,
                        resume_path: str | Path | None = None,
                        failures: FailureLog | None = None, options: Mapping | None = None,
                        cv_folds: int = 5, seed: int = 0, paths: Sequence[str] | None = None,
                        allow_foreign_labels: bool = False) -> dict:
    """Whole stage as a function: labels + folder → selection record (plus ``images`` count).

    In: FR model, calibration folder, the pseudo-labels — a CSV (``path`` + ``label_column``) or a
    mapping ``{relative path: label}`` — and settings; ``options`` (``resolve_options``; None =
    the paper), ``cv_folds`` and ``seed`` for FROQ+; ``paths``: only these images of the folder
    (``dataset.list``). ``root`` may be a RecordIO ``train.rec`` (labels keyed by record index).
    ``allow_foreign_labels``: see ``check_labels_model``.
    Out: the dict of ``select_layers`` (paper) or ``select_features`` (other options, with
    ``variant``-independent ``options`` recorded) with ``images`` and ``scale`` added, and
    ``foreign_labels`` when labels of another FR model were allowed.
    """
    foreign = None
    if isinstance(label_file, Mapping):
        labels = {str(k): float(v) for k, v in label_file.items()}
        label_file = "the given labels"
    else:
        if not Path(label_file).is_file():
            raise FroqError(f"label file not found: {label_file} — compute the pseudo-labels first "
                            "(python baselineFIQA/main.py) or fix label_location")
        foreign = check_labels_model(label_file, fr, allow_foreign_labels)
        labels = read_quality_csv(label_file, column=label_column)
    paths = match_labels(root, labels, str(label_file), paths)
    bad = [p for p in paths if not np.isfinite(labels[p])]
    if bad:
        raise FroqError(f"{label_file}: {len(bad)} label(s) in column '{label_column}' are not finite "
                        f"numbers (e.g. {bad[0]}): recompute the pseudo-labels")
    failures = failures if failures is not None else FailureLog("observer init")
    statistics = ["l2"] if is_paper(options) else list(options["statistics"])
    if not is_paper(options) and options["depth_budget"] == "paper" and "l2" not in statistics:
        statistics.append("l2")  # the paper's selection sets the budget
    layers, read, stats = collect_statistics(fr, root, paths, statistics, batch_size, num_workers,
                                             autocast, resume_path, failures)
    if len(read) < 3:
        raise FroqError(f"{root}: only {len(read)} readable labelled images; need at least 3")
    y = np.array([labels[p] for p in read], dtype=np.float64)
    record = observer_from_statistics(layers, statistics, stats, read, y, options, top_n, cv_folds, seed,
                                      costs=network_costs(fr))
    if foreign:
        record["foreign_labels"] = foreign
    return record


def observer_from_statistics(layers: Sequence[str], statistics: Sequence[str], stats: np.ndarray,
                             paths: Sequence[str], labels: np.ndarray, options: Mapping | None = None,
                             top_n: int = 10, cv_folds: int = 5, seed: int = 0,
                             costs: Mapping | None = None, stability: bool = True) -> dict:
    """The observer record from collected statistics (no forward pass): what ``initialize_observer``
    returns, also used by ``benchmarks/ablation.py`` on cached statistics.

    In: layer names, the statistic names of ``stats`` (N, L, S) (a superset of the options'; the
    paper and ``depth_budget: paper`` need ``l2``), the images' relative paths (identity = parent
    folder, for CV and the bootstrap) and labels, the options (None = the paper), top-n, CV folds
    and seed, the network's depth costs (``observer.depth.module_costs``; needed by a
    ``depth_budget`` other than none) and whether to add the bootstrap ``stability`` record.
    Out: ``select_layers``' record (paper) or ``{options, **select_features}`` with ``images``,
    ``scale`` (the calibration images' own qualities), ``depth`` (when ``costs`` are given: the
    cost of every layer, the early-exit cost, the budget) and ``stability`` added.
    """
    statistics = list(statistics)
    labels = np.asarray(labels, dtype=np.float64)
    layer_costs = dict(costs["costs"]) if costs is not None else None
    if is_paper(options):
        norms = stats[:, :, statistics.index("l2")]
        record = select_layers(layers, norms, labels, top_n)
        record["images"] = len(paths)
        columns = [list(layers).index(name) for name in record["selected_layers"]]
        # the calibration images' own FROQ qualities: the reference of the readable 0-100 scale
        record["scale"] = scale_record(norms[:, columns].mean(axis=1))
        if stability:  # how stable the selection is: a bootstrap on the same norms (no forward)
            record["stability"] = selection_stability(layers, norms, labels, paths,
                                                      record["selected_layers"], top_n)
        if costs is not None:
            record["depth"] = depth_record(costs, record["selected_layers"])
        return record
    budget, max_cost, paper_cost = options["depth_budget"], None, None
    if budget != "none":
        if layer_costs is None:
            raise FroqError(f"depth_budget {budget}: the module costs of the network are needed "
                            "(observer.depth.module_costs); pass costs or set depth_budget: none")
        if budget == "paper":
            if "l2" not in statistics:
                raise FroqError("depth_budget paper needs the l2 statistic (the paper's selection); "
                                "add l2 to the statistics or set depth_budget to none or a number")
            paper = select_layers(layers, stats[:, :, statistics.index("l2")], labels, top_n)
            max_cost = paper_cost = early_exit_cost(layer_costs, paper["selected_layers"])
            if max_cost is None:
                raise FroqError(f"depth_budget paper: the paper's layers {paper['selected_layers']} have "
                                "no depth cost (not called in the costing forward); set depth_budget to "
                                "none or a number")
        else:
            max_cost = float(budget)
    wanted = [statistics.index(s) for s in options["statistics"]]
    sub = stats[:, :, wanted]
    n_stats = len(wanted)
    allowed = None
    if max_cost is not None:
        cost_of = [layer_costs.get(name) for name in layers]
        allowed = np.array([cost_of[j // n_stats] is not None and cost_of[j // n_stats] <= max_cost
                            for j in range(len(layers) * n_stats)])
    groups = [identity_of(p) for p in paths]
    values = sub.reshape(len(paths), -1)
    resampled, started = None, time.perf_counter()
    if stability or options["selection"] == "stable":
        resampled = resampled_selections(values, labels, paths, dict(options), top_n, cv_folds, seed,
                                         allowed)
    record = {"options": dict(options),
              **select_features(layers, sub, labels, options, top_n, groups, cv_folds, seed, allowed,
                                None if resampled is None else resampled["selections"])}
    record["images"] = len(paths)
    quality = record.pop("calibration_quality")
    record["scale"] = scale_record(quality)
    if stability:
        names = [f"{layers[j // n_stats]}:{options['statistics'][j % n_stats]}"
                 for j in range(values.shape[1])]
        chosen = [names.index(f"{f['layer']}:{f['statistic']}") for f in record["features"]]
        record["stability"] = plus_stability(names, [n.rsplit(":", 1)[0] for n in names], resampled,
                                             labels, quality, chosen, options["selection"],
                                             time.perf_counter() - started)
    if layer_costs is not None:
        for f in record["features"]:
            f["cost"] = layer_costs.get(f["layer"])
        record["depth"] = depth_record(costs, record["selected_layers"], budget, max_cost, paper_cost)
    return record


def depth_record(costs: Mapping, selected: Sequence[str], budget: str | float = "none",
                 max_cost: float | None = None, paper_cost: float | None = None) -> dict:
    """The ``depth`` record of an observer file (``observer.depth``).

    In: ``module_costs``' result, the selected layers, the ``depth_budget`` option, the cost limit
    it gave and the paper selection's early-exit cost (for ``paper``). Out: ``{unit, total_macs,
    early_exit_cost, selected: {layer: cost}, budget, max_cost, paper_early_exit_cost,
    layer_costs}``."""
    layer_costs = costs["costs"]
    return {"unit": costs["unit"], "total_macs": costs["total_macs"],
            "early_exit_cost": early_exit_cost(layer_costs, selected),
            "selected": {name: layer_costs.get(name) for name in selected},
            "budget": budget, "max_cost": max_cost, "paper_early_exit_cost": paper_cost,
            "layer_costs": dict(layer_costs)}


def network_costs(fr: FRModel) -> dict:
    """``observer.depth.module_costs`` of ``fr``'s network for one black image of its input size."""
    h, w = fr.preprocess.size
    return module_costs(fr.network, torch.zeros(1, 3, h, w, device=fr.device))


def observer_file_record(fr: FRModel, record: dict, calibration: str | Path, label_file: str | Path,
                         failures: FailureLog, config: dict | None = None) -> dict:
    """The observer JSON (format ``froq-observer/1``) from ``initialize_observer``'s record.

    In: the FR model, the record, the calibration folder and label file, the unreadable images,
    and the stage config (provenance). Out: the dict written to ``observer.json``
    (docs/output-formats.md#observer-json): selected layers first, then model identity, calibration, the selection details.
    """
    record = dict(record)
    template = fr.alignment()  # the face template the calibration faces were aligned to
    return {"format": FORMAT, "selected_layers": record.pop("selected_layers"),
            "model": fr.identity(), "alignment": template.record() if template else None,
            "calibration": {"path": str(calibration), "labels": str(label_file),
                                                    "images": record.pop("images")},
            **record, "config": config or {},
            "unreadable": [{"path": p, "reason": r} for p, r in failures.items]}


def calibrate_observer(fr: FRModel, root: str | Path, labels: str | Path | Mapping[str, float], *,
                       variant: str = "paper", overrides: Mapping | None = None, provenance: Mapping | None = None,
                       failures: FailureLog, **settings) -> dict:
    """Stage 2 from start to file record: the one observer initialisation of the stage, the API and
    ``froq table``. In: the FR model, the calibration folder, its labels (CSV or mapping), the
    ``variant`` with option ``overrides`` (``resolve_options``), the provenance to record, the
    FailureLog, and ``initialize_observer``'s other keywords (batch_size, top_n, cv_folds, seed,
    resume_path, ...). Out: the observer JSON record (``observer_file_record``); a FROQ+ record
    names its variant."""
    options = resolve_options(variant, overrides)
    record = initialize_observer(fr, root, labels, failures=failures, options=options, **settings)
    if not is_paper(options):
        record = {"variant": variant, **record}
    label_source = labels if isinstance(labels, (str, Path)) else "in-memory labels"
    return observer_file_record(fr, record, root, str(label_source), failures, dict(provenance or {}))


def main(argv=None) -> None:
    """Parse arguments, initialise the observer, write the JSON (atomically) and a summary."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    fr = fr_from_stage_config(cfg)
    out = output_path(cfg["outpath"], "observer.json")
    refuse_overwriting_inputs(out, cfg["_source"], files={"label_location": cfg["label_location"],
                                                          "face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"]},
                              folders={"dataset.path": cfg["dataset"]["path"]})
    overrides = {k: cfg[k] for k in OPTION_KEYS}
    options = resolve_options(cfg["variant"], overrides)
    provenance = public(cfg)
    if not cfg["allow_foreign_labels"]:
        provenance.pop("allow_foreign_labels")
    if is_paper(options) and cfg["variant"] == "paper" and all(cfg[k] is None for k in OPTION_KEYS) \
            and cfg["cv_folds"] == SCHEMA["cv_folds"].default:
        # the published method: the observer file stays exactly what it was before FROQ+ existed
        for key in ("variant", "cv_folds", *OPTION_KEYS):
            provenance.pop(key)
    # under torchrun each rank computes the norms of its shard; run_images hands every rank all
    # ranks' norms (merged from their resume files), so the selection sees the whole set
    with distributed.stage_lock(out, fr.device) as rank:
        failures = FailureLog("observer init")
        start = time.perf_counter()
        result = calibrate_observer(
            fr, cfg["dataset"]["path"], cfg["label_location"], variant=cfg["variant"], overrides=overrides,
            provenance=provenance, failures=failures, batch_size=cfg["dataset"]["batch_size"],
            top_n=cfg["top_n"], label_column=cfg["label_column"], num_workers=cfg["num_workers"],
            autocast=cfg["autocast"], resume_path=out, cv_folds=cfg["cv_folds"], seed=cfg["seed"],
            paths=read_image_list(cfg["dataset"]["list"]) if cfg["dataset"].get("list") else None,
            allow_foreign_labels=cfg["allow_foreign_labels"])
        if not rank.main:  # rank 0 writes the observer file
            return
        write_json(out, result)
        if "features" in result:
            chosen = ", ".join(f"{f['layer']}:{f['statistic']}{'(-)' if f['sign'] < 0 else ''}"
                               for f in result["features"])
            best = result["greedy"][len(result["features"]) - 1]["spearman"]
        else:
            chosen = ", ".join(result["selected_layers"])
            best = result["greedy"][len(result["selected_layers"]) - 1]["spearman"]
        line = (f"observer: {out} ({result['calibration']['images']} calibration images; selected "
                f"{chosen}; Spearman {best:.4f}; {failures.summary()})")
        if "stability" in result:
            line = f"{line[:-1]}; {stability_text(result['stability'], result['selected_layers'])})"
        finish_stage(out, "observer_init", label="observer init", images=result["calibration"]["images"],
                     failures=failures, started=start, meta=None,  # the observer JSON is its own record
                     line=line)

if __name__ == "__main__":
    sys.exit(run_main(main))
