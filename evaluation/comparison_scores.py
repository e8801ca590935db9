"""Comparison scores of a benchmark's pairs: cosine similarity of FR embeddings (cached on disk),
or read from a CSV ``path1,path2,score``.

Embedding cache: ``<cache_dir>/<arch>-<model key>/`` holds ``embeddings.npy`` (float32, one row per
image), ``paths.csv`` (``path,size,mtime_ns`` of each row's image file, absolute path) and
``model.json`` (the model identity and the sha256 of ``embeddings.npy``, checked on loading so a
torn update is never used). The model key hashes the architecture, model kwargs, the weights'
sha256 (or, for generated weights, the parameters') and the preprocessing
(``face_recognition_model.loading.network_identity``), so another network never reuses an entry; a row is reused only while its file's size and mtime match.
Updates hold a lock file, so runs sharing a cache folder do not mix their writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from face_recognition_model.loading import network_identity
from froq.core import distributed
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.runner import run_images
from froq.core.io import read_csv, read_json, sha256_file, write_csv, write_json, write_npy

from evaluation import edc
from evaluation.adience import AllPairsProtocol
from evaluation import ijbc
from evaluation.ijbc import TemplateProtocol, ijbc_scores, template_pair_scores, template_qualities
from evaluation.pair_protocols import PairProtocol, normalise_rel_path
from evaluation.streaming import StreamedScores, all_pairs_scores, listed_pairs_scores, unit_rows

log = logging.getLogger(__name__)


def model_key(fr) -> str:
    """An ``FRModel`` → hex key of its network: sha256 of its ``network_identity``."""
    blob = json.dumps(network_identity(fr.identity()), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


class EmbeddingCache:
    """Per-model embedding store on disk keyed by image file (see module doc)."""

    def __init__(self, cache_dir: str | os.PathLike, fr) -> None:
        self.dir = Path(cache_dir) / f"{fr.arch}-{model_key(fr)[:16]}"
        self.identity = fr.identity()
        self.rows: dict[str, tuple[int, int, int]] = {}  # abs path -> (row, size, mtime_ns)
        self.matrix: np.ndarray | None = None
        if self.dir.is_dir():
            with self._locked():
                self._load()

    @contextmanager
    def _locked(self):
        """Exclusive lock on ``<dir>/.lock`` (POSIX; a no-op where fcntl is unavailable)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        with open(self.dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self) -> None:
        self.matrix, self.rows = None, {}
        emb, paths, meta = self.dir / "embeddings.npy", self.dir / "paths.csv", self.dir / "model.json"
        if not (emb.is_file() and paths.is_file() and meta.is_file()):
            return
        try:
            if read_json(meta).get("embeddings_sha256") != sha256_file(emb):
                log.warning("embedding cache %s: embeddings.npy does not match its index; recomputing", self.dir)
                return
            matrix = np.load(emb, allow_pickle=False)
            rows = read_csv(paths, required=("path", "size", "mtime_ns"))
        except (OSError, ValueError, FroqError) as exc:
            log.warning("embedding cache %s is unreadable (%s); recomputing", self.dir, exc)
            return
        if matrix.ndim != 2 or matrix.shape[0] != len(rows):
            log.warning("embedding cache %s is inconsistent (%s rows vs %d paths); recomputing",
                        self.dir, matrix.shape[0] if matrix.ndim else "?", len(rows))
            return
        self.matrix = matrix
        self.rows = {r["path"]: (i, int(r["size"]), int(r["mtime_ns"])) for i, r in enumerate(rows)}

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def lookup(self, abs_paths: Sequence[Path]) -> tuple[np.ndarray | None, list[int]]:
        """Cached embeddings for ``abs_paths``: (matrix with rows for found ones or None, indices of
        the paths that still need computing)."""
        if self.matrix is None:
            return None, list(range(len(abs_paths)))
        out = np.zeros((len(abs_paths), self.matrix.shape[1]), dtype=np.float32)
        todo = []
        for i, p in enumerate(abs_paths):
            hit = self.rows.get(str(p))
            if hit is not None and self._stat(p) == hit[1:]:
                out[i] = self.matrix[hit[0]]
            else:
                todo.append(i)
        return out, todo

    def add(self, abs_paths: Sequence[Path], embeddings: np.ndarray) -> None:
        """Store new embeddings (replacing stale rows) and rewrite the cache files atomically."""
        if not len(abs_paths):
            return
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if not distributed.is_main():  # under torchrun every rank holds them; rank 0 stores them
            return
        with self._locked():
            self._load()  # merge with what another run may have written meanwhile
            self._add(abs_paths, embeddings)

    def _add(self, abs_paths: Sequence[Path], embeddings: np.ndarray) -> None:
        if self.matrix is not None and self.matrix.shape[1] != embeddings.shape[1]:
            self.matrix, self.rows = None, {}
        matrix = self.matrix if self.matrix is not None else np.zeros((0, embeddings.shape[1]), np.float32)
        new_rows = dict(self.rows)
        extra = []
        for p, e in zip(abs_paths, embeddings):
            size, mtime = self._stat(p)
            hit = new_rows.get(str(p))
            if hit is not None:
                matrix[hit[0]] = e
                new_rows[str(p)] = (hit[0], size, mtime)
            else:
                new_rows[str(p)] = (matrix.shape[0] + len(extra), size, mtime)
                extra.append(e)
        if extra:
            matrix = np.concatenate([matrix, np.stack(extra)], axis=0)
        ordered = sorted(new_rows.items(), key=lambda kv: kv[1][0])
        write_npy(self.dir / "embeddings.npy", matrix)
        write_csv(self.dir / "paths.csv", ["path", "size", "mtime_ns"],
                  [(p, s, m) for p, (_, s, m) in ordered])
        write_json(self.dir / "model.json", {**self.identity,
                                             "embeddings_sha256": sha256_file(self.dir / "embeddings.npy")})
        self.matrix, self.rows = matrix, new_rows


