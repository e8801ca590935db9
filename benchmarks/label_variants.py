"""Which pseudo-labels make the better FROQ observer? Label variants (component weights, noise
strength and model, occlusion cell sizes, the IWBF'23 optimisation with its ε and pairing), each
used to calibrate the paper's observer on the same calibration set and evaluated on a benchmark —
without an extra forward pass per variant.

    python benchmarks/label_variants.py --calibration DIR --labels CSV [--relative CSV] \
        --images DIR --pairs FILE --work DIR [--target-norms NPY] [--fr configs/fr/dlib_resnet.yaml]
    python benchmarks/label_variants.py --calibration DIR --label-csv paper=CSV --label-csv NAME=CSV ... \
        --images DIR --pairs FILE --work DIR [--calibration-norms NPY] [--target-norms NPY]

(The second form evaluates finished label files, e.g. of the whole calibration pool.)

1. ``--labels``: a labels CSV of the calibration folder computed once with several noise strengths
   and cell sizes (``dataset.alphas=[0.001,...]``, ``dataset.mpx=[19,38]``: its ``noise_<α>`` and
   ``occlusion_<mpx>`` columns); ``--relative``: optionally a second run with
   ``dataset.noise_model=relative`` (its ``noise_<α>`` columns). Every component variant is a
   weighted mean of these columns — the same formula as the labels stage (checked below).
2. Once (cached in ``--work``): every layer's per-image L2 norm of the calibration images and of the
   benchmark images (``observer.initialization.collect_norms``; ``--target-norms`` reuses a cached
   statistics array ``(N, L, S)`` whose first statistic is ``l2``, with ``.paths.csv`` and
   ``.layers.json`` beside it), the calibration images' FR embeddings (for the optimisation) and the
   benchmark images' embeddings (``evaluation.comparison_scores.protocol_embeddings``).
3. Per variant: the label CSV in ``--work/variants/<name>.csv`` (``path,quality``), its Spearman ρ
   with the paper's label, the paper's layer selection on it (``observer.initialization.select_layers``),
   the benchmark qualities (mean norm of the selected layers) and the normalised EDC pAUC at FMR 1e-3
   (discard 0–0.3) on LFW folds 1–3 and on the dense identity-folder protocol of the same images
   (every genuine pair, 100,000 seeded impostors, 95 % bootstrap interval over identities).
4. ``--work/label_variants.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)  # the repository, never this folder

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from baselineFIQA.label_optimisation import OptimisationSettings, optimise_labels  # noqa: E402
from benchmarks.calibration_size import cached_norms  # noqa: E402
from froq.core.io import atomic_open, read_csv, read_json, write_csv, write_json  # noqa: E402

log = logging.getLogger("label_variants")

PAPER_ALPHA, PAPER_CELL = "0.001", "19"
EPSILONS = (0.001, 0.01, 0.1, 0.5)
PAIRINGS = {"k20": {"pairing": "clusters", "clusters": 20},   # published k; here k ≥ images: all ordered pairs
            "k2": {"pairing": "clusters", "clusters": 2},     # one random partner in the other cluster
            "all": {"pairing": "all"}}                        # every unordered pair once


def read_columns(path: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(paths, {column: values}) of a labels CSV."""
    rows = read_csv(path, required=("path",))
    cols = {c: np.array([float(r[c]) for r in rows]) for c in rows[0] if c != "path"}
    return [r["path"] for r in rows], cols


def component_variants(cols: dict[str, np.ndarray], relative: dict[str, np.ndarray] | None) -> dict:
    """{name: label} from the component columns (module doc, step 1)."""
    flip, occ = cols["flip"], cols[f"occlusion_{PAPER_CELL}"]
    noise = {a.split("_", 1)[1]: v for a, v in cols.items() if a.startswith("noise_")}
    out = {"paper": (flip + noise[PAPER_ALPHA] + occ) / 3}
    for a, v in noise.items():
        if a != PAPER_ALPHA:
            out[f"alpha_{a}"] = (flip + v + occ) / 3
    cells = sorted(int(c.split("_")[1]) for c in cols if c.startswith("occlusion_"))
    if len(cells) > 1:
        occ_all = np.mean([cols[f"occlusion_{c}"] for c in cells], axis=0)
        out["cells_" + "_".join(map(str, cells))] = (flip + noise[PAPER_ALPHA] + occ_all) / 3
        for c in cells:
            if str(c) != PAPER_CELL:
                out[f"cell_{c}"] = (flip + noise[PAPER_ALPHA] + cols[f"occlusion_{c}"]) / 3
    out["weights_1_0_1"] = (flip + occ) / 2
    out["weights_0_0_1"] = occ
    out["weights_1_0_0"] = flip
    if relative is not None:
        for a, v in relative.items():
            if a.startswith("noise_"):
                out[f"relative_{a.split('_', 1)[1]}"] = (flip + v + occ) / 3
    return out


