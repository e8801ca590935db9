"""Face detection and alignment of a folder of photos into FR-ready face crops.

Usage::

    python preparation/align.py --input photos/ --output aligned/ (--template NAME | --fr CONFIG) \
        [--select central|largest|center] [--fallback none|center-box] [--workers N] [--ext png|jpg|same]

For every image of ``--input`` (read with ``froq.core.images.list_images`` / ``load_rgb``) dlib's HOG
detector finds the faces (if none, it is run again on the image upsampled once), one face is chosen
(``--select``, below), dlib's landmark predictor of the ``face_recognition_models`` package locates
its landmarks, and the aligned crop is written under ``--output`` with the same relative path
(extension from ``--ext``).

Templates
---------
The template is named (``--template``) or taken from an FR config (``--fr``: its ``alignment`` key,
else the template of its ``preprocess.size``; see ``face_recognition_model.templates``):

``dlib150``
    Exactly ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)`` with dlib's 5-point
    predictor: the input of dlib's face-recognition ResNet.
``arcface112``, ``sphereface96x112`` and templates of your own (five points and a size)
    dlib's 5-point model has no mouth corners, so the five points (left eye, right eye, nose tip,
    left and right mouth corners) come from the 68-point predictor: eye centres = mean of points
    36–41 and 42–47, nose tip = 30, mouth corners = 48 and 54. A least-squares similarity
    transform (Umeyama, numpy) maps them onto the template, and the image is warped with PIL's
    bilinear affine sampling to the template's width × height (pixel centres at integer
    coordinates, as in the template; outside pixels are black).

Face choice (``--select``)
--------------------------
``central`` (default)
    The face with the largest ``area / (1 + (d / r)^2)``: ``d`` = distance of the box centre from
    the image centre, ``r`` = half the box side. A face one half-width off the centre counts half
    its area; a face whose box no longer covers the centre fades quickly, so the centred subject of
    a portrait wins over a larger face at the edge, and a large face over a tiny one (a poster, a
    face in the crowd) near the centre. On the 2,320 pair images of LFW folds 1–3 it chooses the
    same face as ``center`` on every image, and 17 differ from ``largest``; faces more than 40 px
    from the centre: 19 with ``largest``, 2 with ``central`` (docs/cli.md#face-choice).
``largest``
    The biggest box (first on ties).
``center``
    The box whose centre is nearest the image centre, whatever its size.

Faces that cannot be found
--------------------------
By default an image with no detection is reported (warning, ``no_face`` row in the CSV, count in
the summary) and no crop is written. ``--fallback center-box`` instead runs the landmark predictor
in a fixed box at the usual position of the face in LFW-style centred photos: ``FALLBACK_BOX`` =
(0.31, 0.36, 0.72, 0.76) of (width, height, width, height) — the median HOG box on LFW's
250×250 photos is (77, 89, 181, 189). Such rows have status ``fallback``. Unreadable files are
warned about, listed with status ``unreadable``, and the run continues. Scoring gives no_face and
unreadable photos the lowest quality (``froq score-photos``, docs/cli.md#scoring-photos-with-a-saved-observer).

Outputs
-------
``<output>/landmarks.csv`` (written atomically at the end): one row per input image with
``path`` (input-relative), ``output`` (output-relative, empty without a crop), ``status``
(ok / fallback / no_face / unreadable), ``n_faces``, ``face_index`` (index of the chosen face in
dlib's detection list), ``upsampled`` (1 when found only after upsampling), the box
(``left, top, right, bottom``, source pixels), the five alignment points ``p1_x, p1_y … p5_x, p5_y``
in source pixels (dlib150: the 5-point predictor's points in dlib's order; other templates: left
eye, right eye, nose, left mouth, right mouth as above), the image ``width`` and ``height``,
``boxes`` (every detected box, ``left top right bottom`` separated by ``;``), ``file`` (the photo's
size and modification time, ``size:mtime_ns``) and ``reason`` for problems.
``<output>/align.json``: the settings and the run summary.

Re-running
----------
Rows are also appended to ``landmarks.csv.partial`` while running, so an interrupted run resumes:
an image is skipped when its crop exists (or it had no face) and its row is known for the same
photo file. Re-running into the same output with another ``--select`` or ``--fallback`` reuses the
detections stored in ``landmarks.csv`` (the HOG detector is the slow part): only the choice is
made again, and only the crops whose chosen face changes are made again (landmarks ~2 ms, warp),
without detection; their rows are dropped from ``landmarks.csv`` before their crops change, so an
interrupted change never leaves a crop that disagrees with its row. Re-running into a folder
aligned with another template or extension, or from another input folder, is refused.
"""

