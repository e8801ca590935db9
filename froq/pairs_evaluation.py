"""``./run.sh`` evaluates its own qualities when the photos come with verification pairs.

When the photos folder holds an LFW-style ``pairs.txt`` — inside it or beside it, as
``../shared/data/lfw`` has it — or ``--pairs FILE`` is given, the run ends with an EDC evaluation
(``evaluation.evaluate.run_evaluation``; ISO/IEC 29794-1 protocol as in ``docs/evaluation.md``)
of FROQ against the ``random`` and ``perfect`` references, written to ``<out>/evaluation/`` and
printed as a table, with the EDC plot.

- **Images.** The pairs name the original photos (``Name/Name_0001.jpg``); the qualities CSV
  names them too. Comparison scores are the cosine similarity of the FR embeddings of the
  *aligned* chips (``landmarks.csv`` of the alignment maps each photo to its chip; chips are
  embedded once and cached in ``<out>/evaluation/cache``). Without ``--photos`` the target
  folder's aligned faces are the pair images themselves.
- **Faces that could not be aligned** (``no_face``/``unreadable``: no chip) get the lowest quality
  in the qualities CSV (ISO/IEC 29794-1: a failure to acquire is the lowest quality) and a
  comparison score of **−1**, the lowest cosine similarity: every pair holding such an image is a
  non-match at any threshold — a false non-match when genuine, as a system that failed to acquire
  the face would decide — and, being of the lowest quality, among the first pairs discarded. So
  the evaluation covers every pair of the file.
- **Pair images without a target quality** (they went to the calibration split) get the lowest
  quality of the CSV (``missing_quality: min``), said in a warning with their count: keep the
  calibration identities out of the pairs (``calibration_pool.txt``, ``--calibration-ids``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from froq.core.io import read_csv, read_quality_csv, write_csv

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.txt"
NO_FACE_SCORE = -1.0   # comparison score of a pair with an image that has no aligned face


def find_pairs_file(photos: str) -> str | None:
    """An LFW-style ``pairs.txt`` inside ``photos`` or beside it (``photos/../pairs.txt``), or None."""
    if not photos:
        return None
    for candidate in (Path(photos) / PAIRS_FILE, Path(photos).parent / PAIRS_FILE):
        if candidate.is_file():
            return str(candidate)
    return None


def chip_map(aligned: str | os.PathLike) -> dict[str, str]:
    """``{photo path: chip path}`` of an aligned folder's ``landmarks.csv`` (photos without a chip
    are absent)."""
    rows = read_csv(Path(aligned) / "landmarks.csv", required=("path", "output"))
    return {r["path"]: r["output"] for r in rows if r["output"]}


def pair_scores(fr, protocol, chip_root: str | os.PathLike, chips: dict[str, str] | None,
                cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, list[str]]:
    """Cosine comparison scores of every pair of ``protocol`` (its images: the original photos).

    In: a loaded ``FRModel``, the protocol, the folder of the chips, ``{photo: chip}`` (None: the
    protocol's images are the chips, under ``chip_root``) and the embedding cache folder.
    Out: (scores, NO_FACE_SCORE for a pair with an image without chip; the photos without chip)."""
    from evaluation.comparison_scores import protocol_embeddings

    names = list(protocol.images)
    chip_of = {p: (chips.get(p) if chips is not None else p) for p in names}
    have = [i for i, p in enumerate(names) if chip_of[p]]
    missing = [p for p in names if not chip_of[p]]
    emb = np.zeros((len(names), 1), dtype=np.float64)
    if have:
        sub = dataclasses.replace(protocol, image_root=Path(chip_root), images=[chip_of[names[i]] for i in have])
        vectors = np.asarray(protocol_embeddings(fr, sub, cache_dir), dtype=np.float64)
        emb = np.zeros((len(names), vectors.shape[1]))
        emb[have] = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    ok = np.zeros(len(names), dtype=bool)
    ok[have] = True
    a, b = protocol.pairs[:, 0], protocol.pairs[:, 1]
    scores = np.einsum("ij,ij->i", emb[a], emb[b])
    scores[~(ok[a] & ok[b])] = NO_FACE_SCORE
    return scores, missing


def evaluate_run(out: str | os.PathLike, pairs_file: str, images: str, qualities: str | os.PathLike,
                 fr_config: str, device: str = "auto", aligned: str | os.PathLike | None = None,
                 name: str | None = None) -> dict:
    """Evaluate a run's FROQ qualities on LFW-style pairs (module doc).

    In: the run's output folder, the pairs file, the folder the pairs' images are in (the photos,
    or the aligned target faces), the qualities CSV, the FR config, the device, the aligned folder
    with ``landmarks.csv`` (photos only) and the benchmark's name (default: the pairs folder's).
    Out: ``{outdir, table, results, edc_plots, no_face, without_quality}``; FroqError for a pairs
    file that does not fit the images.
    """
    from evaluation.evaluate import run_evaluation
    from evaluation.settings import evaluation_settings
    from evaluation.pair_protocols import read_lfw_pairs
    from face_recognition_model.loading import load_fr_model
    from froq.core.device import resolve_device

    outdir = Path(out) / "evaluation"
    bench = name or (Path(pairs_file).resolve().parent.name or "pairs")
    model = Path(fr_config).stem
    protocol = read_lfw_pairs(images, pairs_file, name=bench)
    chips = chip_map(aligned) if aligned else None
    fr = load_fr_model(fr_config, resolve_device(device))
    scores, no_face = pair_scores(fr, protocol, aligned or images, chips, outdir / "cache")
    if no_face:
        log.warning("%d of %d pair images have no aligned face (e.g. %s): comparison score %g, lowest quality",
                    len(no_face), len(protocol.images), no_face[0], NO_FACE_SCORE)
    scores_csv = outdir / "comparison_scores.csv"
    write_csv(scores_csv, ["path1", "path2", "score"],
              ([protocol.images[i], protocol.images[j], float(s)] for (i, j), s in zip(protocol.pairs, scores)))
    known = set(read_quality_csv(qualities))
    without = [p for p in protocol.images if p not in known]
    if without:
        log.warning("%d of %d pair images have no target quality (e.g. %s; they were calibration images?): "
                    "they get the lowest quality; keep calibration identities out of the pairs",
                    len(without), len(protocol.images), without[0])
    cfg = {"face_recognition_configs": [{"name": model}],
           "benchmarks": [{"name": bench, "type": "lfw_pairs", "images": str(images), "pairs": str(pairs_file),
                           "scores": str(scores_csv)}],
           "qualities": {"froq": str(qualities)}, "missing_quality": "min", "outdir": str(outdir),
           "device": device}
    cfg = evaluation_settings(cfg, "run.sh evaluation")
    cfg["_source"] = "run.sh evaluation"
    results = run_evaluation(cfg)
    return {"outdir": str(outdir), "table": str(outdir / "table.md"), "results": results,
            "edc_plots": sorted(str(p) for p in outdir.glob("edc_*.png")),
            "no_face": len(no_face), "without_quality": len(without), "benchmark": bench, "model": model}
