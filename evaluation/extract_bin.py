"""Export an insightface verification ``.bin`` to an image folder + pair list.

    python evaluation/extract_bin.py data/lfw.bin --out data/lfw

Writes ``<out>/images/00000.jpg ...`` (the original encoded bytes) and ``<out>/pairs.csv``
(``path1,path2,genuine,fold``, paths relative to ``<out>/images``), so the quality stages can run on
the folder and the evaluation can use ``{type: insightface_bin, path: lfw.bin, images: <out>/images}``
or ``{type: csv, images: <out>/images, pairs: <out>/pairs.csv}``. The ``.bin`` is read without
unpickling any class or function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from froq.core.cli import run_main, setup_logging
from froq.core.io import write_csv


def main(argv=None) -> None:
    """Parse arguments, export the images and write pairs.csv; prints a one-line summary."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("bin", help="the .bin file (e.g. lfw.bin from insightface's data zoo)")
    parser.add_argument("--out", required=True, help="output folder (images/ and pairs.csv inside)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    from evaluation.insightface_bin import export_images, read_bin

    data = read_bin(args.bin)
    out = Path(args.out)
    names = export_images(data, out / "images")
    rows = [(names[2 * k], names[2 * k + 1], int(g), int(f))
            for k, (g, f) in enumerate(zip(data.issame, data.folds))]
    write_csv(out / "pairs.csv", ["path1", "path2", "genuine", "fold"], rows)
    print(f"{args.bin}: {len(names)} images -> {out / 'images'}, {len(rows)} pairs "
          f"({int(data.issame.sum())} genuine) -> {out / 'pairs.csv'}")


if __name__ == "__main__":
    sys.exit(run_main(main))
