"""Evaluation of protocols too large to hold every pair (full Adience, IJB-C 1:1): exact, in bounded memory.

Under the ISO/IEC 29794-1 convention (``threshold: fixed``, ``discard_over: mated``) the EDC needs
the genuine pairs' scores and qualities (few) and, per target FMR, one impostor order statistic:
the ``(floor(f·M)+1)``-th highest of the ``M`` impostor scores. Impostor scores are produced in
chunks (all pairs of images, Adience: blocks of the Gram matrix of unit embeddings, never listed;
listed pairs, IJB-C: its score array, 8 bytes a pair) and only the highest ``floor(f·M)+1`` of
them are kept (a running top-k merge), so the threshold, the accepted count and every pAUC are
*exact* — the same functions as the in-memory path run on the genuine pairs (tested equal).
Nothing is approximated; what cannot be done exactly in bounded memory is refused with a
one-line FroqError naming the option to change: the conventions that discard impostor pairs or
recompute the threshold per step, a scores CSV, an FMR whose top-k exceeds ``MAX_TOP``. Bootstrap
intervals (which resample every pair) are not offered on streamed protocols; the metrics say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from froq.core.errors import FroqError

from evaluation import edc

STREAM_PAIRS = 5_000_000   # protocols with more pairs take this path
MAX_TOP = 50_000_000       # impostor scores kept for the thresholds (400 MB of float64)
GRAM_ROWS = 512            # embedding rows per Gram block of an all-pairs protocol
BOOTSTRAP_NOTE = ("not computed: the protocol is evaluated streamed and the intervals resample every pair; "
                  "a sampled protocol (impostors: N, where the type has it) gets them")


@dataclass
class StreamedScores:
    """A protocol's comparison scores, streamed: the genuine pairs' scores held (``genuine_scores``
    (G,), in the order of ``genuine_pairs(protocol)``), the impostor scores as chunks produced on
    demand (iterate once), ``n_impostor`` of them in all."""

    genuine_scores: np.ndarray
    impostor_chunks: Iterable[np.ndarray]
    n_impostor: int


def unit_rows(emb) -> np.ndarray:
    """Embeddings (N, D) → float64 rows of unit length (zero rows stay zero)."""
    e = np.asarray(emb, dtype=np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def all_pairs_scores(unit: np.ndarray, ids: np.ndarray, mated: np.ndarray) -> StreamedScores:
    """Unit embeddings (N, D), each row's identity code (N,) and the mated pairs (G, 2) → the
    streamed scores of every unordered pair ``i < j`` (impostors: ids differ), Gram block by block."""
    ids = np.asarray(ids)
    n = len(unit)

    def impostors() -> Iterator[np.ndarray]:
        for a in range(0, n, GRAM_ROWS):
            rows = np.arange(a, min(a + GRAM_ROWS, n))
            keep = (np.arange(a, n)[None, :] > rows[:, None]) & (ids[rows][:, None] != ids[a:][None, :])
            yield (unit[rows] @ unit[a:].T)[keep]

    scores = np.einsum("ij,ij->i", unit[mated[:, 0]], unit[mated[:, 1]])
    return StreamedScores(scores, impostors(), n * (n - 1) // 2 - len(mated))


def listed_pairs_scores(scores: np.ndarray, genuine: np.ndarray) -> StreamedScores:
    """Scores of a listed protocol's pairs (P,) and their genuine flags → ``StreamedScores``."""
    genuine = np.asarray(genuine, dtype=bool)
    return StreamedScores(scores[genuine], [scores[~genuine]], int((~genuine).sum()))


def is_streamed(protocol) -> bool:
    """Whether a protocol (``PairProtocol``) takes the streaming path: more than ``STREAM_PAIRS`` pairs."""
    return protocol.n_pairs > STREAM_PAIRS


def genuine_pairs(protocol) -> np.ndarray:
    """A protocol's genuine pairs (G, 2): an ``AllPairsProtocol``'s mated list, else the listed ones."""
    return protocol.mated if protocol.pairs is None else protocol.pairs[protocol.genuine]


def impostor_thresholds(chunks: Iterable[np.ndarray], n_impostor: int, fmrs) -> dict[float, edc.Threshold]:
    """Impostor score chunks (``n_impostor`` scores in all) and target FMRs → ``{fmr: Threshold}``,
    equal to ``edc.fmr_threshold`` on all the scores, keeping only the highest ``floor(f·M)+1``.
    FroqError when there is no impostor, a score is not finite, or the top-k exceeds ``MAX_TOP``."""
    if n_impostor == 0:
        raise FroqError("cannot fix a decision threshold: the benchmark has no impostor pairs")
    allowed = {f: min(n_impostor, int(math.floor(f * n_impostor + 1e-9))) for f in fmrs}
    k = max([a + 1 for a in allowed.values() if a < n_impostor], default=0)
    if k > MAX_TOP:
        worst = max(allowed, key=allowed.get)
        raise FroqError(f"FMR {worst:g} over {n_impostor} impostor pairs needs the top {k} impostor scores in "
                        f"memory (more than {MAX_TOP}); give a smaller fmr (e.g. 1e-3)")
    top, seen = np.empty(0), 0
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float64).ravel()
        if not np.all(np.isfinite(chunk)):
            raise FroqError(f"{int((~np.isfinite(chunk)).sum())} impostor score(s) are not finite")
        seen += chunk.size
        if 0 < k <= top.size:
            chunk = chunk[chunk > top.min()]             # cannot enter the top k (ties change no value)
        top = np.concatenate([top, chunk])
        if top.size > k:
            top = np.partition(top, top.size - k)[top.size - k:] if k else top[:0]
    if seen != n_impostor:
        raise ValueError(f"{seen} impostor scores streamed, {n_impostor} expected")
    desc = np.sort(top)[::-1]
    out = {}
    for f, a in allowed.items():
        t = float(desc[a]) if a < n_impostor else -math.inf
        accepted = n_impostor if a >= n_impostor else int(np.count_nonzero(desc > t))
        out[f] = edc.Threshold(fmr=float(f), threshold=t, n_impostor=n_impostor, n_allowed=a, n_accepted=accepted)
    return out


def check_convention(threshold: str, discard_over: str, n_pairs: int, name: str) -> None:
    """FroqError unless the convention can be evaluated exactly on a streamed protocol of ``n_pairs``."""
    if (threshold, discard_over) != ("fixed", "mated"):
        raise FroqError(f"{name}: {n_pairs} pairs are evaluated streamed (more than {STREAM_PAIRS}), which "
                        "supports threshold: fixed with discard_over: mated only; set those, or sample impostors "
                        f"(impostors: N, where the type has it) for threshold: {threshold}, "
                        f"discard_over: {discard_over}")
