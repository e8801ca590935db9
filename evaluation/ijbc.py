"""IJB-C 1:1 template verification in the layout of insightface's IJB evaluation release.

Layout (``root`` = the release's ``IJBC/`` folder)::

    loose_crop/<name>.jpg                  loose face crops (one file per row of the meta files)
    meta/ijbc_name_5pts_score.txt          <name> x1 y1 x2 y2 ... x5 y5 <detector score>
    meta/ijbc_face_tid_mid.txt             <name> <template id> <media id>
    meta/ijbc_template_pair_label.txt      <template id 1> <template id 2> <label 1|0>

(space separated, no header; the five points are left eye, right eye, nose tip, left and right
mouth corner, in loose-crop pixels.) The evaluation, as insightface's ``eval_ijbc.py`` does it:

1. **Alignment**: a least-squares similarity transform (Umeyama) from the five given points to the
   model's five-point template, then a bilinear warp (``preparation.align``). The chips are
   written once, resumably, to ``<aligned>/<template name>/<name stem>.png``; quality methods run
   on that folder, so quality CSVs are per image, like every other benchmark's.
2. **Image features** (per chip): the embedding, plus the embedding of the mirrored chip
   (``flip``: ``add`` = sum, insightface's default "F2"; ``concat``; ``none``); optionally
   L2-normalised (``normalise_images``; insightface keeps the norm); optionally multiplied by the
   detector score (``detector_weight``; insightface's default "D1").
3. **Template features**: the mean of the image features of each media (video or still) of a
   template, summed over the template's media, L2-normalised. Score = cosine of the two templates.
4. **Template quality**: ``template_quality`` (``min`` by default, as CR-FIQA's IJB-C ERC code;
   ``mean``, ``max``, ``median``) of the qualities of its images; pair quality = the run's
   ``pair_quality`` rule (min) of the two templates' qualities. The EDC runs over template pairs.

Embeddings are computed by ``froq.core.runner.run_images`` over explicit chip lists, in chunks
of ``EMBED_CHUNK`` images, each stored as ``.npy`` with the identities (size, mtime) of its chips:
an interrupted pass resumes at the first missing chunk, and a chunk is recomputed when any of its
chips changed. Under ``torchrun`` each process aligns its share of the chips, the runner splits
every chunk across the processes, and rank 0 writes the chunks (a sharded run equals one process).

Command line (chips first, so quality methods can score them before the evaluation)::

    python evaluation/ijbc.py --root IJBC --aligned DIR --fr-config FR.yaml [--workers N]
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_recognition_model.templates import AlignmentTemplate
from froq.core.errors import FroqError
from froq.core.images import FailureLog, load_rgb, save_rgb
from froq.core.io import read_json, write_json, write_npy
from froq.core.runner import file_identity, run_images

from evaluation.pair_protocols import PairProtocol

log = logging.getLogger(__name__)

LANDMARKS_FILE = "meta/ijbc_name_5pts_score.txt"
TEMPLATE_MEDIA_FILE = "meta/ijbc_face_tid_mid.txt"
PAIRS_FILE = "meta/ijbc_template_pair_label.txt"
IMAGES_DIR = "loose_crop"

TEMPLATE_QUALITY_RULES = ("min", "mean", "max", "median")
FLIP_MODES = ("add", "concat", "none")
#: defaults = insightface ``eval_ijbc.py`` (use_flip_test "F2", use_norm_score, use_detector_score)
DEFAULT_OPTIONS = {"template_quality": "min", "flip": "add", "normalise_images": False,
                   "detector_weight": True}
EMBED_CHUNK = 8192
SCORE_BLOCK = 20_000      # pairs gathered at once (smaller blocks stay in cache: 2x faster than 200k)
GRAM_ROWS = 500           # templates per block of the Gram matrix (IJB-C: 92 MB a block)
GRAM_RATIO = 64           # use the Gram matrix when templates² <= GRAM_RATIO × pairs
CHIP_EXT = ".png"


@dataclass(kw_only=True)
class TemplateProtocol(PairProtocol):
    """A template-to-template benchmark (IJB-C 1:1).

    ``images``: the chip names (relative to a chip folder, each once); ``pairs``: (P, 2) indices
    into ``template_ids``; ``genuine``: (P,) bool. Per *row* of the template/media file (an image
    may be in several templates): ``row_image`` (index into ``images``), ``row_template`` (index
    into ``template_ids``), ``row_media`` (media id). Per image: ``source_names`` (file in
    ``loose_crop``), ``landmarks`` (N, 5, 2), ``detector_scores`` (N,). ``aligned_root``: where
    chips are written, one folder per alignment template. ``options``: see ``DEFAULT_OPTIONS``.
    """

    template_ids: np.ndarray
    row_image: np.ndarray
    row_template: np.ndarray
    row_media: np.ndarray
    source_names: list
    landmarks: np.ndarray
    detector_scores: np.ndarray
    loose_crop: Path
    aligned_root: Path
    options: dict

    def summary(self) -> str:
        """One line: template pairs, genuine/impostor counts, templates, images."""
        return (f"{self.name}: {len(self.genuine)} template pairs ({self.n_genuine} genuine, "
                f"{self.n_impostor} impostor) over {len(self.template_ids)} templates of "
                f"{len(self.images)} images")


# ----------------------------------------------------------------------------- reading


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FroqError(f"IJB-C file not found: {path} — give 'root' as the release's IJBC/ folder "
                        f"(holding {IMAGES_DIR}/ and meta/)")
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [(no, ln.split()) for no, ln in enumerate(fh, start=1) if ln.strip()]


def read_landmarks(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, float]]:
    """``ijbc_name_5pts_score.txt`` → {image name: ((5, 2) points, detector score)}.

    Each line: name, ten numbers (x, y of left eye, right eye, nose, left and right mouth corner),
    the detector score. FroqError naming file and line for a malformed line or a repeated name.
    """
    path = Path(path)
    out: dict[str, tuple[np.ndarray, float]] = {}
    for no, f in _lines(path):
        if len(f) != 12:
            raise FroqError(f"{path}:{no}: expected 'name x1 y1 ... x5 y5 score' (12 fields), found {len(f)}")
        try:
            nums = np.array([float(v) for v in f[1:]], dtype=np.float64)
        except ValueError:
            raise FroqError(f"{path}:{no}: landmarks and score must be numbers ({' '.join(f[1:])!r})") from None
        if not np.all(np.isfinite(nums)):
            raise FroqError(f"{path}:{no}: landmarks and score must be finite numbers")
        if f[0] in out:
            raise FroqError(f"{path}:{no}: image {f[0]} is listed twice: keep one line per image")
        out[f[0]] = (nums[:10].reshape(5, 2), float(nums[10]))
    if not out:
        raise FroqError(f"{path}: no landmark lines")
    return out


def read_template_media(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``ijbc_face_tid_mid.txt`` → (image name per row, template id per row, media id per row)."""
    path = Path(path)
    names, tids, mids = [], [], []
    for no, f in _lines(path):
        if len(f) != 3:
            raise FroqError(f"{path}:{no}: expected 'name template_id media_id', found {len(f)} fields")
        try:
            tids.append(int(f[1]))
            mids.append(int(f[2]))
        except ValueError:
            raise FroqError(f"{path}:{no}: template and media ids must be integers ({f[1]!r}, {f[2]!r})") from None
        names.append(f[0])
    if not names:
        raise FroqError(f"{path}: no rows")
    return names, np.asarray(tids, dtype=np.int64), np.asarray(mids, dtype=np.int64)


