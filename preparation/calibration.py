"""Build a calibration set: clean aligned faces → BSRGAN-style degraded variants of varied quality.

Usage::

    python calibration_dataset/build.py --source aligned/ --output calib/ \
        [--variants 2] [--seed 0] [--keep-clean] [--folders map|keep] [--ext jpg|png]

(``calibration_dataset/build.py`` is a thin entry that calls ``main`` here; ``python
preparation/calibration.py ...`` is the same command.)

As in the FROQ paper (a Glint360K subset degraded with BSRGAN's random degradations), every source
image (found recursively with ``froq.core.images.list_images``; faces already aligned, e.g. by
``preparation/align.py``) yields ``--variants`` degraded copies made by
``preparation.degradations.random_degradation`` (blur, down/up-sampling, noise, JPEG; each
with some probability, random order and strength; settings in that module's docstring).

Output: ``<output>/id_XXXX/<stem>_vK.jpg`` (K = 1..N; ``_v0`` is the clean copy with
``--keep-clean``). ``--folders map`` (default) renames each identity folder of the source (the
parent folder of an image, ``preparation.split.identity_of``; images at the top level form one
identity) to ``id_0000``, ``id_0001``, … in sorted order, the official layout; ``--folders keep``
keeps the source's folder names.
``manifest.csv`` lists per output image: ``path``, ``source``, ``identity`` (source folder),
``variant``, ``severity``, ``degradations`` (the applied steps in order with their strengths, see
``degradations.describe``) and ``psnr_db`` (of the saved variant against its source).
``build.json`` holds the settings and a summary of the PSNR spread.

Deterministic: the random stream of a variant is seeded by (``--seed``, CRC-32 of the source's
relative path, K), so the same seed gives byte-identical files, independent of which other images
are in the source folder or of the processing order.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import zlib
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from tqdm import tqdm

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from froq.core.cli import add_config_options, parse_with_config, run_main, setup_logging
from froq.core.errors import FroqError
from froq.core.images import JPEG_QUALITY, READ_ERRORS, FailureLog, list_images, load_rgb, save_rgb
from froq.core.io import read_csv, write_csv, write_json
from preparation.degradations import DEFAULTS, describe, psnr, random_degradation
from preparation.split import identity_of

log = logging.getLogger(__name__)

MANIFEST_HEADER = ["path", "source", "identity", "variant", "severity", "degradations", "psnr_db"]


def identity_folders(rels: Sequence[str], mode: str = "map") -> dict[str, str]:
    """Output folder per source identity: ``id_XXXX`` by sorted identity (``map``) or the same
    folder (``keep``; top-level images stay at the top level)."""
    ids = sorted({identity_of(r) for r in rels})
    if mode == "keep":
        return {i: i for i in ids}
    if mode == "map":
        width = max(4, len(str(len(ids) - 1)))
        return {i: f"id_{k:0{width}d}" for k, i in enumerate(ids)}
    raise FroqError(f"unknown --folders {mode!r}: use map or keep")


def variant_rng(seed: int, rel: str, variant: int) -> np.random.Generator:
    """The generator of one variant: seeded by (seed, CRC-32 of the source path, variant)."""
    return np.random.default_rng([int(seed), zlib.crc32(rel.encode("utf-8")), int(variant)])


def build_calibration_set(source: str | os.PathLike, output: str | os.PathLike, variants: int = 2,
                          seed: int = 0, keep_clean: bool = False, folders: str = "map",
                          ext: str = "jpg", progress: bool = True) -> dict:
    """Write the degraded variants of every image of ``source`` into ``output`` (see module doc).

    Out: the summary dict (images, variants written, unreadable files, PSNR quantiles, share of
    variants below 30 / above 40 dB). Unreadable sources are warned about, listed and skipped.
    Raises FroqError for bad arguments or an output folder inside the source.
    """
    source, output = Path(source), Path(output)
    if variants < 1:
        raise FroqError(f"--variants must be >= 1 (got {variants})")
    if ext not in ("jpg", "png"):
        raise FroqError(f"unknown --ext {ext!r}: use jpg or png")
    if not source.is_dir():
        raise FroqError(f"source folder not found: {source}")
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise FroqError(f"--output {output} is inside --source {source}: choose a folder outside it")
    rels = list_images(source)
    earlier = _earlier_build(output)
    mapping = identity_folders(rels, folders)
    failures = FailureLog("calibration build")
    rows: list[list] = []
    first_variant = 0 if keep_clean else 1
    for rel in tqdm(rels, desc="calibration set", unit="img", dynamic_ncols=True,
                    disable=not progress or not sys.stderr.isatty()):  # bars on terminals only
        try:
            clean = np.asarray(load_rgb(source / rel))
        except READ_ERRORS as exc:
            failures.add(rel, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        folder = mapping[identity_of(rel)]
        stem = PurePosixPath(rel).stem
        for k in range(first_variant, variants + 1):
            if k == 0:
                img, severity, steps = clean, 0.0, []
            else:
                img, severity, steps = random_degradation(clean, variant_rng(seed, rel, k))
            out_rel = (PurePosixPath(folder) / f"{stem}_v{k}.{ext}").as_posix() if folder \
                else f"{stem}_v{k}.{ext}"
            save_rgb(img, output / out_rel)
            quality = psnr(clean, np.asarray(load_rgb(output / out_rel)))
            rows.append([out_rel, rel, identity_of(rel), k, round(severity, 6), describe(steps),
                         round(quality, 3) if np.isfinite(quality) else "inf"])
    if not rows:
        raise FroqError(f"no readable image in {source}: {failures.summary()}")
    write_csv(output / "manifest.csv", MANIFEST_HEADER, rows)
    summary = summarize(rows, len(rels), failures)
    settings = {"source": str(source), "variants": variants, "seed": seed, "keep_clean": keep_clean,
                "folders": folders, "ext": ext, "jpeg_quality": JPEG_QUALITY,
                "degradations": dataclasses.asdict(DEFAULTS)}
    write_json(output / "build.json", {"settings": settings, "summary": summary,
                                       "unreadable": [{"path": p, "reason": r} for p, r in failures.items]})
    _remove_stale(output, earlier, {r[0] for r in rows})
    return summary


def summarize(rows: Sequence[Sequence], n_sources: int, failures: FailureLog) -> dict:
    """Spread of PSNR over the degraded variants (K ≥ 1) and the counts of a build."""
    degraded = [float(r[6]) for r in rows if int(r[3]) >= 1]
    q = np.array([v for v in degraded if np.isfinite(v)]) if degraded else np.zeros(0)
    spread = {}
    if len(q):
        spread = {f"psnr_p{p}": round(float(np.percentile(q, p)), 2) for p in (5, 25, 50, 75, 95)}
        spread.update(share_below_25db=round(float((q < 25).mean()), 3),
                      share_below_30db=round(float((q < 30).mean()), 3),
                      share_above_40db=round(float((q > 40).mean()) + (len(degraded) - len(q)) / len(degraded), 3),
                      untouched=sum(1 for r in rows if int(r[3]) >= 1 and r[5] == "none"))
    return {"sources": n_sources, "written": len(rows), "degraded_variants": len(degraded),
            "unreadable": len(failures.items), "unreadable_files": [p for p, _ in failures.items],
            **spread}


_BUILT_NAME = re.compile(r"_v\d+\.(jpg|png)$")


def _earlier_build(output: Path) -> list[str]:
    """Images an earlier build left in ``output`` (in its manifest, or named ``<stem>_vK.jpg|png``
    by an interrupted one). FroqError when ``output`` holds images the builder did not make."""
    if not output.is_dir():
        return []
    try:
        existing = list_images(output)
    except FroqError:  # no image there
        return []
    manifest = output / "manifest.csv"
    listed = {r["path"] for r in read_csv(manifest, required=("path",))} if manifest.is_file() else set()
    foreign = [p for p in existing if p not in listed and not _BUILT_NAME.search(p)]
    if foreign:
        raise FroqError(f"--output {output} holds {len(foreign)} image(s) this builder did not make "
                        f"(e.g. {foreign[0]}): use an empty or new --output folder")
    return existing


def _remove_stale(output: Path, earlier: Sequence[str], written: set[str]) -> None:
    """Delete the images of an earlier build that this build did not write (other --variants,
    --keep-clean, --ext or sources), so the folder holds exactly what the current options say."""
    stale = [p for p in earlier if p not in written]
    for rel in stale:
        (output / rel).unlink(missing_ok=True)
    if stale:
        log.info("%s: removed %d image(s) of an earlier build with other options (e.g. %s)",
                 output, len(stale), stale[0])


def summary_line(summary: dict) -> str:
    """One human line for a build summary."""
    line = (f"{summary['written']} images written from {summary['sources']} sources "
            f"({summary['unreadable']} unreadable)")
    if "psnr_p50" in summary:
        line += (f"; PSNR of degraded variants: 5/25/50/75/95 % = {summary['psnr_p5']}/"
                 f"{summary['psnr_p25']}/{summary['psnr_p50']}/{summary['psnr_p75']}/"
                 f"{summary['psnr_p95']} dB, {100 * summary['share_below_25db']:.0f} % below 25 dB, "
                 f"{100 * summary['share_above_40db']:.0f} % above 40 dB")
    if summary["unreadable_files"]:
        line += "\n  unreadable: " + ", ".join(summary["unreadable_files"][:10])
    return line


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of the builder (``calibration_dataset/build.py``)."""
    p = argparse.ArgumentParser(description="Build a degraded calibration set from aligned faces.")
    p.add_argument("--source", required=True, help="folder of clean aligned face images")
    p.add_argument("--output", required=True, help="folder for id_XXXX/<stem>_vK.jpg and manifest.csv")
    p.add_argument("--variants", type=int, default=1, help="degraded variants per source image (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed → same files)")
    p.add_argument("--keep-clean", action="store_true", help="also write the clean source as _v0")
    p.add_argument("--folders", default="map", choices=("map", "keep"),
                   help="map identity folders to id_XXXX (default) or keep their names")
    p.add_argument("--ext", default="jpg", choices=("jpg", "png"),
                   help="file type (jpg at quality 95, the default, like the official set; png lossless)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return add_config_options(p)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry: build the set and print the summary line. Out: the summary dict."""
    args = parse_with_config(build_parser(), argv)
    setup_logging(args.verbose)
    summary = build_calibration_set(args.source, args.output, args.variants, args.seed,
                                    args.keep_clean, args.folders, args.ext)
    print(summary_line(summary))
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