from __future__ import annotations

import argparse
import functools
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
from PIL import Image

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_recognition_model.templates import (ARCFACE_112 as _ARCFACE_112, DLIB150_PADDING, NAMED,
                                              AlignmentTemplate, named_template)
from froq.core.cli import add_config_options, parse_with_config, run_main, setup_logging
from froq.core.errors import FroqError
from froq.core.images import (NOT_UTF8, READ_ERRORS, FailureLog, list_images, load_rgb, printable, read_image_size, save_rgb,
                              valid_utf8)
from froq.core.io import RowLog, read_csv, read_json, write_csv, write_json
from froq.core.runner import file_identity

log = logging.getLogger(__name__)

TEMPLATES = tuple(NAMED)
SELECT_MODES = ("central", "largest", "center")
DEFAULT_SELECT = "central"
FALLBACKS = ("none", "center-box")

#: insightface's 112×112 template: left eye, right eye, nose tip, left / right mouth corner (x, y).
ARCFACE_112 = np.array(_ARCFACE_112, dtype=np.float64)
#: fallback face box as fractions (left, top, right, bottom) of (width, height, width, height).
FALLBACK_BOX = (0.31, 0.36, 0.72, 0.76)
DLIB150_SIZE = 150

CSV_HEADER = (["path", "output", "status", "n_faces", "face_index", "upsampled",
               "left", "top", "right", "bottom"]
              + [f"p{i}_{c}" for i in range(1, 6) for c in ("x", "y")]
              + ["width", "height", "boxes", "file", "reason"])
#: columns a landmarks.csv of an older version has (rows without the others are read too)
REQUIRED_COLUMNS = CSV_HEADER[:16]
COL = {name: i for i, name in enumerate(CSV_HEADER)}
DONE_STATUSES = ("ok", "fallback", "no_face")

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
    order of the templates (left eye, right eye, nose tip, left / right mouth corner).
    """
    p = np.array([[shape68.part(i).x, shape68.part(i).y] for i in range(68)], dtype=np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def choose_face(boxes: Sequence[tuple[int, int, int, int]], width: int, height: int,
                select: str = DEFAULT_SELECT) -> int:
    """Index of the face to keep among detected boxes ``(left, top, right, bottom)``.

    ``central``: the largest ``area / (1 + (d / r)^2)``, d = distance of the box centre from the
    image centre, r = half the box side (module docstring). ``largest``: the biggest box area.
    ``center``: the box whose centre is nearest the image centre. The first box wins ties.
    Raises ValueError for no boxes or an unknown mode.
    """
    if not boxes:
        raise ValueError("no boxes to choose from")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    areas = np.array([max(r - l, 0) * max(b - t, 0) for l, t, r, b in boxes], dtype=np.float64)
    dist2 = np.array([((l + r) / 2.0 - cx) ** 2 + ((t + b) / 2.0 - cy) ** 2 for l, t, r, b in boxes])
    if select == "largest":
        return int(np.argmax(areas))
    if select == "center":
        return int(np.argmin(dist2))
    if select == "central":
        half_side2 = np.maximum(areas, 1.0) / 4.0  # r^2 with r = sqrt(area) / 2
        return int(np.argmax(areas / (1.0 + dist2 / half_side2)))
    raise ValueError(f"unknown face selection {select!r} (use {' or '.join(SELECT_MODES)})")


def fallback_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The fixed ``FALLBACK_BOX`` in pixels of a ``width``×``height`` image (left, top, right, bottom)."""
    l, t, r, b = FALLBACK_BOX
    return (int(round(l * width)), int(round(t * height)), int(round(r * width)), int(round(b * height)))


