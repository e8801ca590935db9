"""Stage 3 — FROQ quality of aligned faces (spec §4): one (early-exiting) forward pass per image.

    python observer/inference.py -c configs/inference.yaml [--set target_dataset=DIR ...]

Quality = mean L2 norm of the observer's selected layers (the paper), or for a FROQ+ observer the
combination of its ``features`` (``observer.combination``); higher = better.
Writes a CSV ``path,quality,percentile,flag`` (paths relative to ``target_dataset``; ``percentile``
is the 0-100 scale of ``observer.scale``, same ranking; an unreadable image keeps its row at the
lowest quality, flag ``unreadable``) and, with ``save_embeddings: true``,
``<outpath stem>.embeddings.npy`` + ``<outpath stem>.embeddings.csv`` (the row order) from the same
pass. The folder is checked as ``froq score-photos`` checks it (``read_folder``, mode ``faces``):
photos (images not of the model's chip size) are refused with a pointer to ``froq score-photos``;
chip-sized faces off the template's points are scored with a warning. ``froq score-photos``,
``./run.sh`` and ``froq.Observer.score`` score through the same ``read_folder`` + ``score_entries``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from face_recognition_model.loading import FRModel, identity_difference
from face_recognition_model.templates import AlignmentTemplate, template_from_record
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, load_config, public
from froq.core.device import autocast_context
from froq.core.errors import FroqError
from froq.core import distributed
from froq.core.images import NOT_UTF8, FailureLog, read_image_list
from froq.core.io import read_csv, read_json, write_csv, write_npy
from froq.core.recordio import is_record_file
from froq.core.runner import RunResult, finish_stage, open_source, run_images
from froq.core.stage import COMMON_KEYS, TARGET_KEYS, output_path, refuse_overwriting_inputs
from face_recognition_model.loading import fr_from_stage_config
from observer.combination import STANDARDISATIONS, combined_quality
from observer.hooks import STATISTICS, NormRecorder
from observer.scale import percentile

log = logging.getLogger("observer.inference")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config (the one used at init)"),
    **TARGET_KEYS,
    "observer_data": Key("path", help="observer JSON written by observer/initialization.py"),
    "early_exit": Key("bool", default=True, help="stop each forward once the selected layers fired"),
    "save_embeddings": Key("bool", default=False, help="also write FR embeddings (same pass)"),
    "autocast": Key("bool", default=True, help="fp16 autocast on CUDA (ignored on CPU)"),
    "outpath": Key("path", help="quality CSV (or a folder: qualities.csv inside)"),
    **COMMON_KEYS,
}


def read_observer(path: str | Path) -> dict:
    """Read and check an observer JSON; FroqError naming the file if it is unusable."""
    obs = read_json(path)
    layers = obs.get("selected_layers") if isinstance(obs, dict) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
        raise FroqError(f"{path}: no 'selected_layers' list of layer names — not an observer file "
                        "from observer/initialization.py")
    if "features" in obs:
        check_features(obs, str(path))
    return obs


def _finite(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values)


def check_features(obs: Mapping, source: str) -> None:
    """FroqError naming ``source`` when a FROQ+ observer's ``features`` / ``standardise`` cannot be
    applied (unknown statistic or standardisation, missing or non-finite parameters)."""
    method, features = obs.get("standardise", "none"), obs.get("features")
    need = {"none": (), "zscore": ("mean", "std"), "rank": ("quantiles",)}.get(method)
    if need is None:
        raise FroqError(f"{source}: standardise {method!r} is not one of {', '.join(STANDARDISATIONS)}")
    if not isinstance(features, list) or not features:
        raise FroqError(f"{source}: 'features' must be a non-empty list — re-run observer initialisation")
    for k, f in enumerate(features):
        ok = (isinstance(f, Mapping) and isinstance(f.get("layer"), str)
              and f.get("statistic") in STATISTICS and f.get("sign") in (1, -1)
              and _finite([f.get("weight")]) and f["weight"] > 0 and all(key in f for key in need))
        if ok and method == "zscore":
            ok = _finite([f["mean"], f["std"]])
        if ok and method == "rank":
            q = f["quantiles"]
            ok = isinstance(q, list) and len(q) >= 2 and _finite(q) and all(a <= b for a, b in zip(q, q[1:]))
        if not ok:
            raise FroqError(f"{source}: features[{k}] is not a usable feature (needs layer, statistic "
                            f"of {', '.join(STATISTICS)}, sign ±1, weight > 0 and {', '.join(need) or 'nothing'}"
                            f" for standardise {method}) — re-run observer initialisation")
        if f["layer"] not in obs["selected_layers"]:
            raise FroqError(f"{source}: features[{k}] layer {f['layer']!r} is not in selected_layers")


def check_same_model(obs: dict, fr: FRModel, source: str) -> None:
    """FroqError when the observer names another FR network than ``fr`` (``identity_difference``:
    its layers and scale mean nothing on another network; no override). An observer record
    without ``model`` (a bare layer list, the official code's file) is taken as given."""
    if "model" not in obs:
        return
    model = obs["model"] if isinstance(obs["model"], dict) else {}
    difference = identity_difference(model, fr.identity())
    if difference:
        raise FroqError(f"{source}: the observer was initialised on {difference}: use the FR config "
                        "(and fr_overrides) of its initialisation, or re-run observer initialisation "
                        "with this one")


def observer_plan(observer: Sequence[str] | Mapping) -> tuple[list[str], list[str], list | None]:
    """What to hook for an observer: (layers, statistics, features or None).

    In: a list of layer names or an observer record (``read_observer``). A record without
    ``features`` (the paper, and every observer file made before FROQ+) → its selected layers,
    ``["l2"]`` and None (quality = mean L2 norm). A FROQ+ record → the layers and statistics its
    features use (first-use order) and the features."""
    if not isinstance(observer, Mapping):
        return list(observer), ["l2"], None
    if "features" not in observer:
        return list(observer["selected_layers"]), ["l2"], None
    features = list(observer["features"])
    layers = list(dict.fromkeys(f["layer"] for f in features))
    stats = list(dict.fromkeys(f["statistic"] for f in features))
    return layers, stats, features


def quality_from_statistics(stats: np.ndarray, layers: Sequence[str], statistics: Sequence[str],
                            observer: Mapping) -> np.ndarray:
    """FROQ quality of images from their (N, L, S) layer statistics (columns ``layers`` ×
    ``statistics``, e.g. from ``observer.initialization.collect_statistics``) → (N,) float64.

    The same arithmetic as ``QualityObserver``: the paper's mean L2 norm of the selected layers,
    or the FROQ+ combination of the observer's features."""
    sel, _, features = observer_plan(observer)
    layer_index = {name: i for i, name in enumerate(layers)}
    if features is None:
        l2 = list(statistics).index("l2")
        return stats[:, [layer_index[n] for n in sel], l2].mean(axis=1)
    cols = stats[:, [layer_index[f["layer"]] for f in features],
                 [list(statistics).index(f["statistic"]) for f in features]]
    return combined_quality(cols, features, observer.get("standardise", "none"))


class QualityObserver:
    """Context manager: hooks on the observer's layers of ``fr``; call it on batches of model inputs.

    ``observer``: the selected layer names (the paper) or an observer record (``read_observer``;
    a FROQ+ record is combined as its ``features`` say).
    ``observe(images)`` → (B, 1 + D) float64: column 0 the FROQ quality (mean L2 norm of the
    selected layers' outputs, or the FROQ+ combination; higher = better), then the FR embedding of
    the same pass when ``embeddings`` (D = 0 otherwise). With ``early_exit`` (and no embeddings)
    each forward stops once every hooked layer has fired. fp16 autocast on CUDA when ``autocast``.
    """

    def __init__(self, fr: FRModel, observer: Sequence[str] | Mapping, *, early_exit: bool = True,
                 embeddings: bool = False, autocast: bool = True) -> None:
        self.fr = fr
        self.layers, self.statistics, self.features = observer_plan(observer)
        self.observer = observer
        self.embeddings = embeddings
        self.autocast = autocast
        self.recorder = NormRecorder(fr.network, self.layers, early_exit=early_exit and not embeddings,
                                     statistics=self.statistics)

    def __enter__(self) -> "QualityObserver":
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.recorder.__exit__(*exc)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad(), autocast_context(self.fr.device, self.autocast):
            out = self.recorder.run(self.fr.network, images.to(self.fr.device))
        if self.features is None:
            norms = self.recorder.norms()
            if np.isnan(norms).any():
                bad = [self.layers[j] for j in np.where(np.isnan(norms).any(axis=0))[0]]
                raise FroqError(f"selected layer(s) {', '.join(bad[:3])} produced no output for "
                                "this model: the observer file does not belong to it")
            quality = norms.mean(axis=1, keepdims=True)
        else:
            stats = self.recorder.stats()
            quality = quality_from_statistics(stats, self.layers, self.statistics, self.observer)
            if np.isnan(quality).any():
                raise FroqError(f"a feature of the observer ({', '.join(self.layers[:3])}) gave no "
                                "value for this model: the observer file does not belong to it")
            quality = quality[:, None]
        if not self.embeddings:
            return quality
        emb = out.float().reshape(images.shape[0], -1).cpu().numpy().astype(np.float64)
        return np.concatenate([quality, emb], axis=1)


def froq_qualities(fr: FRModel, root: str | Path, layers: Sequence[str] | Mapping, *,
                   batch_size: int = 32,
                   paths: Sequence[str] | None = None, early_exit: bool = True,
                   save_embeddings: bool = False, num_workers: int = 0, autocast: bool = True,
                   resume_path: str | Path | None = None,
                   failures: FailureLog | None = None) -> RunResult:
    """FROQ qualities of the images of ``root``: mean L2 norm of ``layers``, one forward per image.

    In: FR model, folder (or explicit relative ``paths``), the selected layer names or the observer
    record (needed for a FROQ+ observer: its features are combined), batch size,
    early exit (ignored when embeddings are wanted), and optionally ``resume_path`` (the output CSV;
    finished rows are kept in ``<path>.partial``).
    Out: ``RunResult`` in folder order with column ``quality`` (float64, higher = better) and, with
    ``save_embeddings``, the FR embedding of the same pass in columns ``e0 .. e{D-1}``.
    """
    dim = fr.embedding_size() if save_embeddings else 0
    columns = ["quality"] + [f"e{i}" for i in range(dim)]
    hooked, _, features = observer_plan(layers)
    key = {"stage": "inference", "model": fr.identity(), "layers": hooked, "root": str(root),
           "embeddings": dim, "autocast": autocast and fr.device.type == "cuda"}
    if features is not None:
        key["features"] = [features, layers.get("standardise", "none")]
    with QualityObserver(fr, layers, early_exit=early_exit, embeddings=save_embeddings,
                         autocast=autocast) as observe:
        return run_images(root, lambda _paths, images: observe(images), columns,
                          preprocess=fr.preprocess, device=fr.device, batch_size=batch_size,
                          paths=paths, num_workers=num_workers, resume_path=resume_path,
                          settings=key, failures=failures, desc="FROQ quality")


# -- the one scoring path: which images, read how, scored, one row each with its flag ------------

FLAGS = ("ok", "fallback", "no_face", "unreadable")
#: quality of a face that could not be acquired: below every FROQ quality (mean of L2 norms >= 0)
FAILURE_QUALITY = -1.0
#: its percentile: faces score strictly inside (0, 100) (observer.scale), so 0 means "no face"
FAILURE_PERCENTILE = 0.0
#: how ``read_folder`` reads a folder: auto/align/aligned (``froq score-photos``), faces (the stage)
MODES = ("auto", "align", "aligned", "faces")
#: mode ``faces`` checks the sizes of this many evenly spaced images, not all (a header read is
#: ~0.7 ms: a million-image folder would take minutes)
FACES_SAMPLE = 1000


@dataclass
class PhotoEntry:
    """One image to report: its original relative ``path``, the aligned face to score (``chip``,
    relative to the scored folder; None when there is none) and the alignment ``flag``."""

    path: str
    chip: str | None
    flag: str


def entries_from_alignment(aligned: str | Path) -> list[PhotoEntry]:
    """The photos of an ``align_folder`` output (its ``landmarks.csv``), in its order: chip = the
    crop (None without one), flag = the alignment status."""
    rows = read_csv(Path(aligned) / "landmarks.csv", ("path", "output", "status"))
    return [PhotoEntry(r["path"], r["output"] or None, r["status"] if r["status"] in FLAGS else "unreadable")
            for r in rows]


def failure_quality(qualities: np.ndarray) -> float:
    """The quality written for a face that could not be acquired: ``FAILURE_QUALITY`` (-1), or,
    when an observer's qualities can be negative (FROQ+ standardised features), one less than the
    floor of the lowest real quality of the output, so it stays below every face."""
    if qualities.size and float(np.min(qualities)) <= FAILURE_QUALITY:
        return float(np.floor(np.min(qualities))) - 1.0
    return FAILURE_QUALITY


def observer_template(fr: FRModel, record: Mapping) -> AlignmentTemplate | None:
    """The alignment template of an observer: its record's ``alignment``, else its FR config's
    (``alignment`` key or the template of ``preprocess.size``); None when neither names one."""
    return template_from_record(record["alignment"]) if record.get("alignment") else fr.alignment()


def read_folder(fr: FRModel, record: Mapping, folder: str | Path, mode: str = "faces", *,
                rels: Sequence[str] | None = None, failures: FailureLog | None = None,
                work: str | Path | None = None, select: str | None = None, fallback: str = "none",
                align_workers: int = 1):
    """The aligned-or-not decision: which images of ``folder`` to score, and from where.

    In: the FR model and observer record, the folder (or an insightface ``train.rec``: aligned
    by construction, never checked), ``mode`` (``MODES``), optionally the relative paths to read
    (``rels``), the FailureLog that gets the names and folders that cannot be read and, for
    aligning, the work folder, face choice, fallback and processes. The check
    (``preparation.align.check_aligned``): every image has the template's size and, on a sample,
    its landmarks lie at the template's points. ``auto``: aligned → as they are; other sizes →
    aligned into ``work``; chip-sized faces off the points → refused. ``align``: always aligned.
    ``aligned``: as they are, a warning when the check fails. ``faces`` (``froq score``,
    ``Observer.score``): as ``aligned`` on ``FACES_SAMPLE`` images, but images not of the chip size
    are refused (photos: use ``froq score-photos``). Out: (root to score, ``PhotoEntry`` list, how it was read, the check or
    None)."""
    from preparation.align import DEFAULT_SELECT, align_folder, check_aligned

    if mode not in MODES:
        raise FroqError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    folder = Path(folder)
    if not (folder.is_dir() or is_record_file(folder)):
        raise FroqError(f"folder of images not found: {folder}")
    failures = failures if failures is not None else FailureLog("images")
    first = len(failures.items)
    rels = open_source(folder, rels, failures).keys
    as_is = [PhotoEntry(r, r, "ok") for r in rels]  # each image its own chip
    unnamed = [PhotoEntry(p, None, "unreadable") for p, why in failures.items[first:] if why == NOT_UTF8]
    if unnamed:  # a row each (under the printable name), as every other unreadable image
        as_is = sorted(as_is + unnamed, key=lambda e: e.path)
    if is_record_file(folder):
        return folder, as_is, "RecordIO records, scored as they are", None
    template, check = observer_template(fr, record), None
    if template is None and mode in ("auto", "align"):
        raise FroqError(f"{fr.arch}: its FR config names no alignment template: pass --aligned to "
                        "score faces you aligned yourself, or add 'alignment' to its FR config")
    if template is None and mode == "aligned":
        log.warning("no alignment template for %s: cannot check that %s is aligned", fr.arch, folder)
    if template is not None and mode != "align":
        step = max(1, -(-len(rels) // FACES_SAMPLE)) if mode == "faces" else 1
        check = check_aligned(folder, rels[::step], template)
        log.info("alignment check: %s", check.describe())
        total = sum(check.sizes.values())
        if not check.aligned and mode == "auto" and total and check.matching == total:
            raise FroqError(f"{folder}: {check.describe()}: the images have the chip size of "
                            f"{template.name} but their faces are not where it puts them; pass "
                            "--align to detect and align the faces, or --aligned to score them as they are")
        if not check.aligned and mode == "faces" and check.matching < total:
            raise FroqError(f"{folder}: {check.describe()}: photos, not faces aligned for "
                            f"{template.name}: score them with 'froq score-photos OBSERVER {folder}' "
                            "(it aligns them; --aligned scores them as they are)")
        if not check.aligned and mode != "auto":
            log.warning("%s does not look aligned for %s (%s): qualities of unaligned faces are "
                        "not comparable to the calibration", folder, template.name, check.describe())
    if mode in ("aligned", "faces") or check is not None and check.aligned:
        return folder, as_is, "aligned faces, scored as they are", check
    root = Path(work)
    if root.resolve() == folder.resolve() or folder.resolve() in root.resolve().parents:
        raise FroqError(f"the alignment folder {root} is inside {folder}: write the output "
                        "elsewhere or pass --work DIR outside the photos")
    summary = align_folder(folder, root, template, select or DEFAULT_SELECT, fallback, align_workers,
                           progress=True)
    how = f"photos aligned to {template.name} in {root} ({summary['detected']} detected now)"
    return root, entries_from_alignment(root), how, check


@dataclass
class Scores:
    """Qualities of a list of ``PhotoEntry``: one row each, under its original path, in order.

    quality: failures at ``failure_quality``; percentile: failures at ``FAILURE_PERCENTILE`` (None
    for an observer without a calibration scale); flags: ``FLAGS``; labels: a RecordIO set's
    identity labels (else None); embeddings: (N, D) of the same pass (NaN rows for failures) or
    None; scored: which rows were scored; counts: rows per flag."""

    paths: list[str]
    quality: np.ndarray
    percentile: np.ndarray | None
    flags: list[str]
    labels: np.ndarray | None
    embeddings: np.ndarray | None
    scored: np.ndarray
    counts: dict[str, int]

    def write(self, out: str | Path, embeddings_stem: str | Path | None = None) -> None:
        """Write ``out`` (``path,[label,]quality[,percentile],flag``) atomically, and with
        ``embeddings_stem`` the scored rows' embeddings (``<stem>.embeddings.npy`` + ``.csv``)."""
        cols = [("path", self.paths)]
        if self.labels is not None:
            cols.append(("label", [v if ok else "" for v, ok in zip(self.labels.tolist(), self.scored)]))
        cols.append(("quality", self.quality.tolist()))
        if self.percentile is not None:
            cols.append(("percentile", self.percentile.tolist()))
        write_csv(out, [name for name, _ in cols + [("flag", 0)]],
                  zip(*(values for _, values in cols), self.flags))
        if embeddings_stem is not None:
            write_npy(f"{embeddings_stem}.embeddings.npy", self.embeddings[self.scored].astype(np.float32))
            write_csv(f"{embeddings_stem}.embeddings.csv", ["row", "path"],
                      enumerate(p for p, ok in zip(self.paths, self.scored) if ok))
        failed = self.counts["no_face"] + self.counts["unreadable"]
        if failed:
            log.warning("%d image(s) without a face or unreadable: the lowest quality (%s) and their "
                        "flag in %s", failed, self.quality[~self.scored].min(), out)


def score_entries(fr: FRModel, record: Mapping, root: str | Path, entries: Sequence[PhotoEntry], *,
                  batch_size: int = 32, num_workers: int = 0, early_exit: bool = True,
                  autocast: bool = True, embeddings: bool = False,
                  resume_path: str | Path | None = None, failures: FailureLog | None = None) -> Scores:
    """Score the chips of ``entries`` (relative to ``root``) with the observer ``record`` on ``fr``
    (``froq_qualities``; resumable through ``<resume_path>.partial``). Out: ``Scores``, one row per
    entry; a chip that cannot be read now is flagged ``unreadable``."""
    chips = [e.chip for e in entries if e.chip]
    result = froq_qualities(fr, root, record, batch_size=batch_size, paths=chips, early_exit=early_exit,
                            save_embeddings=embeddings, num_workers=num_workers, autocast=autocast,
                            resume_path=resume_path, failures=failures) if chips else None
    columns = result.columns if result is not None else ["quality"]
    where = {p: i for i, p in enumerate(result.paths)} if result is not None else {}
    at = np.array([where.get(e.chip, -1) if e.chip else -1 for e in entries], dtype=np.int64)
    scored = at >= 0
    values = np.full((len(entries), len(columns)), np.nan)
    if result is not None:
        values[scored] = result.values[at[scored]]
    first = columns.index("quality")
    quality = np.where(scored, values[:, first], failure_quality(values[scored, first]))
    scale = record.get("scale")
    pct = np.full(len(entries), FAILURE_PERCENTILE) if scale else None
    if scale and scored.any():
        pct[scored] = percentile(quality[scored], scale)
    if not scale:
        log.warning("the observer has no calibration scale (made before it existed): no percentile "
                    "column; re-run observer initialisation to get one")
    flags = [e.flag if ok else ("unreadable" if e.flag in ("ok", "fallback") else e.flag)
             for e, ok in zip(entries, scored)]
    return Scores([e.path for e in entries], quality, pct, flags,
                  values[:, 0] if "label" in columns else None,
                  values[:, first + 1:] if embeddings else None, scored,
                  {f: flags.count(f) for f in FLAGS})


def main(argv=None, read=None, mode: str = "faces") -> dict[str, int]:
    """Stage 3 (``froq score`` and ``./run.sh``'s targets): parse ``argv``, read the targets, score
    them, write the CSV (and embeddings) atomically with ``<out>.meta.json``.

    ``read(target_dataset)`` → ``read_folder``'s 4-tuple replaces reading ``target_dataset`` with
    ``mode`` (run.sh: its aligned photos; its ``--target`` folder with mode ``aligned``, which warns
    instead of refusing, as the labels and observer are already made). Out: the count per flag."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    obs = read_observer(cfg["observer_data"])
    fr = fr_from_stage_config(cfg)
    check_same_model(obs, fr, cfg["observer_data"])
    modules = dict(fr.network.named_modules())
    unknown = [n for n in obs["selected_layers"] if not n or n not in modules]
    if unknown:
        raise FroqError(f"{cfg['observer_data']}: selected layer(s) {', '.join(unknown[:3])} do not exist "
                        f"in {fr.arch}: the observer file belongs to another FR model; re-run "
                        "observer/initialization.py with this FR config")
    out = output_path(cfg["outpath"], "qualities.csv")
    refuse_overwriting_inputs(out, cfg["_source"], files={"observer_data": cfg["observer_data"],
                                                          "face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"]},
                              folders={"target_dataset": cfg["target_dataset"]})
    stem = out.with_suffix("")
    if cfg["save_embeddings"]:
        refuse_overwriting_inputs(f"{stem}.embeddings.npy", cfg["_source"],
                                  files={"observer_data": cfg["observer_data"]},
                                  folders={"target_dataset": cfg["target_dataset"]})
    paths = read_image_list(cfg["target_list"]) if cfg.get("target_list") else None
    with distributed.stage_lock(out, fr.device) as rank:
        failures = FailureLog("inference")
        start = time.perf_counter()
        root, entries, how, check = (read(cfg["target_dataset"]) if read else read_folder(
            fr, obs, cfg["target_dataset"], mode, rels=paths, failures=failures))
        scores = score_entries(fr, obs, root, entries, batch_size=cfg["batch_size"],
                               early_exit=cfg["early_exit"], embeddings=cfg["save_embeddings"],
                               num_workers=cfg["num_workers"], autocast=cfg["autocast"],
                               resume_path=out, failures=failures)
        if not rank.main:  # under torchrun, rank 0 writes the merged output
            return scores.counts
        scores.write(out, stem if cfg["save_embeddings"] else None)
        template = observer_template(fr, obs)
        flags = ", ".join(f"{n} {f}" for f, n in scores.counts.items() if n)
        extra = f"; flags: {flags}" + (f"; embeddings: {stem}.embeddings.npy" if cfg["save_embeddings"] else "")
        finish_stage(out, "inference", label="qualities", images=int(scores.scored.sum()), failures=failures,
                     started=start, extra=extra,
                     meta={"model": fr.identity(), "observer": cfg["observer_data"],
                           "selected_layers": obs["selected_layers"], "config": public(cfg),
                           **({"variant": obs.get("variant", "plus")} if "features" in obs else {}),
                           "alignment": template.record() if template else None, "read_as": how,
                           "check": check.describe() if check else None, "counts": scores.counts,
                           "failure_quality": FAILURE_QUALITY})
    return scores.counts


if __name__ == "__main__":
    sys.exit(run_main(main))