def _first_bad_pair_line(path: Path) -> str:
    for no, f in _lines(path):
        if len(f) != 3:
            return f"{path}:{no}: expected 'template1 template2 label', found {len(f)} fields"
        try:
            label = int(f[2])
            int(f[0]), int(f[1])
        except ValueError:
            return f"{path}:{no}: template ids and label must be integers ({' '.join(f)!r})"
        if label not in (0, 1):
            return f"{path}:{no}: label must be 1 (genuine) or 0 (impostor), found {label}"
    return f"{path}: unreadable pair list"


def _line_blocks(text: bytes, block: int):
    """``(start, end)`` of consecutive pieces of ``text`` of about ``block`` bytes, cut after a newline."""
    start = 0
    while start < len(text):
        end = text.find(b"\n", min(start + block, len(text)) - 1)
        end = len(text) if end < 0 else end + 1
        yield start, end
        start = end


def _fields_per_line(text: bytes, block: int = 1 << 23) -> np.ndarray:
    """Number of whitespace-separated fields on every line of ``text`` (blank lines: 0), counted
    with numpy in blocks of about ``block`` bytes cut at line ends."""
    counts = []
    for start, end in _line_blocks(text, block):
        buf = np.frombuffer(text, dtype=np.uint8, count=end - start, offset=start)
        nl = buf == 10
        ws = nl | (buf == 32) | (buf == 9) | (buf == 13)
        first = ~ws & np.r_[True, ws[:-1]]
        line = np.cumsum(nl) - nl
        n_lines = int(line[-1]) + 1 if not nl[-1] else int(nl.sum())
        counts.append(np.bincount(line[first], minlength=n_lines)[:n_lines])
    return np.concatenate(counts) if counts else np.zeros(0, np.int64)


