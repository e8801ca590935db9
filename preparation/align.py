"""Face detection and alignment of a folder of photos into FR-ready face crops.

Usage::

    python preparation/align.py --input photos/ --output aligned/ --template dlib150 \
        [--select largest|center] [--fallback none|center-box] [--workers N] [--ext png|jpg|same]

For every image of ``--input`` (read with ``froq.core.images.list_images`` / ``load_rgb``) dlib's HOG
detector finds the faces (if none, it is run again on the image upsampled once), one face is chosen
(``largest`` box by default; ``center`` = the box whose centre is nearest the image centre, better
for LFW where the labelled person is centred and photos often hold several faces), dlib's landmark
predictor of the ``face_recognition_models`` package locates its landmarks, and the aligned crop is
written under ``--output`` with the same relative path (extension from ``--ext``).

Templates
---------
``dlib150``
    Exactly ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)`` with dlib's 5-point
    predictor: the input of dlib's face-recognition ResNet.
``arcface112``
    The standard insightface 112×112 5-point template (left eye, right eye, nose tip, left and
    right mouth corners; ``ARCFACE_112``), the input of ArcFace/AdaFace-style models. dlib's
    5-point model has no mouth corners, so the five points come from the 68-point predictor: eye
    centres = mean of points 36–41 and 42–47, nose tip = 30, mouth corners = 48 and 54. A
    least-squares similarity transform (Umeyama, numpy) maps them onto the template, and the image
    is warped with PIL's bilinear affine sampling (pixel centres at integer coordinates, as in the
    template; outside pixels are black).

Faces that cannot be found
--------------------------
By default an image with no detection is reported (warning, ``no_face`` row in the CSV, count in
the summary) and no crop is written. ``--fallback center-box`` instead runs the landmark predictor
in a fixed box at the usual position of the face in LFW-style centred photos: ``FALLBACK_BOX`` =
(0.31, 0.36, 0.72, 0.76) of (width, height, width, height) — the median HOG box on LFW's
250×250 photos is (77, 89, 181, 189). Such rows have status ``fallback``. Unreadable files are
warned about, listed with status ``unreadable``, and the run continues.

Outputs
-------
``<output>/landmarks.csv`` (written atomically at the end): one row per input image with
``path`` (input-relative), ``output`` (output-relative, empty without a crop), ``status``
(ok / fallback / no_face / unreadable), ``n_faces``, ``face_index`` (index of the chosen face in
dlib's detection list), ``upsampled`` (1 when found only after upsampling), the box
(``left, top, right, bottom``, source pixels), the five alignment points ``p1_x, p1_y … p5_x, p5_y``
in source pixels (dlib150: the 5-point predictor's points in dlib's order; arcface112: left eye,
right eye, nose, left mouth, right mouth as above) and ``reason`` for problems.
``<output>/align.json``: the settings and the run summary. Rows are also appended to
``landmarks.csv.partial`` while running, so an interrupted run resumes: an image is skipped when
its crop exists (or it had no face) and its row is known. Re-running into a folder aligned with
other settings or from another input folder is refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from froq.core.cli import add_config_options, parse_with_config, run_main, setup_logging
from froq.core.errors import FroqError
from froq.core.images import list_images, load_rgb, printable, save_rgb, valid_utf8
from froq.core.io import RowLog, read_csv, read_json, write_csv, write_json

log = logging.getLogger(__name__)

TEMPLATES = ("dlib150", "arcface112")
SELECT_MODES = ("largest", "center")
FALLBACKS = ("none", "center-box")

#: insightface's 112×112 template: left eye, right eye, nose tip, left / right mouth corner (x, y).
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
#: fallback face box as fractions (left, top, right, bottom) of (width, height, width, height).
FALLBACK_BOX = (0.31, 0.36, 0.72, 0.76)
DLIB150_SIZE, DLIB150_PADDING = 150, 0.25

CSV_HEADER = (["path", "output", "status", "n_faces", "face_index", "upsampled",
               "left", "top", "right", "bottom"]
              + [f"p{i}_{c}" for i in range(1, 6) for c in ("x", "y")] + ["reason"])
DONE_STATUSES = ("ok", "fallback", "no_face")

_READ_ERRORS = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def model_dir() -> Path:
    """Folder of dlib's model files inside the installed ``face_recognition_models`` package.

    The package is located without importing it (its ``__init__`` needs pkg_resources).
    Raises FroqError when the package is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FroqError("the package 'face_recognition_models' is not installed: "
                        "pip install face-recognition-models (it holds dlib's landmark models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _import_dlib():
    try:
        import dlib
    except ImportError:
        raise FroqError("dlib is not installed: pip install dlib-bin (needed for face alignment)") from None
    return dlib


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping src → dst.

    In: two (N, 2) point arrays, N ≥ 2. Out: a 2×3 matrix M with ``dst ≈ M[:, :2] @ p + M[:, 2]``
    (Umeyama 1991, reflections excluded).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (sc ** 2).sum(1).mean()
    scale = float((s * d).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def warp_similarity(img: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp an RGB uint8 image with a 2×3 source→output transform, bilinear, black outside.

    In: (H, W, 3) uint8 array, M mapping source pixel coordinates to output coordinates (pixel
    centres at integers), output (width, height). Out: (height, width, 3) uint8 array.
    """
    a = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)
    # PIL samples input position inv @ (x + .5) in "pixel edge" units; shift to centre units.
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unhalf = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    coeffs = (half @ inv @ unhalf)[:2].ravel()
    out = Image.fromarray(img).transform(tuple(size), Image.AFFINE, tuple(coeffs),
                                         resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out)


def arcface_points(shape68) -> np.ndarray:
    """The five template points from a dlib 68-point shape: eye centres, nose tip, mouth corners.

    In: a ``dlib.full_object_detection`` with 68 parts. Out: (5, 2) float array (x, y) in the
    order of ``ARCFACE_112``.
    """
    p = np.array([[shape68.part(i).x, shape68.part(i).y] for i in range(68)], dtype=np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def choose_face(boxes: Sequence[tuple[int, int, int, int]], width: int, height: int,
                select: str = "largest") -> int:
    """Index of the face to keep among detected boxes ``(left, top, right, bottom)``.

    ``largest``: the biggest box area (first on ties). ``center``: the box whose centre is nearest
    the image centre. Raises ValueError for no boxes or an unknown mode.
    """
    if not boxes:
        raise ValueError("no boxes to choose from")
    if select == "largest":
        areas = [(r - l) * (b - t) for l, t, r, b in boxes]
        return int(np.argmax(areas))
    if select == "center":
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        dist = [((l + r) / 2.0 - cx) ** 2 + ((t + b) / 2.0 - cy) ** 2 for l, t, r, b in boxes]
        return int(np.argmin(dist))
    raise ValueError(f"unknown face selection {select!r} (use {' or '.join(SELECT_MODES)})")


def fallback_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The fixed ``FALLBACK_BOX`` in pixels of a ``width``×``height`` image (left, top, right, bottom)."""
    l, t, r, b = FALLBACK_BOX
    return (int(round(l * width)), int(round(t * height)), int(round(r * width)), int(round(b * height)))


@dataclass
class AlignResult:
    """Outcome for one image: status, detection details, alignment points and the crop.

    status: ok / fallback / no_face / unreadable. box: (left, top, right, bottom) or None.
    points: (5, 2) source-pixel points used for alignment, or None. chip: (H, W, 3) uint8 or None.
    """

    status: str
    n_faces: int = 0
    face_index: int | None = None
    upsampled: bool = False
    box: tuple[int, int, int, int] | None = None
    points: np.ndarray | None = None
    chip: np.ndarray | None = None
    reason: str = ""


class FaceAligner:
    """dlib HOG detector + landmark predictor + one template, for aligning single images.

    In: template (``dlib150`` or ``arcface112``), select (``largest``/``center``), fallback
    (``none``/``center-box``). ``align_array(rgb uint8 array)`` / ``align_file(path)`` →
    ``AlignResult``.
    """

    def __init__(self, template: str = "dlib150", select: str = "largest",
                 fallback: str = "none") -> None:
        if template not in TEMPLATES:
            raise FroqError(f"unknown alignment template {template!r}: use {' or '.join(TEMPLATES)}")
        if select not in SELECT_MODES:
            raise FroqError(f"unknown face selection {select!r}: use {' or '.join(SELECT_MODES)}")
        if fallback not in FALLBACKS:
            raise FroqError(f"unknown fallback {fallback!r}: use {' or '.join(FALLBACKS)}")
        self.dlib = _import_dlib()
        self.template, self.select, self.fallback = template, select, fallback
        name = "shape_predictor_5_face_landmarks.dat" if template == "dlib150" \
            else "shape_predictor_68_face_landmarks.dat"
        path = model_dir() / name
        if not path.is_file():
            raise FroqError(f"dlib landmark model not found: {path} — reinstall face-recognition-models")
        self.detector = self.dlib.get_frontal_face_detector()
        self.predictor = self.dlib.shape_predictor(str(path))

    @property
    def size(self) -> tuple[int, int]:
        """Output crop (width, height)."""
        return (DLIB150_SIZE, DLIB150_SIZE) if self.template == "dlib150" else (112, 112)

    def detect(self, img: np.ndarray) -> tuple[list[tuple[int, int, int, int]], bool]:
        """HOG face boxes of an RGB uint8 image, retrying once with 1× upsampling when none.

        Out: ``([(left, top, right, bottom), ...] in dlib's order, upsampled flag)``.
        """
        rects = self.detector(img, 0)
        upsampled = False
        if len(rects) == 0:
            rects = self.detector(img, 1)
            upsampled = True
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects], upsampled and len(rects) > 0

    def align_array(self, img: np.ndarray) -> AlignResult:
        """Detect, choose, landmark and align one RGB uint8 (H, W, 3) image → ``AlignResult``."""
        img = np.ascontiguousarray(img, dtype=np.uint8)
        h, w = img.shape[:2]
        boxes, upsampled = self.detect(img)
        if boxes:
            index = choose_face(boxes, w, h, self.select)
            box, status = boxes[index], "ok"
        elif self.fallback == "center-box":
            index, box, status = None, fallback_box(w, h), "fallback"
        else:
            return AlignResult(status="no_face", reason="no face detected")
        shape = self.predictor(img, self.dlib.rectangle(*box))
        if self.template == "dlib150":
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
            chip = self.dlib.get_face_chip(img, shape, size=DLIB150_SIZE, padding=DLIB150_PADDING)
        else:
            points = arcface_points(shape)
            chip = warp_similarity(img, umeyama_similarity(points, ARCFACE_112), (112, 112))
        return AlignResult(status=status, n_faces=len(boxes), face_index=index, upsampled=upsampled,
                           box=box, points=points, chip=np.asarray(chip, dtype=np.uint8))

    def align_file(self, path: str | os.PathLike) -> AlignResult:
        """Read an image (``froq.core.images.load_rgb``) and align it; unreadable → status ``unreadable``."""
        try:
            img = np.asarray(load_rgb(path))
        except _READ_ERRORS as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return AlignResult(status="unreadable", reason=reason)
        return self.align_array(img)


def output_name(rel: str, ext: str) -> str:
    """Output relative path of input ``rel`` for ``ext`` (``png``, ``jpg`` or ``same``)."""
    if ext == "same":
        return rel
    return str(Path(rel).with_suffix("." + ext).as_posix())


def result_row(rel: str, out_rel: str, res: AlignResult) -> list:
    """One ``landmarks.csv`` row (``CSV_HEADER`` order) for an image's ``AlignResult``."""
    box = list(res.box) if res.box is not None else [""] * 4
    pts = [round(float(v), 3) for v in res.points.ravel()] if res.points is not None else [""] * 10
    return ([rel, out_rel if res.chip is not None else "", res.status, res.n_faces,
             "" if res.face_index is None else res.face_index, int(res.upsampled)]
            + box + pts + [res.reason])


# -- worker-process plumbing (each process builds its own dlib objects) -----------------------
_WORKER: FaceAligner | None = None


def _init_worker(template: str = "dlib150", select: str = "largest", fallback: str = "none",
                 aligner: FaceAligner | None = None) -> None:
    global _WORKER
    if aligner is None:  # a pool process: Ctrl-C is handled by the parent, which stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = aligner if aligner is not None else FaceAligner(template, select, fallback)


def _align_task(task: tuple[str, str, str, str]) -> list:
    in_root, rel, out_root, out_rel = task
    res = _WORKER.align_file(Path(in_root) / rel)
    if res.chip is not None:
        save_rgb(res.chip, Path(out_root) / out_rel)
    return result_row(rel, out_rel, res)


def _known_rows(output: Path, settings: dict, input_dir: Path) -> dict[str, list[str]]:
    """Rows of a previous complete run into ``output`` (empty when none).

    Raises FroqError when that run used other settings or another input folder.
    """
    meta_path = output / "align.json"
    if not meta_path.is_file():
        return {}
    meta = read_json(meta_path)
    if meta.get("settings") != settings:
        raise FroqError(f"{output} was aligned with other settings ({meta.get('settings')}); "
                        f"use another --output folder for {settings}")
    if meta.get("input") not in (None, str(input_dir.resolve())):
        raise FroqError(f"{output} holds crops of another input folder ({meta.get('input')}); "
                        f"use another --output folder for {input_dir}")
    csv_path = output / "landmarks.csv"
    if not csv_path.is_file():
        return {}
    return {r["path"]: [r.get(c, "") for c in CSV_HEADER] for r in read_csv(csv_path, CSV_HEADER)}


def align_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 template: str = "dlib150", select: str = "largest", fallback: str = "none",
                 workers: int = 1, paths: Sequence[str] | None = None, ext: str = "png",
                 progress: bool = True) -> dict:
    """Align every image of ``input_dir`` (or the listed relative ``paths``) into ``output_dir``.

    Crops keep the relative folder structure; ``landmarks.csv`` and ``align.json`` are written
    into ``output_dir``. Existing crops with a known row are skipped (resume). Out: the summary
    dict (counts per status, lists of problem files, images/s). Raises FroqError for bad
    arguments, a missing input folder or an output folder aligned with other settings.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FroqError(f"input folder not found: {input_dir}")
    if ext not in ("png", "jpg", "same"):
        raise FroqError(f"unknown --ext {ext!r}: use png, jpg or same")
    if output_dir.resolve() == input_dir.resolve() or input_dir.resolve() in output_dir.resolve().parents:
        raise FroqError(f"--output {output_dir} is inside --input {input_dir}: choose a folder outside it")
    aligner = FaceAligner(template, select, fallback)  # validates arguments and models first
    rels = list(paths) if paths is not None else list_images(input_dir)
    missing = [r for r in rels if not (input_dir / r).is_file()]
    if missing:
        raise FroqError(f"{len(missing)} listed image(s) not found in {input_dir}, e.g. {missing[0]}")
    settings = {"template": template, "select": select, "fallback": fallback, "ext": ext}
    output_dir.mkdir(parents=True, exist_ok=True)
    known = _known_rows(output_dir, settings, input_dir)
    rowlog = RowLog(output_dir / "landmarks.csv", CSV_HEADER, {**settings, "input": str(input_dir.resolve())})
    known.update(rowlog.done)

    rows: dict[str, list] = {}
    todo = []
    for rel in rels:
        if not valid_utf8(rel):  # listed, never lost: its name cannot go into landmarks.csv as is
            rows[rel] = result_row(printable(rel), "", AlignResult(
                status="unreadable", reason="file name is not valid UTF-8: rename the file"))
            continue
        out_rel = output_name(rel, ext)
        row = known.get(rel)
        if row is not None and row[2] in DONE_STATUSES and (
                row[2] == "no_face" or (output_dir / out_rel).is_file()):
            rows[rel] = row
        else:
            todo.append((str(input_dir), rel, str(output_dir), out_rel))
    if len(rows):
        log.info("resuming: %d of %d images already aligned in %s", len(rows), len(rels), output_dir)

    start = time.perf_counter()
    workers = max(1, min(int(workers), len(todo) or 1))
    bar = _progress(len(todo), progress)
    pending: list[list] = []

    def collect(row: list) -> None:
        rows[row[0]] = row
        pending.append(row)
        if row[2] == "no_face":
            log.warning("align: no face found in %s (skipped; --fallback center-box uses a fixed box)",
                        row[0])
        elif row[2] == "unreadable":
            log.warning("align: skipped unreadable image %s (%s)", row[0], row[-1])
        if len(pending) >= 64:
            rowlog.append(pending)
            pending.clear()
        bar.update(1)

    try:
        if workers == 1:
            _init_worker(aligner=aligner)
            for task in todo:
                collect(_align_task(task))
        else:
            ctx = multiprocessing.get_context()
            with ctx.Pool(workers, initializer=_init_worker,
                          initargs=(template, select, fallback)) as pool:
                for row in pool.imap(_align_task, todo, chunksize=8):
                    collect(row)
    finally:
        if pending:
            rowlog.append(pending)
        bar.close()
    elapsed = time.perf_counter() - start

    ordered = [rows[r] for r in rels]
    write_csv(output_dir / "landmarks.csv", CSV_HEADER, ordered)
    summary = summarize(ordered)
    summary.update(processed=len(todo), resumed=len(rels) - len(todo), seconds=round(elapsed, 3),
                   images_per_second=round(len(todo) / elapsed, 2) if todo and elapsed > 0 else None,
                   workers=workers)
    write_json(output_dir / "align.json", {"settings": settings, "input": str(input_dir.resolve()),
                                           "summary": summary})
    rowlog.discard()
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="align", unit="img", dynamic_ncols=True,
                disable=not enabled or total == 0 or not sys.stderr.isatty())  # bars on terminals only


def summarize(rows: Sequence[Sequence]) -> dict:
    """Counts per status, upsampled detections and the problem files of ``landmarks.csv`` rows."""
    counts = {s: 0 for s in ("ok", "fallback", "no_face", "unreadable")}
    for r in rows:
        counts[r[2]] = counts.get(r[2], 0) + 1
    return {"images": len(rows), **counts,
            "upsampled": sum(1 for r in rows if str(r[5]) == "1"),
            "fallback_files": [r[0] for r in rows if r[2] == "fallback"],
            "no_face_files": [r[0] for r in rows if r[2] == "no_face"],
            "unreadable_files": [r[0] for r in rows if r[2] == "unreadable"]}


def summary_line(summary: dict) -> str:
    """One human line for a summary of ``align_folder``."""
    line = (f"{summary['images']} images: {summary['ok']} aligned, {summary['fallback']} with the "
            f"fallback box, {summary['no_face']} without a face, {summary['unreadable']} unreadable "
            f"({summary['upsampled']} found after upsampling; {summary['resumed']} already done)")
    if summary.get("images_per_second"):
        line += f"; {summary['images_per_second']} images/s on {summary['workers']} worker(s)"
    for key, what in (("no_face_files", "no face"), ("unreadable_files", "unreadable")):
        files = summary[key]
        if files:
            line += f"\n  {what}: " + ", ".join(files[:10]) + (" ..." if len(files) > 10 else "")
    return line


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``align.py``."""
    p = argparse.ArgumentParser(description="Detect and align faces of an image folder (dlib).")
    p.add_argument("--input", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--output", required=True, help="folder for the aligned crops and landmarks.csv")
    p.add_argument("--template", required=True, choices=TEMPLATES,
                   help="dlib150 (dlib ResNet input) or arcface112 (ArcFace/AdaFace input)")
    p.add_argument("--select", default="largest", choices=SELECT_MODES,
                   help="which face when several are found (center is better for LFW)")
    p.add_argument("--fallback", default="none", choices=FALLBACKS,
                   help="center-box: align images without detection from a fixed central box")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                   help="processes (default: the number of CPUs, at most 8)")
    p.add_argument("--ext", default="png", choices=("png", "jpg", "same"),
                   help="file type of the crops (png: lossless, the default)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return add_config_options(p)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry: align a folder and print the summary line. Out: the summary dict."""
    args = parse_with_config(build_parser(), argv)
    setup_logging(args.verbose)
    if args.workers < 1:
        raise FroqError(f"--workers must be >= 1 (got {args.workers})")
    summary = align_folder(args.input, args.output, args.template, args.select, args.fallback,
                           args.workers, ext=args.ext)
    print(summary_line(summary))
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