def resolve_template(template: str | AlignmentTemplate) -> AlignmentTemplate:
    """A template given by name or as an ``AlignmentTemplate`` → the ``AlignmentTemplate``."""
    if isinstance(template, AlignmentTemplate):
        return template
    return named_template(str(template), "alignment")


def template_setting(template: AlignmentTemplate) -> str | dict:
    """How ``align.json`` records a template: its name for a named one, the full record otherwise."""
    return template.name if NAMED.get(template.name) == template else template.record()


@dataclass
class Detections:
    """The detector's output for one image (what a re-run with another face choice reuses):
    boxes ``(left, top, right, bottom)`` in dlib's order, whether they needed upsampling, and
    the image size."""

    boxes: list[tuple[int, int, int, int]]
    upsampled: bool
    width: int
    height: int


@dataclass
class AlignResult:
    """Outcome for one image: status, detection details, alignment points and the crop.

    status: ok / fallback / no_face / unreadable. box: (left, top, right, bottom) or None.
    points: (5, 2) source-pixel points used for alignment, or None. chip: (H, W, 3) uint8 or None.
    detections: the detector's output (None when the image could not be read).
    """

    status: str
    n_faces: int = 0
    face_index: int | None = None
    upsampled: bool = False
    box: tuple[int, int, int, int] | None = None
    points: np.ndarray | None = None
    chip: np.ndarray | None = None
    reason: str = ""
    detections: Detections | None = None