def _integers(text: bytes, n: int, block: int = 1 << 23) -> np.ndarray | None:
    """The ``n`` whitespace-separated integers of ``text`` as int64, parsed block by block into one
    array (no growing buffer); None when there are not exactly ``n`` or a token is not an integer."""
    out = np.empty(n, dtype=np.int64)
    pos = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start, end in _line_blocks(text, block):
            try:
                part = np.fromstring(text[start:end], dtype=np.int64, sep=" ")
            except ValueError:  # a token that is not an integer (newer numpy raises, older stops early)
                return None
            if pos + part.size > n:
                return None
            out[pos:pos + part.size] = part
            pos += part.size
    return out if pos == n else None


def read_template_pairs(path: str | os.PathLike) -> np.ndarray:
    """``ijbc_template_pair_label.txt`` → (P, 3) int64 rows (template 1, template 2, label 1/0).

    Parsed by numpy (the 15.7 M lines in seconds): fields are counted per line, then the numbers read
    block by block into one array; a malformed line is then located and reported with its number by a Python pass.
    """
    path = Path(path)
    if not path.is_file():
        _lines(path)  # raises the not-found error
    text = path.read_bytes()
    fields = _fields_per_line(text)
    n_lines, malformed = int((fields > 0).sum()), bool(np.any((fields != 0) & (fields != 3)))
    del fields                                       # 8 bytes a line: not held while parsing
    if n_lines == 0:
        raise FroqError(f"{path}: no template pairs")
    flat = None if malformed else _integers(text, 3 * n_lines)
    del text
    if flat is None or not ((flat[2::3] == 0) | (flat[2::3] == 1)).all():    # isin would sort a copy
        raise FroqError(_first_bad_pair_line(path))
    return flat.reshape(-1, 3)


def _chip_name(name: str) -> str:
    return str(Path(name).with_suffix(CHIP_EXT))


