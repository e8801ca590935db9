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
floor of the lowest real quality: ``failure_quality``), and percentile 0 (faces score strictly inside (0, 100)); so an evaluation still covers
every pair and discards these first. ``<output>.meta.json`` records the observer, the model, the
template, how the folder was read and the count per flag. ``./run.sh`` scores its targets with
``score_entries`` too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from face_recognition_model.templates import AlignmentTemplate, template_from_record
from froq.core.cli import add_config_options, parse_with_config, run_main, setup_logging
from froq.core.errors import FroqError
from froq.core.images import FailureLog, list_images
from froq.core.io import output_lock, read_csv, write_csv
from froq.core.runner import finish_stage

log = logging.getLogger("froq.score_photos")

FLAGS = ("ok", "fallback", "no_face", "unreadable")
#: quality of a face that could not be acquired: below every FROQ quality (mean of L2 norms >= 0)
FAILURE_QUALITY = -1.0
#: its percentile: faces score strictly inside (0, 100) (observer.scale), so 0 means "no face"
FAILURE_PERCENTILE = 0.0
MODES = ("auto", "align", "aligned")


@dataclass
class PhotoEntry:
    """One photo to report: its original relative ``path``, the aligned face to score (``chip``,
    relative to the scored folder; None when there is none) and the alignment ``flag``."""

    path: str
    chip: str | None
    flag: str


def entries_as_is(root: str | Path, rels: Sequence[str] | None = None) -> list[PhotoEntry]:
    """Images scored as they are (already aligned): each its own chip, flag ``ok``."""
    rels = list(rels) if rels is not None else list_images(root)
    return [PhotoEntry(r, r, "ok") for r in rels]


def entries_from_alignment(aligned: str | Path, photos: Sequence[str] | None = None) -> list[PhotoEntry]:
    """The photos of an ``align_folder`` output (its ``landmarks.csv``), in its order: chip = the
    crop (None without one), flag = the alignment status. ``photos``: only those paths."""
    rows = read_csv(Path(aligned) / "landmarks.csv", ("path", "output", "status"))
    wanted = set(photos) if photos is not None else None
    out = []
    for r in rows:
        if wanted is not None and r["path"] not in wanted:
            continue
        flag = r["status"] if r["status"] in FLAGS else "unreadable"
        out.append(PhotoEntry(r["path"], r["output"] or None, flag))
    return out


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


def failure_quality(qualities: np.ndarray) -> float:
    """The quality written for a face that could not be acquired: ``FAILURE_QUALITY`` (-1), or,
    when an observer's qualities can be negative (FROQ+ standardised features), one less than the
    floor of the lowest real quality of the output, so it stays below every face."""
    if qualities.size and float(np.min(qualities)) <= FAILURE_QUALITY:
        return float(np.floor(np.min(qualities))) - 1.0
    return FAILURE_QUALITY