class FaceAligner:
    """dlib HOG detector + landmark predictor + one template, for aligning single images.

    In: template (a name such as ``dlib150`` / ``arcface112`` / ``sphereface96x112``, or an
    ``AlignmentTemplate``), select (``central``/``largest``/``center``), fallback
    (``none``/``center-box``). ``align_array(rgb uint8 array)`` / ``align_file(path)`` →
    ``AlignResult``; both take known ``Detections`` to skip the detector.
    """

    def __init__(self, template: str | AlignmentTemplate = "dlib150", select: str = DEFAULT_SELECT,
                 fallback: str = "none") -> None:
        self.template = resolve_template(template)
        if select not in SELECT_MODES:
            raise FroqError(f"unknown face selection {select!r}: use {' or '.join(SELECT_MODES)}")
        if fallback not in FALLBACKS:
            raise FroqError(f"unknown fallback {fallback!r}: use {' or '.join(FALLBACKS)}")
        self.dlib = _import_dlib()
        self.select, self.fallback = select, fallback
        self.detector = self.dlib.get_frontal_face_detector()
        self.predictor = load_predictor(68 if self.template.method == "similarity" else 5)

    @property
    def size(self) -> tuple[int, int]:
        """Output crop (width, height)."""
        return (self.template.width, self.template.height)

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

    def crop(self, img: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks in ``box`` and the aligned crop of an RGB uint8 image.

        Out: ``(points (5, 2) in source pixels, chip (height, width, 3) uint8)``."""
        shape = self.predictor(img, self.dlib.rectangle(*box))
        if self.template.method == "dlib_chip":
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
            chip = self.dlib.get_face_chip(img, shape, size=self.template.width, padding=DLIB150_PADDING)
        else:
            points = arcface_points(shape)
            target = np.asarray(self.template.points, dtype=np.float64)
            chip = warp_similarity(img, umeyama_similarity(points, target), self.size)
        return points, np.asarray(chip, dtype=np.uint8)

    def align_array(self, img: np.ndarray, detections: Detections | None = None) -> AlignResult:
        """Detect (unless ``detections`` are given), choose, landmark and align one RGB uint8
        (H, W, 3) image → ``AlignResult``."""
        img = np.ascontiguousarray(img, dtype=np.uint8)
        h, w = img.shape[:2]
        if detections is None:
            boxes, upsampled = self.detect(img)
            detections = Detections(boxes, upsampled, w, h)
        boxes = detections.boxes
        if boxes:
            index = choose_face(boxes, w, h, self.select)
            box, status = boxes[index], "ok"
        elif self.fallback == "center-box":
            index, box, status = None, fallback_box(w, h), "fallback"
        else:
            return AlignResult(status="no_face", reason="no face detected", detections=detections)
        points, chip = self.crop(img, box)
        return AlignResult(status=status, n_faces=len(boxes), face_index=index,
                           upsampled=detections.upsampled, box=box, points=points, chip=chip,
                           detections=detections)

    def align_file(self, path: str | os.PathLike, detections: Detections | None = None) -> AlignResult:
        """Read an image (``froq.core.images.load_rgb``) and align it; unreadable → status ``unreadable``."""
        try:
            img = np.asarray(load_rgb(path))
        except READ_ERRORS as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return AlignResult(status="unreadable", reason=reason)
        if detections is not None and (detections.width, detections.height) != (img.shape[1], img.shape[0]):
            detections = None  # not this image: detect again
        return self.align_array(img, detections)


@functools.lru_cache(maxsize=None)
def load_predictor(points: int):
    """dlib's 5- or 68-point landmark predictor from ``face_recognition_models`` (loaded once per
    process: the 68-point model takes seconds); FroqError if absent."""
    dlib = _import_dlib()
    path = model_dir() / f"shape_predictor_{points}_face_landmarks.dat"
    if not path.is_file():
        raise FroqError(f"dlib landmark model not found: {path} — reinstall face-recognition-models")
    return dlib.shape_predictor(str(path))


def output_name(rel: str, ext: str) -> str:
    """Output relative path of input ``rel`` for ``ext`` (``png``, ``jpg`` or ``same``)."""
    if ext == "same":
        return rel
    return str(Path(rel).with_suffix("." + ext).as_posix())


def format_boxes(boxes: Sequence[tuple[int, int, int, int]]) -> str:
    """Boxes as ``landmarks.csv`` stores them: ``"l t r b;l t r b"`` ('' for none)."""
    return ";".join(" ".join(str(int(v)) for v in b) for b in boxes)


def parse_boxes(text: str) -> list[tuple[int, int, int, int]]:
    """The inverse of ``format_boxes``; ValueError for malformed text."""
    out = []
    for part in filter(None, text.split(";")):
        values = [int(v) for v in part.split()]
        if len(values) != 4:
            raise ValueError(f"not a box: {part!r}")
        out.append(tuple(values))
    return out


def result_row(rel: str, out_rel: str, res: AlignResult, file: str = "") -> list:
    """One ``landmarks.csv`` row (``CSV_HEADER`` order) for an image's ``AlignResult``; ``file`` is
    the photo's ``froq.core.runner.file_identity``."""
    box = list(res.box) if res.box is not None else [""] * 4
    pts = [round(float(v), 3) for v in res.points.ravel()] if res.points is not None else [""] * 10
    det = res.detections
    cache = ([det.width, det.height, format_boxes(det.boxes)] if det is not None else ["", "", ""])
    return ([rel, out_rel if res.chip is not None else "", res.status, res.n_faces,
             "" if res.face_index is None else res.face_index, int(res.upsampled)]
            + box + pts + cache + [file if det is not None else "", res.reason])


def cached_detections(row: Sequence[str]) -> Detections | None:
    """The detections stored in a ``landmarks.csv`` row (None when the row has none: an older
    version's row, an unreadable image, a malformed entry)."""
    if row[COL["status"]] not in DONE_STATUSES or not row[COL["file"]] or not row[COL["width"]]:
        return None
    try:
        boxes = parse_boxes(row[COL["boxes"]])
        if len(boxes) != int(row[COL["n_faces"]] or 0):
            return None
        return Detections(boxes, row[COL["upsampled"]] == "1", int(row[COL["width"]]),
                          int(row[COL["height"]]))
    except ValueError:
        return None


def choice_of(det: Detections, select: str, fallback: str) -> tuple[str, str]:
    """``(status, face_index)`` as ``landmarks.csv`` writes them for ``det`` under a face choice."""
    if det.boxes:
        return "ok", str(choose_face(det.boxes, det.width, det.height, select))
    return ("fallback", "") if fallback == "center-box" else ("no_face", "")