def read_ijbc(root: str | os.PathLike, aligned: str | os.PathLike, name: str = "ijbc",
              options: dict | None = None) -> TemplateProtocol:
    """The IJB-C release folder ``root`` → ``TemplateProtocol`` whose chips go under ``aligned``.

    Checks: every row of the template/media file has landmarks; every template of the pair list
    has images; every image file exists in ``loose_crop``. Each is a one-line FroqError naming the
    file. ``options`` override ``DEFAULT_OPTIONS``.
    """
    root = Path(root)
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    if opts["template_quality"] not in TEMPLATE_QUALITY_RULES:
        raise FroqError(f"{name}: template_quality must be one of {', '.join(TEMPLATE_QUALITY_RULES)} "
                        f"(got {opts['template_quality']!r})")
    if opts["flip"] not in FLIP_MODES:
        raise FroqError(f"{name}: flip must be one of {', '.join(FLIP_MODES)} (got {opts['flip']!r})")
    for key in ("normalise_images", "detector_weight"):
        if not isinstance(opts[key], bool):
            raise FroqError(f"{name}: {key} must be true or false (got {opts[key]!r})")
    loose = root / IMAGES_DIR
    if not loose.is_dir():
        raise FroqError(f"{name}: image folder {loose} not found — give 'root' as the release's IJBC/ folder")
    lmk = read_landmarks(root / LANDMARKS_FILE)
    row_names, row_tids, row_mids = read_template_media(root / TEMPLATE_MEDIA_FILE)
    pairs = read_template_pairs(root / PAIRS_FILE)

    names = list(dict.fromkeys(row_names))
    lacking = [n for n in names if n not in lmk]
    if lacking:
        raise FroqError(f"{root / TEMPLATE_MEDIA_FILE}: {len(lacking)} image(s) have no landmarks in "
                        f"{root / LANDMARKS_FILE} (e.g. {', '.join(lacking[:3])})")
    chips = [_chip_name(n) for n in names]
    if len(set(chips)) != len(chips):
        raise FroqError(f"{root / TEMPLATE_MEDIA_FILE}: two images share a name stem (their chips would "
                        "collide); rename them")
    index = {n: i for i, n in enumerate(names)}
    row_image = np.fromiter((index[n] for n in row_names), dtype=np.int64, count=len(row_names))
    template_ids, row_template = np.unique(row_tids, return_inverse=True)
    pos = np.searchsorted(template_ids, pairs[:, :2])
    unknown = np.column_stack([template_ids[np.minimum(pos[:, c], len(template_ids) - 1)] != pairs[:, c]
                               for c in (0, 1)])                    # a column at a time: no (P, 2) temporaries
    if unknown.any():
        bad = pairs[:, :2][unknown][:3].tolist()
        raise FroqError(f"{root / PAIRS_FILE}: {int(unknown.any(axis=1).sum())} pair(s) name templates "
                        f"with no image in {root / TEMPLATE_MEDIA_FILE} (e.g. {bad})")
    missing = [n for n in names if not (loose / n).is_file()]
    if missing:
        raise FroqError(f"{loose}: {len(missing)} of {len(names)} image(s) not found "
                        f"(e.g. {', '.join(missing[:3])}) — check the release is complete")
    dropped = len(lmk) - len(names)
    if dropped:
        log.info("%s: %d image(s) of %s are in no template; not used", name, dropped, LANDMARKS_FILE)
    aligned = Path(aligned)
    return TemplateProtocol(
        name=name, image_root=aligned, images=chips, pairs=pos.astype(np.int64),
        genuine=pairs[:, 2] == 1, folds=None, source=str(root / PAIRS_FILE),
        template_ids=template_ids, row_image=row_image, row_template=row_template.astype(np.int64),
        row_media=row_mids, source_names=names,
        landmarks=np.stack([lmk[n][0] for n in names]), detector_scores=np.array([lmk[n][1] for n in names]),
        loose_crop=loose, aligned_root=aligned, options=opts)


# ----------------------------------------------------------------------------- pooling


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by ``keys`` (stable) and the start of every run of equal keys."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return order, starts


def template_qualities(protocol: TemplateProtocol, img_q: np.ndarray, rule: str | None = None) -> np.ndarray:
    """Per-image qualities (aligned with ``protocol.images``) → per-template quality (T,).

    ``rule`` (default the protocol's ``template_quality``): min / mean / max / median over the
    template's rows (an image in a template twice counts twice).
    """
    rule = rule or protocol.options["template_quality"]
    q = np.asarray(img_q, dtype=np.float64)[protocol.row_image]
    order, starts = _groups(protocol.row_template)
    qs = q[order]
    if rule == "min":
        return np.minimum.reduceat(qs, starts)
    if rule == "max":
        return np.maximum.reduceat(qs, starts)
    if rule == "mean":
        return np.add.reduceat(qs, starts) / np.diff(np.r_[starts, len(qs)])
    if rule == "median":
        return np.array([np.median(part) for part in np.split(qs, starts[1:])])
    raise FroqError(f"unknown template quality rule {rule!r} (use {', '.join(TEMPLATE_QUALITY_RULES)})")