def score_entries(observer, root: str | Path, entries: Sequence[PhotoEntry], out: str | Path, *,
                  batch_size: int = 32, num_workers: int = 0, early_exit: bool = True,
                  autocast: bool = True, failures: FailureLog | None = None) -> dict[str, int]:
    """Score the chips of ``entries`` (relative to ``root``) with ``observer`` (``froq.api.Observer``)
    and write ``out`` atomically: ``path,quality,percentile,flag`` under the original paths,
    failures at ``FAILURE_QUALITY`` / ``FAILURE_PERCENTILE`` (module docstring). Resumable through
    ``<out>.partial``. Out: the count per flag (a chip unreadable now counts as ``unreadable``)."""
    from observer.inference import froq_qualities
    from observer.scale import percentile

    chips = [e.chip for e in entries if e.chip]
    failures = failures if failures is not None else FailureLog("score")
    quality: dict[str, float] = {}
    if chips:
        result = froq_qualities(observer.fr, root, observer.layers, batch_size=batch_size,
                                paths=chips, early_exit=early_exit, num_workers=num_workers,
                                autocast=autocast, resume_path=out, failures=failures)
        quality = dict(zip(result.paths, result.column("quality").tolist()))
    scale = observer.record.get("scale")
    values = np.array([quality.get(e.chip, np.nan) if e.chip else np.nan for e in entries])
    scored = np.isfinite(values)
    pct = np.full(len(entries), FAILURE_PERCENTILE)
    if scale and scored.any():
        pct[scored] = percentile(values[scored], scale)
    rows, counts = [], {f: 0 for f in FLAGS}
    lowest = failure_quality(values[scored])
    for i, e in enumerate(entries):
        flag = e.flag if scored[i] else ("unreadable" if e.flag in ("ok", "fallback") else e.flag)
        counts[flag] += 1
        q = float(values[i]) if scored[i] else lowest
        rows.append([e.path, q, float(pct[i]), flag] if scale else [e.path, q, flag])
    if not scale:
        log.warning("%s has no calibration scale (made before it existed): no percentile column; "
                    "re-run observer initialisation to get one", observer.source)
    header = ["path", "quality", "percentile", "flag"] if scale else ["path", "quality", "flag"]
    if counts["no_face"] or counts["unreadable"]:
        log.warning("%d photo(s) without a face and %d unreadable: quality %s (the lowest) and flag "
                    "in %s", counts["no_face"], counts["unreadable"], lowest, out)
    write_csv(out, header, rows)
    return counts


def observer_template(observer) -> AlignmentTemplate | None:
    """The alignment template of an observer: its file's ``alignment`` record, else its FR config's
    (``alignment`` key or the template of ``preprocess.size``); None when neither names one."""
    record = observer.record.get("alignment")
    if record:
        return template_from_record(record)
    return observer.fr.alignment()


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
    from preparation.align import DEFAULT_SELECT, align_folder, check_aligned

    if mode not in MODES:
        raise FroqError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    photos, out = Path(photos), Path(out)
    if not photos.is_dir():
        raise FroqError(f"photos folder not found: {photos}")
    rels = list_images(photos)
    observer = Observer.load(observer_file, device=device)
    template = observer_template(observer)
    check = None
    if mode != "align":
        if template is None:
            if mode == "auto":
                raise FroqError(f"{observer_file}: its FR model names no alignment template: pass "
                                "--aligned to score faces you aligned yourself, or add 'alignment' to "
                                "its FR config")
            log.warning("no alignment template for %s: cannot check that %s is aligned",
                        observer.fr.arch, photos)
        else:
            check = check_aligned(photos, rels, template)
            log.info("alignment check: %s", check.describe())
            if (mode == "auto" and not check.aligned and check.sizes
                    and check.matching == sum(check.sizes.values())):
                raise FroqError(f"{photos}: {check.describe()}: the images have the chip size of "
                                f"{template.name} but their faces are not where it puts them; pass "
                                "--align to detect and align the faces, or --aligned to score them as they are")
            if mode == "aligned" and not check.aligned:
                log.warning("%s does not look aligned for %s (%s): qualities of unaligned faces are "
                            "not comparable to the calibration", photos, template.name, check.describe())
    as_is = mode == "aligned" or (mode == "auto" and check is not None and check.aligned)
    started = time.perf_counter()
    with output_lock(out):
        if as_is:
            root, entries, how = photos, entries_as_is(photos, rels), "aligned faces, scored as they are"
        else:
            if template is None:
                raise FroqError(f"{observer_file}: its FR model names no alignment template: add "
                                "'alignment' to its FR config (face_recognition_model/templates.py)")
            root = Path(work) if work else out.parent / f"{out.stem}.aligned" / template.name
            if root.resolve() == photos.resolve() or photos.resolve() in root.resolve().parents:
                raise FroqError(f"the alignment folder {root} is inside {photos}: write the output "
                                "elsewhere or pass --work DIR outside the photos")
            summary = align_folder(photos, root, template, select or DEFAULT_SELECT, fallback,
                                   align_workers, progress=True)
            entries = entries_from_alignment(root)
            how = f"photos aligned to {template.name} in {root} ({summary['detected']} detected now)"
        failures = FailureLog("score")
        counts = score_entries(observer, root, entries, out, batch_size=batch_size,
                               num_workers=num_workers, failures=failures)
        flags = ", ".join(f"{n} {f}" for f, n in counts.items() if n)
        finish_stage(out, "score_photos", label="score-photos", images=len(entries),
                     failures=failures, started=started,
                     line=f"score-photos: {out} ({len(entries)} photos: {flags}; {how})",
                     meta={"observer": str(observer_file), "model": observer.fr.identity(),
                           "alignment": template.record() if template else None,
                           "photos": str(photos), "read_as": how, "counts": counts,
                           "check": check.describe() if check else None,
                           "failure_quality": FAILURE_QUALITY})
    return {"counts": counts, "read_as": how, "template": template.name if template else None}