# -- worker-process plumbing (each process builds its own dlib objects) -----------------------
_WORKER: FaceAligner | None = None


def _init_worker(template: str | AlignmentTemplate = "dlib150", select: str = DEFAULT_SELECT,
                 fallback: str = "none", aligner: FaceAligner | None = None) -> None:
    global _WORKER
    if aligner is None:  # a pool process: Ctrl-C is handled by the parent, which stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = aligner if aligner is not None else FaceAligner(template, select, fallback)


def _align_task(task: tuple[str, str, str, str, Detections | None]) -> list:
    in_root, rel, out_root, out_rel, detections = task
    path = Path(in_root) / rel
    file = file_identity(path)
    res = _WORKER.align_file(path, detections)
    if res.chip is not None:
        save_rgb(res.chip, Path(out_root) / out_rel)
    return result_row(rel, out_rel, res, file)


def _previous_run(output: Path, settings: dict, input_dir: Path) -> tuple[dict[str, list[str]], dict | None]:
    """Rows and settings of a previous complete run into ``output`` (``({}, None)`` when none).

    Rows of an older ``landmarks.csv`` get '' for the columns it lacks. Raises FroqError when that
    run used another template or extension, or another input folder (``--select`` and
    ``--fallback`` may differ: their detections are reused).
    """
    meta_path = output / "align.json"
    if not meta_path.is_file():
        return {}, None
    meta = read_json(meta_path)
    previous = meta.get("settings") if isinstance(meta, dict) else None
    if not isinstance(previous, dict):
        raise FroqError(f"{meta_path}: no 'settings': not written by preparation/align.py; "
                        "use another --output folder")
    fixed = ("template", "ext")
    if any(previous.get(k) != settings[k] for k in fixed):
        raise FroqError(f"{output} was aligned with other settings "
                        f"({ {k: previous.get(k) for k in fixed} }); use another --output folder for "
                        f"{ {k: settings[k] for k in fixed} }")
    if meta.get("input") not in (None, str(input_dir.resolve())):
        raise FroqError(f"{output} holds crops of another input folder ({meta.get('input')}); "
                        f"use another --output folder for {input_dir}")
    csv_path = output / "landmarks.csv"
    if not csv_path.is_file():
        return {}, previous
    rows = {r["path"]: [r.get(c) or "" for c in CSV_HEADER] for r in read_csv(csv_path, REQUIRED_COLUMNS)}
    return rows, previous


def _plan(rel: str, out_rel: str, row: list[str] | None, same_settings: bool, output_dir: Path,
          identity: str, select: str, fallback: str) -> tuple[str, Detections | None]:
    """What to do for one image given its known row: ``("keep", None)``, ``("recrop", detections)``
    (choice changed: crop again from the stored detections) or ``("align", None)`` (detect)."""
    if row is None or row[COL["status"]] not in DONE_STATUSES:
        return "align", None
    if row[COL["file"]] and row[COL["file"]] != identity:
        return "align", None  # the photo changed since
    has_crop = row[COL["status"]] == "no_face" or (output_dir / out_rel).is_file()
    if same_settings:
        return ("keep", None) if has_crop else ("align", None)
    det = cached_detections(row)
    if det is None:
        return "align", None
    status, index = choice_of(det, select, fallback)
    if has_crop and (status, index) == (row[COL["status"]], row[COL["face_index"]]):
        return "keep", None
    return "recrop", det