def image_features(emb: np.ndarray, flip: str, normalise: bool, scores: np.ndarray | None) -> np.ndarray:
    """Stored chip embeddings → image features as pooled into templates.

    In: (N, D) embeddings (``flip='none'``) or (N, 2D) [original | mirrored]; ``flip`` add /
    concat / none; ``normalise``: L2-normalise (each half separately for ``concat``) — False keeps
    the norm (insightface); ``scores``: detector scores to multiply by, or None. Out: float32 (N, D').
    """
    emb = np.asarray(emb, dtype=np.float32)

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if flip == "none":
        x = unit(emb) if normalise else emb
    else:
        d = emb.shape[1] // 2
        a, b = emb[:, :d], emb[:, d:]
        if flip == "add":
            x = a + b
            x = unit(x) if normalise else x
        else:
            x = np.concatenate([unit(a), unit(b)], axis=1) if normalise else emb
    if scores is not None:
        x = x * np.asarray(scores, dtype=np.float32)[:, None]
    return x.astype(np.float32, copy=False)


def template_features(protocol: TemplateProtocol, feats) -> np.ndarray:
    """Image features (aligned with ``protocol.images``: one (N, D') array, or an iterable of
    consecutive row blocks in image order, so that all of them are never held) → L2-normalised
    template features (T, D').

    Per template: the mean of the features of each media, summed over its media, normalised
    (insightface ``image2template_feature``), accumulated block by block in float64 as the sum of
    every row's features divided by the number of rows of its media.
    """
    t, m, img = protocol.row_template, protocol.row_media, protocol.row_image
    order = np.lexsort((m, t))                                          # by template, then media
    new_media = np.r_[True, (t[order][1:] != t[order][:-1]) | (m[order][1:] != m[order][:-1])]
    media = np.empty(len(t), dtype=np.int64)
    media[order] = np.cumsum(new_media) - 1
    weight = 1.0 / np.bincount(media)[media]
    by_image = np.argsort(img, kind="stable")
    tmpl, start = None, 0
    for block in ([feats] if isinstance(feats, np.ndarray) else feats):
        block = np.asarray(block, dtype=np.float32)
        if tmpl is None:
            tmpl = np.zeros((len(protocol.template_ids), block.shape[1]))
        lo, hi = np.searchsorted(img[by_image], [start, start + len(block)])
        rows = by_image[lo:hi][np.argsort(t[by_image[lo:hi]], kind="stable")]
        if len(rows):
            heads = np.flatnonzero(np.r_[True, t[rows][1:] != t[rows][:-1]])
            tmpl[t[rows][heads]] += np.add.reduceat(block[img[rows] - start] * weight[rows, None], heads, axis=0)
        start += len(block)
    return tmpl / np.maximum(np.linalg.norm(tmpl, axis=1, keepdims=True), 1e-12)


