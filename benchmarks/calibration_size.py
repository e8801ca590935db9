"""How large must the calibration set be? FROQ observers calibrated on subsamples of a labelled pool,
each evaluated on a verification benchmark — without a single extra forward pass per observer.

    python benchmarks/calibration_size.py --pool DIR --labels CSV --images DIR --pairs FILE \
        --work DIR [--sizes 100,300,600,1000,all] [--seeds 10] [--fr configs/fr/dlib_resnet.yaml]

1. Once (cached in ``--work``): every layer's per-image L2 norm of the pool images and of the
   benchmark images (one hooked forward pass each, ``observer.initialization.collect_norms``), and
   the benchmark images' embeddings (``evaluation.comparison_scores.protocol_embeddings``).
2. For every size and seed: a random subsample of the labelled pool images (without replacement;
   ``all`` = the whole pool, one run), the layer selection of stage 2 on its cached norms and
   labels (``observer.initialization.select_layers``), the benchmark images' FROQ qualities (mean
   norm of the selected layers, from the cached norms) and the normalised EDC pAUC of the
   benchmark (``evaluation.evaluate.evaluate_pairs``: pair quality min, FMR 1e-3, discard 0–0.3).
3. ``--work``/``calibration_size.json`` (every run) and a table per size: median, min, max,
   spread (max − min) and sd of the normalised pAUC, how many observers selected the same layers
   as the one calibrated on the whole pool (with ``all`` among the sizes), and the median
   calibration ρ.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)  # the repository, never this folder

import numpy as np  # noqa: E402

from froq.core.io import atomic_open, read_csv, read_json, read_quality_csv, write_csv, write_json  # noqa: E402

log = logging.getLogger("calibration_size")


def cached_norms(fr, root: Path, paths: list[str], work: Path, name: str) -> tuple[list[str], list[str], np.ndarray]:
    """Per-layer norms of ``root/paths`` (one hooked pass), cached as ``<work>/<name>.norms.npy`` +
    ``.paths.csv`` + ``.layers.json``. Out: (layers, paths read, (N, L) norms)."""
    from observer.initialization import collect_norms

    npy, index, layers_file = (work / f"{name}.norms.npy", work / f"{name}.paths.csv",
                               work / f"{name}.layers.json")
    if npy.is_file() and index.is_file() and layers_file.is_file():
        read = [r["path"] for r in read_csv(index, required=("path",))]
        return read_json(layers_file), read, np.load(npy, allow_pickle=False)
    started = time.perf_counter()
    layers, read, norms = collect_norms(fr, root, paths, batch_size=32, autocast=False,
                                        resume_path=work / f"{name}.norms")
    log.info("%s: norms of %d images x %d layers in %.1f s", name, len(read), len(layers),
             time.perf_counter() - started)
    with atomic_open(npy, "wb") as fh:
        np.save(fh, norms, allow_pickle=False)
    write_csv(index, ["path"], ([p] for p in read))
    write_json(layers_file, layers)
    return layers, read, norms


def normalised_pauc(scores, genuine, pair_quality, fmr: float = 1e-3, limit: float = 0.3) -> float:
    """Normalised EDC pAUC (lower = better) of one set of genuine-pair qualities."""
    from evaluation.edc import fmr_key
    from evaluation.evaluate import evaluate_pairs

    metrics, _ = evaluate_pairs(scores, genuine, {"q": pair_quality}, [pair_quality], [fmr], limit)
    return float(metrics["q"][fmr_key(fmr)]["pauc_norm"])


def main(argv=None) -> int:
    """Run the study (module doc); prints the table, writes ``calibration_size.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", required=True, help="folder of aligned calibration-pool faces")
    p.add_argument("--labels", required=True, help="pseudo-labels of the pool (paths relative to --pool)")
    p.add_argument("--images", required=True, help="aligned faces of the benchmark's pairs")
    p.add_argument("--pairs", required=True, help="LFW-style pairs.txt")
    p.add_argument("--work", required=True, help="folder for the cached norms and the results")
    p.add_argument("--fr", default="configs/fr/dlib_resnet.yaml")
    p.add_argument("--sizes", default="100,300,600,1000,all")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-only", action="store_true", help="only compute the cached norms and embeddings")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from evaluation.comparison_scores import cosine_scores, protocol_embeddings
    from evaluation.edc import pair_quality
    from evaluation.pair_protocols import read_lfw_pairs
    from face_recognition_model.loading import load_fr_model
    from observer.initialization import select_layers

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fr = load_fr_model(args.fr, "cpu")
    from froq.core.images import list_images

    layers, pool_read, pool_norms = cached_norms(fr, Path(args.pool), list_images(args.pool), work, "pool")
    protocol = read_lfw_pairs(args.images, args.pairs, name="lfw")
    layers2, bench_read, bench_norms = cached_norms(fr, Path(args.images), protocol.images, work, "pairs")
    if layers2 != layers or bench_read != protocol.images:
        raise SystemExit("cached norms do not match the model or the benchmark images: clear --work")
    started = time.perf_counter()
    emb = protocol_embeddings(fr, protocol, work / "embeddings")
    log.info("embeddings ready in %.1f s", time.perf_counter() - started)
    if args.cache_only:
        return 0
    labels = read_quality_csv(args.labels)
    keep = [i for i, p in enumerate(pool_read) if p in labels]
    if len(keep) < len(pool_read):
        log.warning("%d of %d pool images have no label: left out", len(pool_read) - len(keep), len(pool_read))
    pool_read, pool_norms = [pool_read[i] for i in keep], pool_norms[keep]
    scores = cosine_scores(emb, protocol.pairs)
    genuine = protocol.genuine
    gen_pairs = protocol.pairs[genuine]
    y_all = np.array([labels[p] for p in pool_read])

    runs = []
    sizes = [s.strip() for s in args.sizes.split(",")]
    started = time.perf_counter()
    for size in sizes:
        n = len(pool_read) if size == "all" else int(size)
        if n > len(pool_read):
            log.warning("size %d > pool (%d): skipped", n, len(pool_read))
            continue
        for seed in (range(1) if n == len(pool_read) else range(args.seeds)):
            pick = np.sort(np.random.default_rng(seed).choice(len(pool_read), n, replace=False))
            rec = select_layers(layers, pool_norms[pick], y_all[pick], args.top_n)
            cols = [layers.index(name) for name in rec["selected_layers"]]
            img_q = bench_norms[:, cols].mean(axis=1)
            pq = pair_quality(img_q[gen_pairs[:, 0]], img_q[gen_pairs[:, 1]], "min")
            runs.append({"size": n, "seed": seed, "selected_layers": rec["selected_layers"],
                         "calibration_spearman": rec["greedy"][len(cols) - 1]["spearman"],
                         "pauc_norm": normalised_pauc(scores, genuine, pq)})
    study_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    random_paucs = []
    for _ in range(10):  # the random reference: uniform per-image qualities
        q = rng.random(len(protocol.images))
        random_paucs.append(normalised_pauc(scores, genuine, pair_quality(q[gen_pairs[:, 0]], q[gen_pairs[:, 1]], "min")))
    random_ref = statistics.mean(random_paucs)
    table = []
    full = next((set(r["selected_layers"]) for r in runs if r["size"] == len(pool_read)), None)
    for n in sorted({r["size"] for r in runs}):
        vals = [r["pauc_norm"] for r in runs if r["size"] == n]
        rhos = [r["calibration_spearman"] for r in runs if r["size"] == n]
        same = sum(set(r["selected_layers"]) == full for r in runs if r["size"] == n) if full else None
        table.append({"size": n, "runs": len(vals), "same_as_full_pool": same,
                      "pauc_norm_median": statistics.median(vals),
                      "pauc_norm_min": min(vals), "pauc_norm_max": max(vals),
                      "pauc_norm_spread": max(vals) - min(vals),
                      "pauc_norm_sd": statistics.pstdev(vals),
                      "rho_median": statistics.median(rhos)})
    result = {"fr": args.fr, "pool": args.pool, "labels": args.labels, "images": args.images,
              "pairs": args.pairs, "pool_images": len(pool_read), "pairs_n": int(len(genuine)),
              "layers": len(layers), "selection_seconds_total": round(study_s, 2),
              "random_pauc_norm": random_ref, "table": table, "runs": runs,
              "machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch threads {args.threads}"}
    write_json(work / "calibration_size.json", result)
    print(f"normalised pAUC on {protocol.summary()} (FMR 1e-3, discard 0-0.3, pair quality min; "
          f"random {random_ref:.3f}); {len(runs)} observers selected in {study_s:.1f} s")
    print("| calibration images | observers | pAUC median | min | max | spread | sd | same layers as the full pool "
          "| calibration rho |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in table:
        same = "-" if t["same_as_full_pool"] is None else f"{t['same_as_full_pool']}/{t['runs']}"
        print(f"| {t['size']} | {t['runs']} | {t['pauc_norm_median']:.3f} | {t['pauc_norm_min']:.3f} | "
              f"{t['pauc_norm_max']:.3f} | {t['pauc_norm_spread']:.3f} | {t['pauc_norm_sd']:.3f} | {same} | "
              f"{t['rho_median']:.3f} |")
    print(json.dumps({"written": str(work / "calibration_size.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