def align_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 template: str | AlignmentTemplate = "dlib150", select: str = DEFAULT_SELECT,
                 fallback: str = "none", workers: int = 1, paths: Sequence[str] | None = None,
                 ext: str = "png", progress: bool = True) -> dict:
    """Align every image of ``input_dir`` (or the listed relative ``paths``) into ``output_dir``.

    In: the folders, a template (name or ``AlignmentTemplate``), the face choice and fallback,
    worker processes, the crops' extension. Crops keep the relative folder structure;
    ``landmarks.csv`` and ``align.json`` are written into ``output_dir``. Existing crops with a
    known row are kept (resume); with another ``select``/``fallback`` than the previous run, the
    stored detections are reused and only changed choices are cropped again. Out: the summary
    dict (counts per status, lists of problem files, images detected / re-cropped, images/s).
    Raises FroqError for bad arguments, a missing input folder or an output folder aligned with
    another template, extension or input folder.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FroqError(f"input folder not found: {input_dir}")
    if ext not in ("png", "jpg", "same"):
        raise FroqError(f"unknown --ext {ext!r}: use png, jpg or same")
    if output_dir.resolve() == input_dir.resolve() or input_dir.resolve() in output_dir.resolve().parents:
        raise FroqError(f"--output {output_dir} is inside --input {input_dir}: choose a folder outside it")
    aligner = FaceAligner(template, select, fallback)  # validates arguments and models first
    template = aligner.template
    rels = list(paths) if paths is not None else list_images(input_dir)
    missing = [r for r in rels if not os.path.lexists(input_dir / r)]  # a pipe or a broken link is
    if missing:                                                          # listed as unreadable below
        raise FroqError(f"{len(missing)} listed image(s) do not exist in {input_dir}, e.g. {missing[0]}: "
                        "fix the list (paths relative to --input) or the --input folder")
    settings = {"template": template_setting(template), "select": select, "fallback": fallback, "ext": ext}
    output_dir.mkdir(parents=True, exist_ok=True)
    known, previous = _previous_run(output_dir, settings, input_dir)
    same_settings = previous is None or previous == settings
    rowlog = RowLog(output_dir / "landmarks.csv", CSV_HEADER, {**settings, "input": str(input_dir.resolve())})

    rows: dict[str, list] = {}
    todo = []
    redo_known = set()  # images whose row in landmarks.csv is about to change
    for rel in rels:
        if not valid_utf8(rel):  # listed, never lost: its name cannot go into landmarks.csv as is
            rows[rel] = result_row(printable(rel), "", AlignResult(
                status="unreadable", reason=NOT_UTF8))
            continue
        out_rel = output_name(rel, ext)
        identity = file_identity(input_dir / rel)
        if rel in rowlog.done:  # this very run, interrupted: as with the same settings
            action, det = _plan(rel, out_rel, rowlog.done[rel], True, output_dir, identity, select, fallback)
        else:
            action, det = _plan(rel, out_rel, known.get(rel), same_settings, output_dir, identity,
                                select, fallback)
        if action == "keep":
            rows[rel] = rowlog.done.get(rel) or known[rel]
        else:
            todo.append((str(input_dir), rel, str(output_dir), out_rel, det))
            if rel in known:
                redo_known.add(rel)
    recrop = sum(1 for t in todo if t[4] is not None)
    if rows:
        log.info("resuming: %d of %d images already aligned in %s", len(rows), len(rels), output_dir)
    if not same_settings:
        log.info("%s was aligned with %s: reusing its detections; %d crop(s) change, %d image(s) "
                 "need detection", output_dir, {k: previous.get(k) for k in ("select", "fallback")},
                 recrop, len(todo) - recrop)
        if redo_known:  # their crops change now: no row may claim the old crop if we stop midway
            write_csv(output_dir / "landmarks.csv", CSV_HEADER,
                      [r for p, r in known.items() if p not in redo_known])

    start = time.perf_counter()
    workers = max(1, min(int(workers), len(todo) or 1))
    bar = _progress(len(todo), progress)
    unreadable = FailureLog("align")  # warns about the first few; the rows list every one
    no_face: list[str] = []

    def collect(row: list) -> None:
        rows[row[0]] = row
        rowlog.append([row])  # at once: a crop on disk never outlives an unwritten row for long
        status, rel = row[COL["status"]], row[0]
        if status == "no_face":
            stale = output_dir / output_name(rel, ext)
            if stale.is_file():  # a crop of an earlier fallback run: no crop for no_face
                stale.unlink()
            no_face.append(rel)
            if len(no_face) <= FailureLog.WARN_EACH:
                log.warning("align: no face found in %s (skipped; --fallback center-box uses a fixed box)%s",
                            rel, "; further ones are listed in landmarks.csv only"
                            if len(no_face) == FailureLog.WARN_EACH else "")
        elif status == "unreadable":
            unreadable.add(rel, row[COL["reason"]])
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
        bar.close()
    elapsed = time.perf_counter() - start

    ordered = [rows[r] for r in rels]
    write_csv(output_dir / "landmarks.csv", CSV_HEADER, ordered)
    summary = summarize(ordered)
    summary.update(processed=len(todo), resumed=len(rels) - len(todo), detected=len(todo) - recrop,
                   recropped=recrop, seconds=round(elapsed, 3),
                   images_per_second=round(len(todo) / elapsed, 2) if todo and elapsed > 0 else None,
                   workers=workers)
    write_json(output_dir / "align.json", {"settings": settings, "input": str(input_dir.resolve()),
                                           "template": template.record(), "summary": summary})
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
        counts[r[COL["status"]]] = counts.get(r[COL["status"]], 0) + 1
    return {"images": len(rows), **counts,
            "upsampled": sum(1 for r in rows if str(r[COL["upsampled"]]) == "1"),
            "fallback_files": [r[0] for r in rows if r[COL["status"]] == "fallback"],
            "no_face_files": [r[0] for r in rows if r[COL["status"]] == "no_face"],
            "unreadable_files": [r[0] for r in rows if r[COL["status"]] == "unreadable"]}


def summary_line(summary: dict) -> str:
    """One human line for a summary of ``align_folder``."""
    line = (f"{summary['images']} images: {summary['ok']} aligned, {summary['fallback']} with the "
            f"fallback box, {summary['no_face']} without a face, {summary['unreadable']} unreadable "
            f"({summary['upsampled']} found after upsampling; {summary['resumed']} already done")
    if summary.get("recropped"):
        line += f"; {summary['recropped']} cropped again from stored detections"
    line += ")"
    if summary.get("images_per_second"):
        line += f"; {summary['images_per_second']} images/s on {summary['workers']} worker(s)"
    for key, what in (("no_face_files", "no face"), ("unreadable_files", "unreadable")):
        files = summary[key]
        if files:
            line += f"\n  {what}: " + ", ".join(files[:10]) + (" ..." if len(files) > 10 else "")
    return line


#: a folder looks aligned for a template when, on the sampled images, the five points found on the
#: images lie within this many eye distances of the template's points (median over the sample).
#: Measured on LFW (docs/cli.md#scoring-photos-with-a-saved-observer): per aligned chip 0.08 median, 0.22
#: at most (dlib150, arcface112, sphereface96x112); per photo merely resized to the chip size
#: 0.35–0.44 median, 0.27 at least.
ALIGNED_TOLERANCE = 0.2
CHECK_SAMPLE = 12


@dataclass
class AlignmentCheck:
    """Whether a folder of images looks aligned for a template.

    sizes: how many images have each (width, height); matching: how many have the template's size;
    sampled / found: images checked and those with a face found; error: median distance of the five
    points from the template's, in eye distances (nan when none found); aligned: the verdict."""

    template: str
    sizes: dict[tuple[int, int], int]
    matching: int
    sampled: int
    found: int
    error: float
    aligned: bool

    def describe(self) -> str:
        """One human sentence on the verdict."""
        total = sum(self.sizes.values())
        common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(self.sizes.items(), key=lambda kv: -kv[1])[:3])
        if self.matching < total:
            return (f"{total - self.matching} of {total} images are not the {self.template} chip size "
                    f"(sizes: {common})")
        where = (f"median landmark error {self.error:.2f} eye distances on {self.found} of {self.sampled} "
                 f"sampled images (aligned: <= {ALIGNED_TOLERANCE})" if self.found else
                 f"no face found on {self.sampled} sampled images")
        return f"all {total} images have the {self.template} chip size; {where}"