def template_pair_scores(tfeats: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine (dot of unit vectors) of every template pair (P,) float64.

    With many pairs per template (IJB-C: 15.7 M pairs over 23 k templates) the Gram matrix is
    computed by blocks of ``GRAM_ROWS`` templates (BLAS) and the pairs read from it; otherwise the
    two features of each pair are gathered in blocks of ``SCORE_BLOCK`` pairs. Both are exact dot
    products (they differ only in summation order, ~1e-16).
    """
    tfeats = np.asarray(tfeats, dtype=np.float64)
    pairs = np.asarray(pairs)
    n_t = len(tfeats)
    out = np.empty(len(pairs), dtype=np.float64)
    if n_t * n_t <= GRAM_RATIO * len(pairs):
        order = np.argsort(pairs[:, 0], kind="stable")
        first, second = (pairs[order, c].astype(np.int32) for c in (0, 1))   # int32: less held at IJB-C size
        bounds = np.searchsorted(first, np.arange(0, n_t + GRAM_ROWS, GRAM_ROWS))
        for k, a in enumerate(range(0, n_t, GRAM_ROWS)):
            lo, hi = bounds[k], bounds[k + 1]
            if lo < hi:
                gram = tfeats[a:a + GRAM_ROWS] @ tfeats.T
                out[order[lo:hi]] = gram[first[lo:hi] - a, second[lo:hi]]
        return out
    for s in range(0, len(pairs), SCORE_BLOCK):
        p = pairs[s:s + SCORE_BLOCK]
        out[s:s + len(p)] = np.einsum("ij,ij->i", tfeats[p[:, 0]], tfeats[p[:, 1]])
    return out


# ----------------------------------------------------------------------------- alignment


def model_template(fr) -> AlignmentTemplate:
    """The five-point alignment template of an FR model (anything with ``config``,
    ``config_path``, ``arch``, ``preprocess``).

    The FR config's template (``face_recognition_model.templates``: its ``alignment`` key, else the
    template of its input size; ``arcface112`` — the template of insightface's IJB evaluation — for
    112×112). ``dlib150`` chips are made by dlib from its own landmarks, which IJB-C does not give:
    its chips are approximated by the similarity transform onto ``DLIB150_POINTS`` (where the five
    points lie on dlib chips), with a warning. No template: FroqError saying what to set.
    """
    from face_recognition_model.loading import alignment_of

    source = fr.config_path or fr.arch
    cfg = dict(fr.config or {})
    cfg.setdefault("preprocess", {"size": list(fr.preprocess.size)})
    tmpl = alignment_of(cfg, source)
    if tmpl is None:
        h, w = fr.preprocess.size
        raise FroqError(f"{source}: no five-point alignment template for a {w}x{h} input; IJB-C chips are "
                        "aligned from the release's five landmarks — give the FR config an 'alignment' "
                        "(a name or {size, points})")
    if tmpl.method != "similarity":
        log.warning("%s: template %s is made by dlib from its own landmarks; IJB-C gives five other "
                    "points, so its chips are approximated by a similarity transform onto where those "
                    "points lie on %s chips", source, tmpl.name, tmpl.name)
    return tmpl


def align_chips(protocol: TemplateProtocol, template: AlignmentTemplate, workers: int = 0) -> Path:
    """Write every image's aligned chip to ``<aligned_root>/<template.name>/`` (resumable).

    A chip already on disk is kept (chips are written atomically, so a present file is complete).
    ``align.json`` there records the template; a folder aligned with another template is refused.
    Under ``torchrun`` each process aligns its contiguous share of the images, then all wait for
    each other. Unreadable loose crops are listed in one FroqError. Out: the chip folder.
    """
    from froq.core import distributed

    me = distributed.init(None)   # joins the process group under torchrun (a no-op if joined)
    out = protocol.aligned_root / template.name
    points, size = np.asarray(template.points, dtype=np.float64), (template.width, template.height)
    settings = {"template": template.name, "points": np.round(points, 6).tolist(),
                "size": list(size), "source": str(protocol.loose_crop.resolve()),
                "method": "umeyama similarity from the release's 5 landmarks, bilinear warp, black border"}
    meta = out / "align.json"
    error = None
    if meta.is_file():
        old = read_json(meta)
        if {k: old.get(k) for k in settings} != settings:
            error = (f"{out}: holds chips aligned with other settings ({meta}); delete the folder "
                     "or give the benchmark another 'aligned' folder")
    elif me.main:
        write_json(meta, settings)
    if me.active:
        distributed.agree(error, "ijbc alignment settings")
    elif error:
        raise FroqError(error)
    start, stop = distributed.shard_range(len(protocol.images), me.rank, me.world)
    todo = [i for i in range(start, stop) if not (out / protocol.images[i]).is_file()]
    failures = FailureLog("ijbc alignment")
    if todo:
        log.info("%s: aligning %d of %d images to %s%s", protocol.name, len(todo), len(protocol.images), out,
                 f" ({me})" if me.active else "")
    tasks = [(str(protocol.loose_crop / protocol.source_names[i]), str(out / protocol.images[i]),
              protocol.landmarks[i], points, size) for i in todo]
    if tasks and workers and workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.imap(_align_one, tasks, chunksize=64)
            for (src, *_), err in tqdm(zip(tasks, results), total=len(tasks), desc="ijbc align",
                                       disable=not sys.stderr.isatty()):
                if err:
                    failures.add(src, err)
    else:
        for task in tqdm(tasks, desc="ijbc align", disable=not sys.stderr.isatty()):
            err = _align_one(task)
            if err:
                failures.add(task[0], err)
    error = None
    if failures.items:
        error = (f"{protocol.loose_crop}: {failures.summary()} — every image of a template must be "
                 "readable; fix or replace these files")
    if me.active:
        distributed.agree(error, "ijbc alignment")   # also waits until every share is written
    elif error:
        raise FroqError(error)
    return out


def _align_one(task) -> str:
    """Align one loose crop; '' on success, the reason otherwise."""
    from preparation.align import umeyama_similarity, warp_similarity

    src, dst, points, target, size = task
    try:
        img = np.asarray(load_rgb(src))
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    chip = warp_similarity(img, umeyama_similarity(points, target), size)
    save_rgb(chip, dst)
    return ""


# ----------------------------------------------------------------------------- embeddings


def _chunk_stamp(chip_dir: Path, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(f"{n}\t{file_identity(chip_dir / n)}\n".encode())
    return h.hexdigest()


def _stored_chunk(npy: Path, info: Path, stamp: str, shape: tuple[int, int]) -> np.ndarray | None:
    """A stored chunk's embeddings when its stamp and shape match, else None."""
    if not (npy.is_file() and info.is_file()):
        return None
    try:
        arr = np.load(npy, allow_pickle=False)
        if read_json(info).get("stamp") == stamp and arr.shape == shape:
            return arr
    except (OSError, ValueError, FroqError):
        pass
    return None


