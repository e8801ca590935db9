"""Cheap pseudo-labels for benchmarks: the flip component alone (spec §2), two forwards per image.

    python benchmarks/flip_labels.py FR_CONFIG FOLDER OUT_CSV [--limit N] [--batch-size 32]
                                     [--set model.weights=PATH ...]

Label of an image = cosine of its embedding to its horizontally flipped copy's (the ``flip``
column of ``baselineFIQA/main.py``, without the noise and occlusion terms and their ~60 forwards
per image). Writes ``path,flip,quality`` (quality = flip) for the first ``--limit`` images of
FOLDER (sorted; all by default). For depth and speed benchmarks on models whose full labels cost
too much here (e.g. generated weights); not the paper's labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)  # run as a file: the repository root first on sys.path

import torch  # noqa: E402

from baselineFIQA.perturbations import flip  # noqa: E402
from face_recognition_model.loading import load_fr_config, load_fr_model  # noqa: E402
from froq.core.images import FailureLog, list_images  # noqa: E402
from froq.core.runner import iterate_folder  # noqa: E402
from froq.core.io import write_csv  # noqa: E402


def flip_labels(fr, root: str, paths: list[str], batch_size: int = 32) -> list[tuple[str, float]]:
    """(path, cosine of the embeddings of the image and its horizontal flip) for readable ``paths``.

    In: a loaded FR model, the folder, relative paths, batch size. Out: rows in reading order."""
    rows = []
    for batch_paths, images in iterate_folder(root, fr.preprocess, batch_size, paths=paths,
                                              failures=FailureLog("flip labels"), device=fr.device,
                                              desc="flip labels"):
        with torch.no_grad():
            a = fr.embed(images)
            b = fr.embed(flip(images))  # the labels' own flip
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        rows += [(p, float(c)) for p, c in zip(batch_paths, cos.tolist())]
    return rows


def main(argv=None) -> None:
    """Parse arguments, compute the flip labels, write the CSV."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fr_config")
    ap.add_argument("folder")
    ap.add_argument("out_csv")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], help="override of the FR config (KEY=VALUE)")
    args = ap.parse_args(argv)
    fr = load_fr_model(load_fr_config(args.fr_config, args.set), "cpu")
    paths = list_images(args.folder)[:args.limit]
    rows = flip_labels(fr, args.folder, paths, args.batch_size)
    write_csv(args.out_csv, ["path", "flip", "quality"], [(p, q, q) for p, q in rows])
    print(f"{args.out_csv}: {len(rows)} flip labels")


if __name__ == "__main__":
    main()