def compute_embeddings(fr, root: Path, rel_paths: Sequence[str], batch_size: int = 64,
                       num_workers: int = 0, desc: str = "embeddings") -> np.ndarray:
    """Embed images ``root/rel_paths`` with ``fr`` (an ``FRModel``) through the shared folder reader.

    Out: float32 (N, D) in the order of ``rel_paths``. Raises FroqError listing unreadable images
    (pairs are never silently dropped).
    """
    rel_paths = list(rel_paths)
    failures = FailureLog("evaluation")

    def batch_fn(_paths: list[str], images: torch.Tensor) -> torch.Tensor:
        return fr.embed(images)

    result = run_images(root, batch_fn, ["embedding"] * fr.embedding_size(), preprocess=fr.preprocess,
                        device=fr.device, batch_size=batch_size, paths=rel_paths,
                        num_workers=num_workers, failures=failures, desc=desc, allow_empty=True)
    if failures.items:
        raise FroqError(f"{root}: {failures.summary()} — every image of the benchmark's pairs must be "
                        "readable; fix or replace these files")
    if not len(result):
        raise FroqError(f"{root}: no image could be embedded")
    out = result.values.astype(np.float32)
    if not np.all(np.isfinite(out)):
        bad = [rel_paths[i] for i in np.flatnonzero(~np.isfinite(out).all(axis=1))[:5]]
        raise FroqError(f"{root}: the FR model produced non-finite embeddings for e.g. {', '.join(bad)}")
    return out


def _canonical(path: Path) -> Path:
    """``path`` with its symlinks resolved (the embedding cache's key); a symlink loop stays as it
    is, to be listed as unreadable by the reader."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: "Symlink loop" (Python < 3.13)
        return path.absolute()


def protocol_embeddings(fr, protocol: PairProtocol, cache_dir: str | os.PathLike | None,
                        batch_size: int = 64, num_workers: int = 0) -> np.ndarray:
    """Embeddings (N, D) of every image of ``protocol`` (in ``protocol.images`` order), computed
    once per model and image file and cached under ``cache_dir`` (None disables the cache)."""
    abs_paths = [_canonical(protocol.image_root / p) for p in protocol.images]
    cache = EmbeddingCache(cache_dir, fr) if cache_dir is not None else None
    if cache is not None:
        cached, todo = cache.lookup(abs_paths)
    else:
        cached, todo = None, list(range(len(abs_paths)))
    if todo:
        log.info("%s: embedding %d image(s) with %s (%d cached)", protocol.name, len(todo), fr.arch,
                 len(abs_paths) - len(todo))
        fresh = compute_embeddings(fr, protocol.image_root, [protocol.images[i] for i in todo],
                                   batch_size, num_workers, desc=f"{protocol.name} {fr.arch}")
        if cache is not None:
            cache.add([abs_paths[i] for i in todo], fresh)
    else:
        fresh = None
        log.info("%s: all %d embeddings of %s found in the cache", protocol.name, len(abs_paths), fr.arch)
    if cached is None:
        return fresh
    if fresh is not None:
        if cached.shape[1] != fresh.shape[1]:
            raise FroqError(f"embedding cache {cache.dir} holds another dimension; delete it")
        cached[todo] = fresh
    return cached


def cosine_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity (float64) of embedding rows ``pairs[:, 0]`` and ``pairs[:, 1]``."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.maximum(norms, 1e-12)
    return np.einsum("ij,ij->i", e[pairs[:, 0]], e[pairs[:, 1]])


def read_scores_csv(path: str | os.PathLike, protocol: PairProtocol) -> np.ndarray:
    """Scores of ``protocol``'s pairs from a CSV ``path1,path2,score`` (similarities, higher = more
    alike; either image order). FroqError naming the CSV for a missing pair or a bad value."""
    table: dict[tuple[str, str], float] = {}
    for line_no, row in enumerate(read_csv(path, required=("path1", "path2", "score")), start=2):
        try:
            value = float(row["score"])
        except (TypeError, ValueError):
            raise FroqError(f"{path}:{line_no}: score is not a number ({row['score']!r})") from None
        if not np.isfinite(value):
            raise FroqError(f"{path}:{line_no}: score is not finite ({row['score']!r})")
        a, b = normalise_rel_path(row["path1"]), normalise_rel_path(row["path2"])
        if (a, b) in table or (b, a) in table:
            raise FroqError(f"{path}:{line_no}: a second score for the pair {a}, {b}: keep one row per pair")
        table[(a, b)] = value
    out = np.empty(len(protocol.pairs), dtype=np.float64)
    missing = []
    for k, (i, j) in enumerate(protocol.pairs):
        a, b = protocol.images[i], protocol.images[j]
        v = table.get((a, b), table.get((b, a)))
        if v is None:
            missing.append(f"{a},{b}")
            continue
        out[k] = v
    if missing:
        raise FroqError(f"{path}: no score for {len(missing)} of {len(protocol.pairs)} pair(s) of "
                        f"{protocol.name} (e.g. {'; '.join(missing[:3])})")
    return out


def write_scores_csv(path: str | os.PathLike, protocol: PairProtocol, scores: np.ndarray) -> None:
    """Write ``path1,path2,genuine,score`` for every pair of ``protocol`` (atomic)."""
    rows = ((protocol.images[i], protocol.images[j], int(g), float(s))
            for (i, j), g, s in zip(protocol.pairs, protocol.genuine, scores))
    write_csv(path, ["path1", "path2", "genuine", "score"], rows)


# ---- the score dispatch of every protocol (image pairs, all pairs, IJB-C templates) ----------------

GRAM_MIN_PAIRS = 1_000_000  # image protocols below this keep cosine_scores


def protocol_pair_quality(protocol: PairProtocol, img_q: np.ndarray, rule: str,
                          pairs: np.ndarray | None = None) -> np.ndarray:
    """Per-image qualities → quality of ``pairs`` (default: every pair of ``protocol``; (P, 2)
    indices like ``protocol.pairs``): the ``rule`` of the two images' qualities, or for a
    ``TemplateProtocol`` of the two templates' pooled qualities."""
    pairs = protocol.pairs if pairs is None else pairs
    q = template_qualities(protocol, img_q) if isinstance(protocol, TemplateProtocol) \
        else np.asarray(img_q, dtype=np.float64)
    return edc.pair_quality(q[pairs[:, 0]], q[pairs[:, 1]], rule)