def embed_chips(fr, chip_dir: Path, names: Sequence[str], store: Path, flip: bool,
                batch_size: int = 64, num_workers: int = 0) -> Iterator[np.ndarray]:
    """Embeddings of ``chip_dir/names`` with ``fr``, yielded chunk by chunk in ``names`` order:
    float32 (n, D), or (n, 2D) = [original | mirrored] with ``flip``, so at most one chunk of
    ``EMBED_CHUNK`` chips is held. Streams through ``run_images``; each chunk is kept in ``store`` (``chunk_NNNNN.npy`` + ``.json`` with a stamp of its chips' names and
    file identities), so an interrupted pass resumes and a changed chip's chunk is recomputed."""
    store.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(names) + EMBED_CHUNK - 1) // EMBED_CHUNK

    def batch_fn(_paths, images: torch.Tensor):
        e = fr.embed(images)
        return torch.cat([e, fr.embed(torch.flip(images, dims=[3]))], dim=1) if flip else e

    from froq.core import distributed

    me = distributed.init(fr.device)
    width = fr.embedding_size() * (2 if flip else 1)
    for c in range(n_chunks):
        chunk = list(names[c * EMBED_CHUNK:(c + 1) * EMBED_CHUNK])
        npy, info = store / f"chunk_{c:05d}.npy", store / f"chunk_{c:05d}.json"
        stamp = _chunk_stamp(chip_dir, chunk)
        stored = _stored_chunk(npy, info, stamp, (len(chunk), width))
        # under torchrun rank 0 decides (it writes the chunks), so every rank runs the same chunks
        if me.active:
            reuse = distributed.gather_objects(stored is not None, f"ijbc chunk {c}")[0]
            if not reuse:
                stored = None
            elif stored is None:  # rank 0 has it: read it again (shared folder), never run alone
                stored = _stored_chunk(npy, info, stamp, (len(chunk), width))
                if stored is None:
                    raise FroqError(f"{me}: {npy} is complete for rank 0 but not readable here: the "
                                    "embedding store must be on a folder every process sees")
        if stored is not None:
            yield stored
            continue
        failures = FailureLog("ijbc embeddings")
        res = run_images(chip_dir, batch_fn, [f"e{i}" for i in range(width)], preprocess=fr.preprocess,
                         device=fr.device, batch_size=batch_size, paths=chunk, num_workers=num_workers,
                         failures=failures, desc=f"ijbc {fr.arch} {c + 1}/{n_chunks}", allow_empty=True)
        if failures.items or len(res) != len(chunk):
            raise FroqError(f"{chip_dir}: {failures.summary()} — every chip must be readable; delete the "
                            "broken chips and rerun (they are aligned again)")
        arr = res.values.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise FroqError(f"{chip_dir}: the FR model produced non-finite embeddings in chunk {c}")
        if me.main:
            write_npy(npy, arr)
            write_json(info, {"stamp": stamp, "images": len(chunk), "model": fr.identity(), "flip": flip})
        yield arr