def score_targets(argv: Sequence[str], aligned: str | Path | None = None,
                  calibration_ids: str | Path | None = None) -> dict[str, int]:
    """``./run.sh``'s target scoring: the inference stage's options (``-c configs/inference.yaml
    --set ...``, ``observer.inference.SCHEMA``) through ``score_entries``.

    With ``aligned`` (the run aligned photos there), the targets are the photos of
    ``target_entries(aligned, target_dataset, calibration_ids)``, written under their original
    names with their flags; else the images of ``target_dataset`` as they are (a warning when they
    do not look aligned for the model). Writes ``outpath`` and its ``.meta.json``. Out: the count
    per flag."""
    from face_recognition_model.loading import fr_from_stage_config
    from froq.api import Observer
    from froq.core.cli import stage_parser
    from froq.core.config import load_config, public
    from froq.core.stage import output_path, refuse_overwriting_inputs
    from observer.inference import SCHEMA, read_observer
    from preparation.align import check_aligned

    args = stage_parser("FROQ qualities of run.sh's targets", SCHEMA).parse_args(list(argv))
    cfg = load_config(args.config, SCHEMA, args.overrides)
    record = read_observer(cfg["observer_data"])
    observer = Observer(fr_from_stage_config(cfg), record, str(cfg["observer_data"]))
    target = Path(cfg["target_dataset"])
    out = output_path(cfg["outpath"], "qualities.csv")
    refuse_overwriting_inputs(out, cfg["_source"], files={"observer_data": cfg["observer_data"]},
                              folders={"target_dataset": str(target)})
    template = observer_template(observer)
    if aligned:
        root, entries = Path(aligned), target_entries(aligned, target, calibration_ids)
        how = f"photos aligned to {template.name if template else '?'} in {aligned}"
    else:
        root, entries, how = target, entries_as_is(target), "aligned faces, scored as they are"
        if template is not None:
            check = check_aligned(target, [e.path for e in entries], template)
            if not check.aligned:
                log.warning("%s does not look aligned for %s (%s): qualities of unaligned faces are "
                            "not comparable to the calibration; pass --photos to align them",
                            target, template.name, check.describe())
    with output_lock(out):
        started = time.perf_counter()
        failures = FailureLog("inference")
        counts = score_entries(observer, root, entries, out, batch_size=cfg["batch_size"],
                               num_workers=cfg["num_workers"], early_exit=cfg["early_exit"],
                               autocast=cfg["autocast"], failures=failures)
        flags = ", ".join(f"{n} {f}" for f, n in counts.items() if n)
        finish_stage(out, "inference", label="qualities", images=len(entries), failures=failures,
                     started=started, extra=f"; flags: {flags}",
                     meta={"model": observer.fr.identity(), "observer": cfg["observer_data"],
                           "selected_layers": observer.layers, "config": public(cfg),
                           "alignment": template.record() if template else None, "read_as": how,
                           "counts": counts, "failure_quality": FAILURE_QUALITY})
    return counts


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
    p.add_argument("--batch-size", type=int, default=32)
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
