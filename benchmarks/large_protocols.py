"""Do IJB-C and Adience fit in memory and time at full size? The array work of both protocols on
synthetic data of the real sizes (no images, no FR model).

    python benchmarks/large_protocols.py [--work DIR] [--images 469375] [--templates 23124]
        [--pairs 15658489] [--dim 512] [--adience 19370]

IJB-C: a template/media list and a template pair list of the given sizes are written in the
release's format to ``--work`` and read back with ``evaluation.ijbc``'s readers; then template
pooling (``template_features``), template qualities and the pair scores run on random image
features of ``--dim`` columns. Adience: the all-pairs list of ``--adience`` images and its mated
flags (``evaluation.adience.all_pairs``). Prints seconds per step and the peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation import adience, ijbc  # noqa: E402


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _step(label: str, started: float) -> float:
    now = time.perf_counter()
    print(f"{label:<48} {now - started:7.2f} s   peak RSS {_peak_gb():5.2f} GB", flush=True)
    return now


def main(argv=None) -> None:
    """Run the steps and print their times (see module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="folder for the synthetic meta files (default: a temp dir)")
    p.add_argument("--images", type=int, default=469_375)
    p.add_argument("--templates", type=int, default=23_124)
    p.add_argument("--pairs", type=int, default=15_658_489)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--adience", type=int, default=19_370)
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="froq_large_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()}, numpy {np.__version__}")

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
        stamp.write_text("")
    t = _step("synthetic meta files (written once)", t)

    names, row_t, row_m = ijbc.read_template_media(work / "ijbc_face_tid_mid.txt")
    t = _step(f"read template/media list ({len(names):,} rows)", t)
    got = ijbc.read_template_pairs(work / "ijbc_template_pair_label.txt")
    t = _step(f"read template pair list ({len(got):,} pairs)", t)

    template_ids, row_template = np.unique(row_t, return_inverse=True)
    proto = ijbc.TemplateProtocol(
        name="synthetic", image_root=work, images=names, pairs=np.searchsorted(template_ids, got[:, :2]),
        genuine=got[:, 2] == 1, folds=None, source="synthetic", template_ids=template_ids,
        row_image=np.arange(len(names)), row_template=row_template, row_media=row_m, source_names=names,
        landmarks=np.zeros((len(names), 5, 2)), detector_scores=np.ones(len(names)), loose_crop=work,
        aligned_root=work, options=dict(ijbc.DEFAULT_OPTIONS))
    emb = rng.standard_normal((len(names), 2 * args.dim), dtype=np.float32)
    t = _step(f"random embeddings ({len(names):,} x {2 * args.dim}, float32)", t)
    feats = ijbc.image_features(emb, "add", False, proto.detector_scores)
    del emb
    t = _step("image features (flip add, detector weight)", t)
    tf = ijbc.template_features(proto, feats)
    t = _step(f"template features ({len(tf):,} templates)", t)
    q = rng.random(len(names))
    tq = ijbc.template_qualities(proto, q, "min")
    pq = ijbc.protocol_pair_quality(proto, q, "min")
    t = _step(f"template + pair qualities ({len(tq):,} / {len(pq):,})", t)
    s = ijbc.template_pair_scores(tf, proto.pairs)
    t = _step(f"template pair scores ({len(s):,})", t)
    del feats, tf, s, pq, proto

    n = args.adience
    pairs = adience.all_pairs(n)
    t = _step(f"Adience all pairs of {n:,} images ({len(pairs):,})", t)
    ids = rng.integers(0, 2_284, n)
    genuine = np.empty(len(pairs), dtype=bool)
    for s0 in range(0, len(pairs), 1 << 24):
        b = pairs[s0:s0 + (1 << 24)]
        genuine[s0:s0 + len(b)] = ids[b[:, 0]] == ids[b[:, 1]]
    _step(f"Adience mated flags ({int(genuine.sum()):,} mated)", t)


if __name__ == "__main__":
    main()
