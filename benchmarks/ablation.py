"""FROQ+ ablation: each observer option alone and the ``plus`` variant against ``paper``.

    python benchmarks/ablation.py -c configs/ablation_pool.yaml [--set outdir=DIR ...]

1. One hooked pass over the calibration folder and over the benchmark folder computes every
   statistic of every layer (``observer.initialization.collect_statistics``); the arrays are cached
   in ``stats_dir/stats_<name>.npy`` (+ ``.paths.csv``, ``.layers.json``; an interrupted pass
   resumes), so the variants cost no forward passes.
2. For every variant (``{variant: paper|plus, <option>: value}``, the keys of ``configs/init.yaml``,
   resolved by ``observer.initialization.resolve_options``) the observer record
   is computed from the calibration statistics and labels only (``observer_from_statistics``: the
   same function the initialisation stage uses) and written to ``outdir/observers/<variant>.json``;
   the benchmark images' qualities (``observer.inference.quality_from_statistics``: the same
   combination the inference stage uses) go to ``outdir/quality/<variant>.csv``.
3. ``evaluation/main.py`` scores all variants as quality CSV methods on the configured
   benchmarks (EDC pAUC with the evaluation's bootstrap intervals, identities resampled).
4. Paired comparison with ``reference`` (the paper): on the same identity resamples
   (``evaluation.bootstrap.bootstrap_samples``) the relative change of the normalised pAUC,
   1 − pAUC(variant) / pAUC(paper), with its 95 % percentile interval → ``paired.json`` and a table.
   ``qualities`` adds finished quality CSVs of the benchmark images (e.g. the pseudo-label method
   itself, ``froq labels`` on the target folder) to steps 3 and 4 beside the variants.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _HERE:
    # run as a file: the repository root goes first on sys.path, so that this folder's scripts
    # (methods.py, labels.py, scale.py, ...) cannot hide the packages of the same names
    sys.path[0] = str(_HERE.parent)

import logging  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from face_recognition_model.loading import fr_from_stage_config  # noqa: E402
from froq.core.cli import run_main, setup_logging, stage_parser  # noqa: E402
from froq.core.config import Key, load_config, positive_int  # noqa: E402
from froq.core.errors import FroqError  # noqa: E402
from froq.core.images import FailureLog, list_images  # noqa: E402
from froq.core.io import (discard_partial, read_csv, read_json, read_quality_csv,  # noqa: E402
                          write_csv, write_json, write_npy)
from froq.core.stage import COMMON_KEYS  # noqa: E402
from observer.hooks import STATISTICS  # noqa: E402
from observer.inference import quality_from_statistics  # noqa: E402
from observer.initialization import (collect_statistics, network_costs,  # noqa: E402
                                     observer_from_statistics, resolve_options)

log = logging.getLogger("benchmarks.ablation")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config"),
    "calibration": Key("path", help="folder of labelled calibration faces"),
    "labels": Key("path", help="pseudo-label CSV of the calibration folder"),
    "label_column": Key("str", default="quality"),
    "target": Key("path", help="folder of benchmark faces to score (searched recursively)"),
    "statistics": Key("list", default=list(STATISTICS), help="statistics computed in the cached pass"),
    "batch_size": Key(positive_int, default=32),
    "top_n": Key(positive_int, default=10),
    "cv_folds": Key(positive_int, default=5),
    "variants": Key("dict", help="{name: {observer option: value}} (options of configs/init.yaml)"),
    "evaluation": Key("dict", default=None, nullable=True,
                      help="evaluation config (configs/evaluation.yaml keys) minus 'qualities'"),
    "qualities": Key("dict", default=None, nullable=True,
                     help="{name: quality CSV of the target images} evaluated beside the variants"),
    "reference": Key("str", default="paper", help="variant the others are compared with (paired)"),
    "paired_resamples": Key(positive_int, default=1000, help="identity resamples of the paired comparison"),
    "outdir": Key("path", help="observers, quality CSVs and the evaluation"),
    "stats_dir": Key("path", default=None, help="cache of the statistics (null: outdir)"),
    **COMMON_KEYS,
}


def cached_statistics(fr, root: str | Path, name: str, outdir: Path, statistics, batch_size: int,
                      num_workers: int) -> tuple[list[str], list[str], np.ndarray]:
    """Every layer's ``statistics`` for every image of ``root`` (one hooked pass), cached.

    In: FR model, folder, cache name, output folder, statistics, batch settings.
    Out: (layers, relative paths, (N, L, S) float64). A finished cache is read back (the layer and
    statistic names must match); an interrupted pass resumes from ``stats_<name>.partial``.
    """
    base = outdir / f"stats_{name}"
    meta_path = Path(f"{base}.layers.json")
    if meta_path.is_file():
        meta = read_json(meta_path)
        if meta.get("statistics") == list(statistics) and meta.get("model") == fr.identity():
            paths = [row["path"] for row in read_csv(f"{base}.paths.csv", ["path"])]
            values = np.load(f"{base}.npy")
            log.info("%s: cached statistics of %d images", name, len(paths))
            return meta["layers"], paths, values
    failures = FailureLog(f"statistics of {name}")
    start = time.perf_counter()
    layers, paths, values = collect_statistics(fr, root, list_images(root), statistics, batch_size,
                                               num_workers, resume_path=f"{base}.npy",
                                               failures=failures)
    log.info("%s: %d images, %d layers x %d statistics in %.0f s (%s)", name, len(paths),
             len(layers), len(statistics), time.perf_counter() - start, failures.summary())
    write_npy(f"{base}.npy", values)
    discard_partial(f"{base}.npy")
    write_csv(f"{base}.paths.csv", ["path"], [[p] for p in paths])
    write_json(meta_path, {"layers": layers, "statistics": list(statistics), "model": fr.identity(),
                           "root": str(root), "unreadable": [p for p, _ in failures.items]})
    return layers, paths, values


def variant_options(name: str, spec) -> tuple[dict, str | None, str | None]:
    """``{variant: paper|plus, <option>: value, ..., labels?, label_column?}`` of one ablation row
    → (resolved options, its own label CSV or None, its label column or None)."""
    if not isinstance(spec, dict):
        raise FroqError(f"variants.{name}: must be a mapping of observer options (got {spec!r})")
    spec = dict(spec)
    base = spec.pop("variant", "paper")
    labels, column = spec.pop("labels", None), spec.pop("label_column", None)
    return resolve_options(base, spec), labels, column


def score_variants(cfg: dict, cal: tuple, tgt: tuple, outdir: Path,
                   costs: dict | None = None) -> dict[str, str]:
    """Observer record and benchmark qualities of every configured variant, from cached statistics.

    In: the config, the calibration and target (layers, paths, statistics) caches, the output
    folder, the network's depth costs (``observer.initialization.network_costs``; needed by a
    ``depth_budget``). A variant may name its own ``labels`` CSV (and ``label_column``) of the same
    calibration folder, e.g. another label option. Out: ``{variant: quality CSV path}``; writes
    ``observers/<variant>.json`` (the record the initialisation stage would write, minus
    model/provenance) and ``quality/<variant>.csv``."""
    layers, cal_paths, cal_stats = cal
    _, tgt_paths, tgt_stats = tgt
    stats = list(cfg["statistics"])
    out = {}
    for name, spec in cfg["variants"].items():
        options, label_file, column = variant_options(name, spec)
        label_file = label_file or cfg["labels"]
        labels = read_quality_csv(label_file, column=column or cfg["label_column"])
        keep = [i for i, p in enumerate(cal_paths) if p in labels]
        if len(keep) < len(cal_paths):
            log.warning("%s: %d calibration images have no label in %s; left out", name,
                        len(cal_paths) - len(keep), label_file)
        paths = [cal_paths[i] for i in keep]
        y = np.array([labels[p] for p in paths])
        missing = [s for s in options["statistics"] if s not in stats]
        if missing:
            raise FroqError(f"variants.{name}: statistics {missing} are not in the cached pass")
        start = time.perf_counter()
        record = observer_from_statistics(layers, stats, cal_stats[keep], paths, y, options,
                                          cfg["top_n"], cfg["cv_folds"], cfg["seed"], costs=costs)
        record["labels"] = str(label_file)
        q = quality_from_statistics(tgt_stats, layers, stats, record)
        write_json(outdir / "observers" / f"{name}.json", record)
        csv_path = outdir / "quality" / f"{name}.csv"
        write_csv(csv_path, ["path", "quality"], zip(tgt_paths, q.tolist()))
        chosen = record.get("features") or [{"layer": n, "statistic": "l2", "sign": 1}
                                            for n in record["selected_layers"]]
        stab = record.get("stability") or {}
        log.info("%s: %s (%.1f s)%s; early-exit cost %s; same set in %s of %s resamples", name, ", ".join(
            f"{f['layer']}:{f['statistic']}{'(-)' if f['sign'] < 0 else ''}" for f in chosen),
            time.perf_counter() - start,
            f"; CV size {record['cv']['selected_size']}" if "cv" in record else "",
            f"{record['depth']['early_exit_cost']:.3f}" if "depth" in record else "-",
            stab.get("same_selection"), stab.get("resamples"))
        out[name] = str(csv_path)
    return out


def extra_qualities(extra: dict, variants) -> dict[str, str]:
    """The config's ``qualities`` ``{name: CSV}`` checked against the variant names (a mapping or
    any collection of names): a name may not repeat a variant's and every file must exist (a clear
    error otherwise). Out: ``{name: CSV path}``."""
    out = {}
    for name, path in extra.items():
        path = str(path)
        if name in variants:
            raise FroqError(f"qualities.{name}: the name of a variant; give the CSV another name")
        if not Path(path).is_file():
            raise FroqError(f"qualities.{name}: {path} is not a file; give a path,quality CSV of "
                            "the target images (e.g. froq labels on the target folder)")
        out[name] = path
    return out


def paired_comparison(eval_cfg: dict, qualities: dict[str, str], reference: str,
                      resamples: int, seed: int = 0) -> dict:
    """Relative pAUC change of every variant against ``reference`` on the same identity resamples.

    In: the evaluation config as run (its ``outdir`` holds the protocols and the scores it wrote),
    ``{variant: quality CSV}``, the reference variant, resamples and seed. Out: ``{benchmark:
    {variant: {pauc_norm, reference_pauc_norm, reduction, reduction_ci, better_share}}}``; reduction =
    1 − pAUC_norm(variant) / pAUC_norm(reference) (> 0: the variant is better), better_share = the
    share of resamples where the variant's pAUC is lower. FMR = the evaluation's first, discard
    limit its first, pair quality its rule (min, mean or product of the two images' qualities)."""
    from evaluation import bootstrap
    from evaluation.comparison_scores import read_scores_csv
    from evaluation.edc import fmr_key
    from evaluation.evaluate import load_protocol, parse_benchmarks, safe_name
    from evaluation.settings import as_limits, evaluation_settings

    eval_cfg = evaluation_settings(eval_cfg, "ablation evaluation")
    outdir = Path(eval_cfg["outdir"])
    fmr = eval_cfg["fmr"][0]
    limit = as_limits(eval_cfg["discard_limit"])[0]
    rule = eval_cfg["pair_quality"]
    out = {}
    for bench in parse_benchmarks(eval_cfg["benchmarks"], "ablation evaluation"):
        protocol = load_protocol(bench, outdir)
        score_files = sorted((outdir / "scores").glob(f"{safe_name(bench.name)}_*.csv"))
        if not score_files:
            raise FroqError(f"{outdir / 'scores'}: no comparison scores of {bench.name}")
        scores = read_scores_csv(score_files[0], protocol)
        genuine = np.asarray(protocol.genuine, dtype=bool)
        pair_q = {}
        for name, csv_path in qualities.items():
            q = read_quality_csv(csv_path)
            img = np.array([q[p] for p in protocol.images])
            a, b = img[protocol.pairs[:, 0]], img[protocol.pairs[:, 1]]
            pair_q[name] = [{"min": np.minimum(a, b), "mean": (a + b) / 2, "product": a * b}[rule]]
        pair_q["perfect"] = [np.where(genuine, scores, np.inf)]
        clusters = bootstrap.identity_clusters(protocol.identities, protocol.pairs)
        samples = bootstrap.bootstrap_samples(scores, genuine, pair_q, [fmr], [limit], clusters,
                                              resamples, seed)
        key = fmr_key(fmr)
        ref = samples[reference][key][limit]["pauc_norm"]
        results = json_results(outdir)[bench.name]
        model_name = next(iter(results))  # the evaluation's first (the ablation's only) model
        out[bench.name] = {}
        for name in qualities:
            if name == reference:
                continue
            mine = samples[name][key][limit]["pauc_norm"]
            point_ref = results[model_name][reference]["pauc_norm"]
            point = results[model_name][name]["pauc_norm"]
            out[bench.name][name] = {
                "pauc_norm": point, "reference_pauc_norm": point_ref,
                "reduction": 1.0 - point / point_ref,
                "reduction_ci": bootstrap.interval(1.0 - mine / ref),
                "better_share": float(np.mean(mine < ref)), "resamples": resamples,
                "unit": clusters.unit}
    return out


def json_results(outdir: Path) -> dict:
    """The evaluation's ``results.json`` in ``outdir``."""
    return read_json(outdir / "results.json")


def paired_table(paired: dict, reference: str) -> str:
    """Markdown: per variant and benchmark, the relative pAUC reduction against ``reference``."""
    benches = list(paired)
    names = list(dict.fromkeys(n for b in benches for n in paired[b]))
    lines = ["| variant | " + " | ".join(f"{b}: 1 − pAUC/pAUC({reference}) [95 % CI] (share of "
                                            "resamples better)" for b in benches) + " |",
             "|---|" + ":---:|" * len(benches)]
    for n in names:
        cells = []
        for b in benches:
            r = paired[b][n]
            lo, hi = r["reduction_ci"]
            cells.append(f"{100 * r['reduction']:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                         f"({100 * r['better_share']:.0f} %)")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Parse arguments, cache the statistics, score every variant, evaluate them."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    extra = extra_qualities(cfg["qualities"] or {}, cfg["variants"])  # checked before any forward
    outdir = Path(cfg["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)
    fr = fr_from_stage_config(cfg)
    stats = list(cfg["statistics"])
    cache = Path(cfg["stats_dir"] or outdir)
    cache.mkdir(parents=True, exist_ok=True)
    cal = cached_statistics(fr, cfg["calibration"], "calibration", cache, stats,
                            cfg["batch_size"], cfg["num_workers"])
    tgt = cached_statistics(fr, cfg["target"], "target", cache, stats,
                            cfg["batch_size"], cfg["num_workers"])
    if cal[0] != tgt[0]:
        raise FroqError("the cached statistics of calibration and target name different layers")
    qualities = score_variants(cfg, cal, tgt, outdir, network_costs(fr))
    qualities.update(extra)
    if cfg["evaluation"]:
        from evaluation.main import main as evaluation_main
        eval_cfg = dict(cfg["evaluation"], qualities=qualities)
        eval_cfg.setdefault("outdir", str(outdir / "evaluation"))
        eval_cfg.setdefault("device", cfg["device"])
        eval_path = outdir / "evaluation.yaml"
        write_json(eval_path, eval_cfg)  # JSON is YAML: the evaluation reads it as its config
        evaluation_main(["-c", str(eval_path)])
        if cfg["reference"] in qualities:
            paired = paired_comparison(eval_cfg, qualities, cfg["reference"], cfg["paired_resamples"],
                                       cfg["seed"])
            write_json(outdir / "paired.json", paired)
            table = paired_table(paired, cfg["reference"])
            (outdir / "paired.md").write_text(table + "\n", encoding="utf-8")
            print(table)


if __name__ == "__main__":
    sys.exit(run_main(main))
