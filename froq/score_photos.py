"""Score photos with a saved observer: the one way FROQ qualities of photos are written.

    froq score-photos OBSERVER.json PHOTOS_DIR [-o qualities.csv] [--align | --aligned] [options]

The FR model is the one the observer file records (``model.config``, found as ``froq.Observer.load``
finds it) and the alignment template is the observer's ``alignment`` (else its FR config's,
``face_recognition_model.templates``). ``PHOTOS_DIR`` may hold photos or faces already aligned
for that model:

- by default the folder is checked (``preparation.align.check_aligned``): every image has the
  template's size and, on a sample, the landmarks lie at the template's points → scored as they
  are; images of other sizes → photos: detected and aligned (``preparation.align.align_folder``,
  cached in ``--work``, default ``<output stem>.aligned/<template>/``) and the chips scored;
  images of the chip size whose faces are NOT at the template's points → refused (say ``--align``
  or ``--aligned``);
- ``--align`` always aligns; ``--aligned`` scores as they are, with a warning when the check fails.

Output: ``path,quality,percentile,flag`` (``percentile`` only when the observer has a calibration
scale), one row per image of ``PHOTOS_DIR`` under its ORIGINAL relative path, in the folder's
order. ``flag`` is ``ok``, ``fallback`` (aligned from the fixed central box, ``--fallback
center-box``), ``no_face`` (nothing detected) or ``unreadable``. A face that could not be
acquired (``no_face``, ``unreadable``) gets the lowest quality (ISO/IEC 29794-1: failure to acquire
= lowest quality): ``FAILURE_QUALITY`` = -1, below every paper FROQ quality (a mean of L2 norms,
never negative; for FROQ+ observers, whose standardised qualities can be negative, one less than the
floor of the lowest real quality: ``observer.inference.failure_quality``), and percentile 0 (faces
score strictly inside (0, 100)); so an evaluation still covers every pair and discards these first. ``<output>.meta.json`` records the observer, the model, the
template, how the folder was read and the count per flag. The check, the flags and the scoring are
``observer.inference``'s (``read_folder``, ``score_entries``), which ``froq score``, ``./run.sh``
and ``froq.Observer.score`` use too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from froq.core.cli import add_config_options, parse_with_config, run_main, setup_logging
from froq.core.errors import FroqError
from froq.core.images import FailureLog, list_images
from froq.core.io import output_lock
from froq.core.runner import finish_stage
from observer.inference import (FAILURE_QUALITY, PhotoEntry, entries_from_alignment, observer_template,
                                read_folder, score_entries)

log = logging.getLogger("froq.score_photos")


def target_entries(aligned: str | Path, target_dir: str | Path,
                   calibration_ids: str | Path | None = None) -> list[PhotoEntry]:
    """run.sh's targets among the photos of ``aligned``: those whose crop was linked into
    ``target_dir`` (``preparation.split``), and the photos without a crop (no face, unreadable)
    that belong to the target side: identity not listed in ``calibration_ids`` when given, else not
    an identity of the calibration sources (photos at the top level always)."""
    from preparation.split import identity_of, read_identity_list

    entries = entries_from_alignment(aligned)
    try:
        target = set(list_images(target_dir))
    except FroqError:  # no target image at all
        target = set()
    chips = {e.chip for e in entries if e.chip}
    if calibration_ids:
        calibration = read_identity_list(calibration_ids)
    else:
        calibration = {identity_of(c) for c in chips - target}
    keep = []
    for e in entries:
        if e.chip:
            if e.chip in target:
                keep.append(e)
        elif identity_of(e.path) == "" or identity_of(e.path) not in calibration:
            keep.append(e)
    return keep


def score_photos(observer_file: str | Path, photos: str | Path, out: str | Path = "qualities.csv", *,
                 mode: str = "auto", work: str | Path | None = None, select: str | None = None,
                 fallback: str = "none", device: str = "auto", batch_size: int = 32,
                 num_workers: int = 0, align_workers: int = 1) -> dict:
    """Qualities of the photos (or aligned faces) of ``photos`` with a saved observer → ``out``.

    In: the observer JSON, the folder, the output CSV, ``mode`` (``auto`` / ``align`` /
    ``aligned``, module docstring), the alignment work folder and face choice, the device and
    batch size. Out: a summary dict (counts per flag, how the folder was read, the template).
    FroqError for an unusable observer, a missing folder, images that look like unaligned chips
    (``auto``), or a model without an alignment template when the photos need aligning."""
    from froq.api import Observer

    out = Path(out)
    observer = Observer.load(observer_file, device=device)
    template = observer_template(observer.fr, observer.record)
    work = work or (out.parent / f"{out.stem}.aligned" / template.name if template else None)
    started = time.perf_counter()
    with output_lock(out):
        failures = FailureLog("score")
        root, entries, how, check = read_folder(observer.fr, observer.record, photos, mode,
                                                failures=failures, work=work, select=select,
                                                fallback=fallback, align_workers=align_workers)
        scores = score_entries(observer.fr, observer.record, root, entries, batch_size=batch_size,
                               num_workers=num_workers, resume_path=out, failures=failures)
        scores.write(out)
        flags = ", ".join(f"{n} {f}" for f, n in scores.counts.items() if n)
        finish_stage(out, "score_photos", label="score-photos", images=len(entries),
                     failures=failures, started=started,
                     line=f"score-photos: {out} ({len(entries)} photos: {flags}; {how})",
                     meta={"observer": str(observer_file), "model": observer.fr.identity(),
                           "alignment": template.record() if template else None,
                           "photos": str(photos), "read_as": how, "counts": scores.counts,
                           "check": check.describe() if check else None,
                           "failure_quality": FAILURE_QUALITY})
    return {"counts": scores.counts, "read_as": how, "template": template.name if template else None}


def score_targets(argv: Sequence[str], aligned: str | Path | None = None,
                  calibration_ids: str | Path | None = None) -> dict[str, int]:
    """``./run.sh``'s target scoring: the inference stage (``-c configs/inference.yaml --set ...``,
    ``observer.inference.main``). With ``aligned`` (the run aligned photos there), the targets
    are the photos of ``target_entries(aligned, target_dataset, calibration_ids)``, written under
    their original names with their flags; else the stage reads ``target_dataset`` as aligned faces
    (a warning when they do not look aligned, as before). Out:
    the count per flag."""
    from observer.inference import main

    if not aligned:
        return main(list(argv), mode="aligned")
    return main(list(argv), lambda target: (Path(aligned), target_entries(aligned, target, calibration_ids),
                                            f"photos aligned in {aligned}", None))


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``froq score-photos``."""
    p = argparse.ArgumentParser(prog="froq score-photos",
                                description="FROQ qualities of photos with a saved observer.")
    p.add_argument("observer", help="observer JSON written by observer initialisation (run.sh: outputs/observer.json)")
    p.add_argument("photos", help="folder of photos or of faces aligned for the observer's model")
    p.add_argument("-o", "--output", default="qualities.csv", help="quality CSV (default: qualities.csv)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--align", dest="mode", action="store_const", const="align",
                      help="always detect and align the faces")
    mode.add_argument("--aligned", dest="mode", action="store_const", const="aligned",
                      help="score the images as they are (warned about when they do not look aligned)")
    p.add_argument("--work", help="folder of the aligned faces (default: <output stem>.aligned/<template>)")
    p.add_argument("--select", choices=("central", "largest", "center"), default=None,
                   help="face choice when a photo holds several (default central)")
    p.add_argument("--fallback", choices=("none", "center-box"), default="none",
                   help="photos without a detected face: no_face (lowest quality) or a central box")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default 32)")
    p.add_argument("--workers", type=int, default=1, help="alignment processes (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(mode="auto")
    return add_config_options(p)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry of ``froq score-photos``. Out: the summary dict of ``score_photos``."""
    args = parse_with_config(build_parser(), argv)
    setup_logging(args.verbose)
    if args.batch_size < 1 or args.workers < 1:
        raise FroqError("--batch-size and --workers must be >= 1")
    return score_photos(args.observer, args.photos, args.output, mode=args.mode, work=args.work,
                        select=args.select, fallback=args.fallback, device=args.device,
                        batch_size=args.batch_size, align_workers=args.workers)


if __name__ == "__main__":
    sys.exit(run_main(main))