def ijbc_scores(fr, protocol: TemplateProtocol, cache_dir: str | os.PathLike | None, model_key: str,
                batch_size: int = 64, num_workers: int = 0) -> np.ndarray:
    """Cosine scores of every template pair of ``protocol`` with ``fr``: align (resumable), embed
    (resumable, chunked, stored under the model's ``model_key``: its network identity), pool into
    templates as configured, compare."""
    from froq.core import distributed

    distributed.init(fr.device)   # under torchrun: join with the model's device (NCCL on CUDA)
    template = model_template(fr)
    chip_dir = align_chips(protocol, template, workers=num_workers)
    flip = protocol.options["flip"] != "none"
    base = Path(cache_dir) if cache_dir is not None else protocol.aligned_root / "embeddings"
    store = base / f"{fr.arch}-{model_key[:16]}" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', protocol.name)}-" \
        f"{template.name}-{'flip' if flip else 'noflip'}"
    opts = protocol.options

    def features():
        start = 0
        for emb in embed_chips(fr, chip_dir, protocol.images, store, flip, batch_size, num_workers):
            det = protocol.detector_scores[start:start + len(emb)] if opts["detector_weight"] else None
            yield image_features(emb, opts["flip"], opts["normalise_images"], det)
            start += len(emb)

    return template_pair_scores(template_features(protocol, features()), protocol.pairs)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> Path:
    """``python evaluation/ijbc.py --root IJBC --aligned DIR --fr-config FR.yaml [--workers N]``:
    write the aligned chips of every IJB-C image for that model's template (resumable), so the
    quality methods can run on ``DIR/<template>/`` before the evaluation. Out: the chip folder."""
    import argparse

    from froq.core.cli import add_config_options, parse_with_config, setup_logging
    from face_recognition_model.loading import load_fr_config

    parser = argparse.ArgumentParser(description="Align IJB-C's loose crops from the release's 5 landmarks.")
    parser.add_argument("--root", required=True, help="the release's IJBC/ folder (loose_crop/, meta/)")
    parser.add_argument("--aligned", required=True, help="chip folder root (chips go to <aligned>/<template>/)")
    parser.add_argument("--fr-config", required=True, help="FR config whose alignment template is used")
    parser.add_argument("--workers", type=int, default=0, help="alignment processes (0 = this one)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_config_options(parser)
    args = parse_with_config(parser, argv)
    setup_logging(args.verbose)
    protocol = read_ijbc(args.root, args.aligned)

    from types import SimpleNamespace

    from froq.core.images import Preprocess

    cfg = load_fr_config(args.fr_config)
    model = SimpleNamespace(config=cfg, config_path=str(args.fr_config), arch=cfg["model"]["arch"],
                            preprocess=Preprocess.from_config(cfg.get("preprocess") or {}))
    out = align_chips(protocol, model_template(model), workers=args.workers)
    print(f"ijbc align: {out} ({len(protocol.images)} chips)")
    return out


if __name__ == "__main__":
    from froq.core.cli import run_main

    sys.exit(run_main(main))