def chip_points(aligner: FaceAligner, img: np.ndarray) -> np.ndarray | None:
    """The five points (68-point landmarks: eye centres, nose tip, mouth corners) of the face of an
    aligned-looking image, in its pixels; None when no face is found. The image is enlarged
    (bicubic, to >= 224 px) first: HOG misses faces that fill a small chip."""
    h, w = img.shape[:2]
    f = max(1, int(np.ceil(224 / min(h, w))))
    big = np.asarray(Image.fromarray(img).resize((w * f, h * f), Image.BICUBIC)) if f > 1 else img
    boxes, _ = aligner.detect(big)
    if not boxes:
        return None
    box = boxes[choose_face(boxes, w * f, h * f, "central")]
    shape = aligner.predictor(big, aligner.dlib.rectangle(*box))
    return (arcface_points(shape) - (f - 1) / 2.0) / f  # pixel centres of the enlarged image


def check_aligned(folder: str | os.PathLike, rels: Sequence[str],
                  template: str | AlignmentTemplate, sample: int = CHECK_SAMPLE) -> AlignmentCheck:
    """Do the images ``rels`` of ``folder`` look aligned for ``template``?

    Every image's size is read from its header (must be the template's width × height); on up to
    ``sample`` evenly spaced images the five points are located (``chip_points``) and compared
    with the template's points. Aligned = every size matches, a face is found on at least half the
    sample and the median error is at most ``ALIGNED_TOLERANCE`` eye distances. Out:
    ``AlignmentCheck``."""
    template = resolve_template(template)
    folder = Path(folder)
    sizes: dict[tuple[int, int], int] = {}
    matching = []
    for rel in rels:
        size = read_image_size(folder / rel)
        if size is None:
            continue
        sizes[size] = sizes.get(size, 0) + 1
        if size == (template.width, template.height):
            matching.append(rel)
    readable = sum(sizes.values())
    if not matching or len(matching) < readable:
        return AlignmentCheck(template.name, sizes, len(matching), 0, 0, float("nan"), False)
    chosen = [matching[(i * len(matching)) // min(sample, len(matching))]
              for i in range(min(sample, len(matching)))]
    checker = FaceAligner(AlignmentTemplate("check", template.size, template.points), "central")
    target = np.asarray(template.points, dtype=np.float64)
    errors = []
    for rel in chosen:
        try:
            img = np.asarray(load_rgb(folder / rel))
        except READ_ERRORS:
            continue
        pts = chip_points(checker, img)
        if pts is not None:
            errors.append(float(np.linalg.norm(pts - target, axis=1).mean() / template.eye_distance))
    error = float(np.median(errors)) if errors else float("nan")
    aligned = len(errors) * 2 >= len(chosen) and bool(errors) and error <= ALIGNED_TOLERANCE
    return AlignmentCheck(template.name, sizes, len(matching), len(chosen), len(errors), error, aligned)


def template_of_fr_config(path: str | os.PathLike) -> AlignmentTemplate:
    """The alignment template an FR config names (its ``alignment`` key, else the template of its
    ``preprocess.size``). FroqError when it names none."""
    from face_recognition_model.loading import alignment_of, load_fr_config

    cfg = load_fr_config(path)
    template = alignment_of(cfg, str(path))
    if template is None:
        size = cfg["preprocess"].get("size")
        raise FroqError(f"{path}: no alignment template for preprocess.size {size}: add "
                        f"'alignment: NAME' ({', '.join(NAMED)}) or 'alignment: {{size: [height, width], "
                        "points: [[x, y] x5]}' to the FR config")
    return template


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``align.py``."""
    p = argparse.ArgumentParser(description="Detect and align faces of an image folder (dlib).")
    p.add_argument("--input", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--output", required=True, help="folder for the aligned crops and landmarks.csv")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--template", choices=TEMPLATES,
                       help="dlib150 (dlib ResNet), arcface112 (ArcFace/AdaFace), "
                            "sphereface96x112 (SphereFace/MobileFaceNet, 96 wide x 112 high)")
    which.add_argument("--fr", metavar="CONFIG",
                       help="FR config whose 'alignment' (or preprocess.size) gives the template")
    p.add_argument("--select", default=DEFAULT_SELECT, choices=SELECT_MODES,
                   help="which face when several are found: central (default: near the centre, "
                        "weighted by size), largest, center")
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
    template = template_of_fr_config(args.fr) if args.fr else args.template
    summary = align_folder(args.input, args.output, template, args.select, args.fallback,
                           args.workers, ext=args.ext)
    print(summary_line(summary))
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