def write_template_scores_csv(path: str | os.PathLike, protocol: TemplateProtocol, scores: np.ndarray) -> None:
    """Write ``template1,template2,genuine,score`` for every template pair (atomic)."""
    t = protocol.template_ids
    rows = ((int(t[i]), int(t[j]), int(g), float(s))
            for (i, j), g, s in zip(protocol.pairs, protocol.genuine, scores))
    write_csv(path, ["template1", "template2", "genuine", "score"], rows)


def protocol_pair_scores(fr, protocol: PairProtocol, cache_dir, batch_size: int = 64,
                         num_workers: int = 0) -> np.ndarray:
    """Comparison scores of every pair of any protocol: template pooling for a ``TemplateProtocol``,
    otherwise cached image embeddings and the cosine of each pair — from blocks of the Gram matrix
    when pairs are dense (Adience's all pairs), else in blocks of ``SCORE_BLOCK`` pairs — so
    millions of pairs never materialise (P, D) arrays."""
    if isinstance(protocol, TemplateProtocol):
        return ijbc_scores(fr, protocol, cache_dir, model_key(fr), batch_size, num_workers)
    with torch.no_grad():
        emb = protocol_embeddings(fr, protocol, cache_dir, batch_size, num_workers)
    n, pairs = len(emb), protocol.pairs
    if len(pairs) >= GRAM_MIN_PAIRS and n * n <= ijbc.GRAM_RATIO * len(pairs):  # Adience: Gram blocks
        return template_pair_scores(unit_rows(emb), pairs)
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), ijbc.SCORE_BLOCK):
        out[s:s + ijbc.SCORE_BLOCK] = cosine_scores(emb, pairs[s:s + ijbc.SCORE_BLOCK])
    return out


def streamed_pair_scores(fr, protocol: PairProtocol, cache_dir, batch_size: int = 64,
                         num_workers: int = 0) -> StreamedScores:
    """``protocol_pair_scores`` for the streaming evaluation (``evaluation.streaming``): an
    ``AllPairsProtocol``'s impostor scores come block by block from its unit embeddings, never all
    held; a listed protocol's scores are computed as usual and split into genuine and impostor."""
    if not isinstance(protocol, AllPairsProtocol):
        return listed_pairs_scores(protocol_pair_scores(fr, protocol, cache_dir, batch_size, num_workers),
                                   protocol.genuine)
    with torch.no_grad():
        emb = protocol_embeddings(fr, protocol, cache_dir, batch_size, num_workers)
    return all_pairs_scores(unit_rows(emb), protocol.image_ids, protocol.mated)
