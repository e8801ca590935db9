"""Do IJB-C 1:1 and full Adience fit in memory and time? The streaming evaluation of both on synthetic
embeddings of the real sizes (no images, no FR model), each part in a fresh process so that its
peak resident memory is its own.

    python benchmarks/large_protocols.py [--part ijbc|adience] [--work DIR] [--images 469375]
        [--templates 23124] [--pairs 15658489] [--dim 512] [--adience 19370] [--face-ids 2284]

IJB-C: a template/media list and a template pair list of the given sizes are written in the
release's format to ``--work`` (once per size) and read back with ``evaluation.ijbc``'s readers;
random chip embeddings ([original | mirrored], float32) arrive in chunks of ``ijbc.EMBED_CHUNK``
as from the embedding store and are pooled into templates chunk by chunk; then template pair
scores, the exact impostor thresholds (``evaluation.streaming``) and the EDC metrics. Adience: the
mated pairs of ``--adience`` images with random face ids (embedding = its id's random centre plus
noise), then every pair's score from Gram blocks
of the unit embeddings, streamed into the thresholds, and the metrics. Both: two quality methods and
ten random seeds, FMR 1e-4 and 1e-3, discard limits 0.2 and 0.3 (the paper's table settings).
Prints seconds per step and the peak resident memory (``ru_maxrss``) of the part so far.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation import adience, comparison_scores, edc, ijbc, streaming  # noqa: E402
from evaluation.evaluate import evaluate_pairs  # noqa: E402

FMRS, LIMITS, SEEDS = [1e-4, 1e-3], [0.2, 0.3], 10


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _step(label: str, started: float) -> float:
    now = time.perf_counter()
    print(f"{label:<52} {now - started:7.2f} s   peak RSS {_peak_gb():5.2f} GiB", flush=True)
    return now


def _metrics(scored: streaming.StreamedScores, pair_quality, n_images: int, rng, t: float, what: str) -> float:
    """Thresholds from the streamed impostors, then the metrics of two methods and the random seeds."""
    th = streaming.impostor_thresholds(scored.impostor_chunks, scored.n_impostor, FMRS)
    t = _step(f"{what}: thresholds from {scored.n_impostor:,} streamed impostors", t)
    n_gen = len(scored.genuine_scores)
    methods = {m: pair_quality(rng.random(n_images)) for m in ("a", "b")}
    metrics, _ = evaluate_pairs(scored.genuine_scores, np.ones(n_gen, bool), methods,
                                [pair_quality(rng.random(n_images)) for _ in range(SEEDS)], FMRS, LIMITS,
                                thresholds=th)
    m = metrics["a"][edc.fmr_key(FMRS[1])]
    return _step(f"{what}: EDC of 2 methods + {SEEDS} seeds over {n_gen:,} genuine "
                 f"(pAUC_norm {m['pauc_norm']:.3f})", t)


def run_ijbc(args, rng) -> None:
    """The IJB-C 1:1 part (see module doc)."""
    work = Path(args.work)
    t = time.perf_counter()
    tids = np.sort(rng.integers(0, args.templates, args.images))
    tids[: args.templates] = np.arange(args.templates)          # every template has an image
    mids = tids * 10 + rng.integers(0, 4, args.images)         # a few media per template
    stamp = work / f"sizes_{args.images}_{args.templates}_{args.pairs}.done"
    if not stamp.is_file():  # the files are written once per size (deterministic: seed 0)
        with open(work / "ijbc_face_tid_mid.txt", "w") as fh:
            fh.writelines(f"{k + 1}.jpg {a} {b}\n" for k, (a, b) in enumerate(zip(tids.tolist(), mids.tolist())))
        pairs = rng.integers(0, args.templates, (args.pairs, 2))
        labels = (rng.random(args.pairs) < 0.00125).astype(np.int64)
        np.savetxt(work / "ijbc_template_pair_label.txt", np.column_stack([pairs, labels]), fmt="%d")
        del pairs, labels
        stamp.write_text("")
    t = _step("ijbc: synthetic meta files (written once)", t)
    names, row_t, row_m = ijbc.read_template_media(work / "ijbc_face_tid_mid.txt")
    t = _step(f"ijbc: read template/media list ({len(names):,} rows)", t)
    got = ijbc.read_template_pairs(work / "ijbc_template_pair_label.txt")
    t = _step(f"ijbc: read template pair list ({len(got):,} pairs)", t)
    template_ids, row_template = np.unique(row_t, return_inverse=True)
    proto = ijbc.TemplateProtocol(
        name="synthetic", image_root=work, images=names, pairs=np.searchsorted(template_ids, got[:, :2]),
        genuine=got[:, 2] == 1, folds=None, source="synthetic", template_ids=template_ids,
        row_image=np.arange(len(names)), row_template=row_template, row_media=row_m, source_names=names,
        landmarks=np.zeros((len(names), 5, 2)), detector_scores=np.ones(len(names)), loose_crop=work,
        aligned_root=work, options=dict(ijbc.DEFAULT_OPTIONS))
    del got

    def features():
        for a in range(0, len(names), ijbc.EMBED_CHUNK):
            emb = rng.standard_normal((min(ijbc.EMBED_CHUNK, len(names) - a), 2 * args.dim), dtype=np.float32)
            yield ijbc.image_features(emb, "add", False, proto.detector_scores[a:a + len(emb)])

    tf = ijbc.template_features(proto, features())
    t = _step(f"ijbc: template features from {len(names):,} x {2 * args.dim} chunked embeddings", t)
    scored = streaming.listed_pairs_scores(ijbc.template_pair_scores(tf, proto.pairs), proto.genuine)
    t = _step(f"ijbc: template pair scores ({proto.n_pairs:,})", t)
    gen = streaming.genuine_pairs(proto)
    _metrics(scored, lambda q: comparison_scores.protocol_pair_quality(proto, q, "min", gen), len(names), rng, t, "ijbc")


def run_adience(args, rng) -> None:
    """The full-Adience part (see module doc)."""
    n = args.adience
    t = time.perf_counter()
    ids = rng.integers(0, args.face_ids, n)
    mated = adience.mated_pairs(ids)
    centres = rng.standard_normal((args.face_ids, args.dim), dtype=np.float32)
    unit = streaming.unit_rows(centres[ids] + 1.5 * rng.standard_normal((n, args.dim), dtype=np.float32))
    t = _step(f"adience: {len(mated):,} mated pairs of {n:,} images, embeddings", t)
    scored = streaming.all_pairs_scores(unit, ids, mated)
    _metrics(scored, lambda q: edc.pair_quality(q[mated[:, 0]], q[mated[:, 1]], "min"), n, rng, t, "adience")


def main(argv=None) -> None:
    """Run the parts (each in its own process unless ``--part`` names one) and print their steps."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("ijbc", "adience"), default=None, help="run one part in this process")
    p.add_argument("--work", default=None, help="folder for the synthetic meta files (default: a temp dir)")
    p.add_argument("--images", type=int, default=469_375)
    p.add_argument("--templates", type=int, default=23_124)
    p.add_argument("--pairs", type=int, default=15_658_489)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--adience", type=int, default=19_370)
    p.add_argument("--face-ids", type=int, default=2_284)
    args = p.parse_args(argv)
    if args.part is None:
        print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()}, numpy {np.__version__}", flush=True)
        args_out = list(argv if argv is not None else sys.argv[1:])
        if args.work is None:
            args_out += ["--work", tempfile.mkdtemp(prefix="froq_large_")]
        for part in ("adience", "ijbc"):
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--part", part, *args_out], check=True)
            print(f"{part}: {time.perf_counter() - started:.1f} s in all; load {os.getloadavg()}", flush=True)
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (run_ijbc if args.part == "ijbc" else run_adience)(args, np.random.default_rng(0))


if __name__ == "__main__":
    main()