def cached(work: Path, name: str, compute) -> tuple[list[str], np.ndarray]:
    """(paths, array) cached as ``<work>/<name>.npy`` + ``.paths.csv``; ``compute()`` gives them."""
    npy, index = work / f"{name}.npy", work / f"{name}.paths.csv"
    if npy.is_file() and index.is_file():
        return [r["path"] for r in read_csv(index, required=("path",))], np.load(npy, allow_pickle=False)
    paths, values = compute()
    with atomic_open(npy, "wb") as fh:
        np.save(fh, values, allow_pickle=False)
    write_csv(index, ["path"], ([p] for p in paths))
    return paths, values


def cached_statistics_l2(npy: str, fr) -> tuple[list[str], list[str], np.ndarray]:
    """(layers, paths, (N, L) L2 norms) of a cached statistics array ``(N, L, S)`` whose first
    statistic is ``l2`` (``benchmarks/ablation.py``'s cache: ``.paths.csv``, ``.layers.json``)."""
    base = str(npy)[:-4]
    meta = read_json(f"{base}.layers.json")
    if meta["statistics"][0] != "l2" or meta["model"]["weights_sha256"] != fr.identity()["weights_sha256"]:
        raise SystemExit(f"{npy}: not l2 statistics of this model")
    paths = [r["path"] for r in read_csv(f"{base}.paths.csv", required=("path",))]
    return meta["layers"], paths, np.asarray(np.load(npy, mmap_mode="r")[:, :, 0], dtype=np.float64)


def main(argv=None) -> int:
    """Run the study (module doc); prints the table, writes ``label_variants.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibration", required=True)
    p.add_argument("--labels", default=None, help="multi-column labels CSV (component and IWBF variants)")
    p.add_argument("--label-csv", action="append", default=[], metavar="NAME=CSV",
                   help="a finished label variant (column quality); without --labels the first is the paper's")
    p.add_argument("--calibration-norms", default=None, help="cached (N, L, S) statistics of the calibration folder")
    p.add_argument("--relative", default=None)
    p.add_argument("--images", required=True, help="aligned faces of the benchmark (identity folders)")
    p.add_argument("--pairs", required=True, help="LFW-style pairs.txt over --images")
    p.add_argument("--work", required=True)
    p.add_argument("--target-norms", default=None)
    p.add_argument("--fr", default="configs/fr/dlib_resnet.yaml")
    p.add_argument("--impostors", type=int, default=100_000)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--top-n", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from baselineFIQA.optimize import embed_images
    from evaluation import bootstrap
    from evaluation.comparison_scores import cosine_scores, protocol_embeddings
    from evaluation.edc import fmr_key, pair_quality
    from evaluation.evaluate import BootstrapSpec, evaluate_pairs
    from evaluation.identity_folders import read_identity_folders
    from evaluation.pair_protocols import read_lfw_pairs
    from face_recognition_model.loading import load_fr_model
    from observer.initialization import select_layers

    torch.set_num_threads(1)
    work = Path(args.work)
    (work / "variants").mkdir(parents=True, exist_ok=True)
    fr = load_fr_model(args.fr, "cpu")
    extra = {}
    for item in args.label_csv:
        name, _, path = item.partition("=")
        rows = read_csv(path, required=("path", "quality"))
        extra[name] = ({r["path"]: float(r["quality"]) for r in rows})
    if args.labels is None:
        if not extra:
            raise SystemExit("give --labels or --label-csv")
        first = next(iter(extra.values()))
        cal_paths = list(first)
        named = [("paper" if i == 0 else name, v) for i, (name, v) in enumerate(extra.items())]
        labels = {name: np.array([v[p] for p in cal_paths]) for name, v in named}
        cols = None
    else:
        cal_paths, cols = read_columns(args.labels)
    relative = None
    if args.relative:
        rel_paths, relative = read_columns(args.relative)
        if rel_paths != cal_paths:
            raise SystemExit(f"{args.relative}: other images than {args.labels}")
    if cols is not None:
        if "noise_" + PAPER_ALPHA not in cols:
            raise SystemExit(f"{args.labels}: no noise_{PAPER_ALPHA} column: run the labels with several alphas")
        # the columns mean what the variants assume: the stage's label = mean of its three terms
        if np.abs(cols["quality"] - (cols["flip"] + cols["noise"] + cols["occlusion"]) / 3).max() > 1e-6:
            raise SystemExit(f"{args.labels}: quality is not the mean of flip, noise, occlusion")
        labels = component_variants(cols, relative)
        labels.update({name: np.array([v[p] for p in cal_paths]) for name, v in extra.items()})

    if args.calibration_norms:
        cal_layers, cal_read, cal_norms = cached_statistics_l2(args.calibration_norms, fr)
        row = {p: i for i, p in enumerate(cal_read)}
        cal_norms = cal_norms[[row[p] for p in cal_paths]]
    else:
        cal_layers, cal_read, cal_norms = cached_norms(fr, Path(args.calibration), cal_paths, work, "calibration_norms")
        if cal_read != cal_paths:
            raise SystemExit("unreadable calibration images: fix the folder")
    def calibration_embeddings():  # only needed for the IWBF variants of --labels
        result = embed_images(fr, args.calibration, cal_paths)
        return result.paths, result.values

    if cols is not None:
        emb_paths, cal_emb = cached(work, "calibration_embeddings", calibration_embeddings)
        if emb_paths != cal_paths:
            raise SystemExit("calibration embeddings of other images: clear --work")

    lfw = read_lfw_pairs(args.images, args.pairs, name="lfw")
    dense = read_identity_folders(args.images, name="dense", impostors=args.impostors, seed=0)
    if args.target_norms:
        layers, tgt_paths, tgt_norms = cached_statistics_l2(args.target_norms, fr)
    else:
        layers, tgt_paths, tgt_norms = cached_norms(fr, work, "target_norms", args.images, dense.images)
    if layers != cal_layers:
        raise SystemExit("the calibration and benchmark norms list other layers: clear --work")
    row_of = {p: i for i, p in enumerate(tgt_paths)}
    emb = protocol_embeddings(fr, dense, work / "embeddings")
    emb_of = {p: i for i, p in enumerate(dense.images)}

    def protocol_arrays(protocol):
        idx = np.array([row_of[p] for p in protocol.images])
        e = emb[[emb_of[p] for p in protocol.images]]
        return idx, cosine_scores(e, protocol.pairs)

    benches = {name: (proto, *protocol_arrays(proto)) for name, proto in (("lfw", lfw), ("dense", dense))}

    # label variants: the components, then the optimisation of the paper's label
    paper = labels["paper"]
    for tag, pairing in (PAIRINGS.items() if cols is not None else ()):
        for positions in ("index", "fraction"):
            for eps in EPSILONS:
                s = OptimisationSettings(epsilon=eps, positions=positions, **pairing)
                res = optimise_labels(cal_paths, paper, cal_emb, s)
                labels[f"iwbf_{tag}_{positions}_eps{eps:g}"] = res.quality

    results = {}
    started = time.perf_counter()
    for name, y in labels.items():
        write_csv(work / "variants" / f"{name}.csv", ["path", "quality"], zip(cal_paths, y.tolist()))
        rec = select_layers(layers, cal_norms, y, args.top_n)
        cols_sel = [layers.index(n) for n in rec["selected_layers"]]
        img_q = tgt_norms[:, cols_sel].mean(axis=1)
        entry = {"spearman_with_paper": float(spearmanr(y, paper)[0]),
                 "selected_layers": rec["selected_layers"],
                 "calibration_spearman": rec["greedy"][len(cols_sel) - 1]["spearman"]}
        for bname, (proto, idx, scores) in benches.items():
            q = img_q[idx]
            pq = pair_quality(q[proto.pairs[:, 0]], q[proto.pairs[:, 1]], "min")
            boot = None
            if bname == "dense" and args.resamples:
                boot = BootstrapSpec(bootstrap.identity_clusters(proto.identities, proto.pairs),
                                     resamples=args.resamples, seed=0)
            metrics, _ = evaluate_pairs(scores, proto.genuine, {"q": pq}, [pq], [1e-3], 0.3, boot=boot)
            m = metrics["q"][fmr_key(1e-3)]
            entry[bname] = {"pauc_norm": float(m["pauc_norm"]),
                            "ci": m.get("pauc_norm_ci")}
        results[name] = entry
        log.info("%s: rho %.3f lfw %.3f dense %.3f", name, entry["spearman_with_paper"],
                 entry["lfw"]["pauc_norm"], entry["dense"]["pauc_norm"])
    write_json(work / "label_variants.json", {"calibration": args.calibration, "labels": args.labels,
                                              "relative": args.relative, "images": args.images,
                                              "impostors": args.impostors, "resamples": args.resamples,
                                              "seconds": round(time.perf_counter() - started, 1),
                                              "variants": results})
    print("| label variant | ρ with paper label | layers | LFW folds 1–3 | dense (95 % CI) |")
    print("|---|---|---|---|---|")
    for name, e in results.items():
        ci = e["dense"]["ci"]
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""
        print(f"| {name} | {e['spearman_with_paper']:.4f} | {len(e['selected_layers'])} | "
              f"{e['lfw']['pauc_norm']:.3f} | {e['dense']['pauc_norm']:.3f}{ci_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
