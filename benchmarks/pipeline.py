"""Throughput of the FROQ stages beside a plain forward pass of the same FR model and images.

    python benchmarks/pipeline.py -c configs/benchmark_pipeline.yaml [--set n_images=16 ...]

Rows (images/s, ms/image, and the ratio to the plain forward = time per image / forward time per
image; ``fwd/img`` is the nominal number of forward passes per image, the physical floor):

- ``forward (plain)``: ``network(batch)``, the floor (1 forward/image);
- ``labels (stage 1)``: ``PseudoLabeler.score`` (reference + flip + K·|alphas| noise + M occlusion
  forwards), and each component alone given the reference embedding: ``flip`` (1), ``noise``
  (K·|alphas|), ``occlusion`` (M masks, 64 for 112 px and 14 px cells), ``reference`` (1);
- ``init (stage 2)``: one hooked forward per image over every layer (``NormRecorder``, as
  ``observer.initialization.collect_norms``) + ``select_layers`` (floor ≈ 1);
- ``inference (stage 3)``: hooks on the selected layers only, with early exit, without it, and with
  embeddings (as ``observer.inference.froq_qualities``; floor ≤ 1 with early exit).

Images are read and preprocessed once and kept in memory, so these rows time the computation. With
``end_to_end: true`` a second table times the library functions on the folder, reading included
(``iterate_folder`` + forward, ``collect_norms`` + ``select_layers``, ``froq_qualities``). The labels
used for the selection are the flip component of every image (2 forwards/image, computed before the
timing; the selection only fixes which layers the inference rows hook). Rows run round-robin
``repeats`` times after a warm-up; the median counts (the fastest run is shown beside it: on a
shared CPU other processes only add time), the spread is (max − min) / median.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from baselineFIQA.labels import LabelSettings, PseudoLabeler, auto_forward_batch
from face_recognition_model.loading import FRModel
from froq.core.runner import iterate_folder
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, float_list, int_or_auto, load_config, positive_int, public
from froq.core.errors import FroqError
from froq.core.images import FailureLog, list_images
from froq.core.io import write_json
from froq.core.stage import COMMON_KEYS
from face_recognition_model.loading import fr_from_stage_config
from observer.hooks import NormRecorder, observable_layers
from observer.inference import froq_qualities
from observer.initialization import collect_norms, select_layers

log = logging.getLogger("benchmarks.pipeline")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config"),
    "images": Key("path", help="folder of aligned face images (searched recursively)"),
    "n_images": Key(positive_int, default=48, help="images for every row (first in file order)"),
    "label_images": Key(positive_int, default=4,
                        help="images for the label rows (each costs ~2 + K + M forwards)"),
    "batch_size": Key(positive_int, default=16),
    "repeats": Key(positive_int, default=3, help="timed runs per row (median reported)"),
    "threads": Key("int", default=None, minimum=1, help="torch.set_num_threads (null: torch default)"),
    "labels.alphas": Key(float_list, default=[0.001]),
    "labels.noise_count": Key(positive_int, default=10),
    "labels.mpx": Key(positive_int, default=14),
    "labels.forward_batch": Key(int_or_auto, default="auto"),
    "top_n": Key(positive_int, default=10),
    "end_to_end": Key("bool", default=True, help="also time the library functions on the folder"),
    "outpath": Key("any", default=None, help="optional JSON file for the numbers"),
    **COMMON_KEYS,
}


# -- the timed passes (in memory) ------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_pass(fr: FRModel, batches: Sequence[torch.Tensor]) -> None:
    """One plain forward of every preloaded batch (the floor)."""
    with torch.no_grad():
        for x in batches:
            fr.network(x)


def label_pass(labeler: PseudoLabeler, batches: Sequence[torch.Tensor]) -> list[dict]:
    """``PseudoLabeler.score`` of every batch → its outputs (the whole label stage minus reading)."""
    return [labeler.score(x) for x in batches]


def component_pass(labeler: PseudoLabeler, batches: Sequence[torch.Tensor],
                   refs: Sequence[torch.Tensor], component: str) -> None:
    """One label component for every batch, given the batches' reference embeddings ``refs``.

    component: 'reference' (1 forward), 'flip' (1), 'noise' (K·|alphas|), 'occlusion' (M); the
    same calls ``PseudoLabeler.score`` makes.
    """
    for x, ref in zip(batches, refs):
        if component == "reference":
            labeler.embed(x)
        elif component == "flip":
            labeler.flip_term(x, ref)
        elif component == "noise":
            labeler.noise_term(x, ref)
        elif component == "occlusion":
            labeler.occlusion_term(x, ref)
        else:
            raise ValueError(component)


def init_pass(fr: FRModel, batches: Sequence[torch.Tensor], labels: np.ndarray, top_n: int) -> dict:
    """Hooked forward over every layer (norms reduced in the hooks) + layer selection → record."""
    layers = observable_layers(fr.network)
    rows = []
    with NormRecorder(fr.network, layers) as rec, torch.no_grad():
        for x in batches:
            rec.run(fr.network, x)
            rows.append(rec.norms())
    return select_layers(layers, np.concatenate(rows), labels, top_n)


def inference_pass(fr: FRModel, batches: Sequence[torch.Tensor], layers: Sequence[str],
                   early_exit: bool, embeddings: bool) -> np.ndarray:
    """Qualities of every batch with hooks on ``layers`` only (as ``froq_qualities``) → (N,)."""
    out = []
    with NormRecorder(fr.network, layers, early_exit=early_exit and not embeddings) as rec, \
            torch.no_grad():
        for x in batches:
            emb = rec.run(fr.network, x)
            out.append(rec.norms().mean(axis=1))
            if embeddings:
                emb.float().reshape(x.shape[0], -1).cpu().numpy()
    return np.concatenate(out)


# -- helpers ---------------------------------------------------------------------------------

def machine_info(device: torch.device) -> dict:
    """CPU count, usable cores, torch threads/version, device name, load average."""
    info = {"cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def preload(fr: FRModel, root: str, paths: Sequence[str], batch_size: int,
            num_workers: int) -> tuple[list[str], list[torch.Tensor]]:
    """Read + preprocess ``paths`` once → (readable paths, model-input batches on the device)."""
    read, batches = [], []
    for batch_paths, images in iterate_folder(root, fr.preprocess, batch_size, paths=paths,
                                              failures=FailureLog("benchmark"), device=fr.device,
                                              num_workers=num_workers, desc="preload"):
        read += batch_paths
        batches.append(images)
    return read, batches


def rebatch(batches: Sequence[torch.Tensor], count: int, batch_size: int) -> list[torch.Tensor]:
    """The first ``count`` images of ``batches`` in batches of ``batch_size``."""
    flat = torch.cat(list(batches))[:count]
    return list(torch.split(flat, batch_size))


def time_rows(runs: dict[str, Callable[[], object]], repeats: int,
              device: torch.device) -> dict[str, list[float]]:
    """Round-robin ``repeats`` timed runs of every callable → seconds per run, per row."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            times[name].append(time.perf_counter() - start)
        log.info("repeat %d/%d done", rep + 1, repeats)
    return times


def summarise(times: dict[str, list[float]], counts: dict[str, int], forwards: dict[str, str],
              base: str) -> list[dict]:
    """Per row: median seconds, images/s, ms/image, spread, ratio to the ``base`` row per image."""
    base_per_image = statistics.median(times[base]) / counts[base]
    base_best = min(times[base]) / counts[base]
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        n = counts[name]
        rows.append({"row": name, "images": n, "forwards_per_image": forwards.get(name, ""),
                     "seconds": med, "images_per_s": n / med, "ms_per_image": 1000 * med / n,
                     "best_ms_per_image": 1000 * min(ts) / n,
                     "spread": (max(ts) - min(ts)) / med if med > 0 else 0.0,
                     "ratio_to_forward": (med / n) / base_per_image,
                     "best_ratio_to_forward": (min(ts) / n) / base_best, "runs": ts})
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The rows as an aligned text table (one header line, one line per row)."""
    head = (f"{'row':<38} {'fwd/img':>7} {'images':>6} {'img/s':>7} {'ms/img':>8} {'best':>8} "
            f"{'spread':>6} {'x fwd':>6} {'x fwd best':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['row']:<38} {r['forwards_per_image']:>7} {r['images']:>6} "
                     f"{r['images_per_s']:>7.2f} {r['ms_per_image']:>8.1f} {r['best_ms_per_image']:>8.1f} "
                     f"{100 * r['spread']:>5.0f}% {r['ratio_to_forward']:>6.2f} "
                     f"{r['best_ratio_to_forward']:>10.2f}")
    return "\n".join(lines)


def _layer_depth(fr: FRModel, selected: Sequence[str]) -> str:
    """Where the deepest selected layer sits in ``named_modules()`` order (early-exit hint)."""
    layers = observable_layers(fr.network)
    deepest = max(layers.index(n) for n in selected)
    return f"deepest selected layer {layers[deepest]} = #{deepest + 1} of {len(layers)} layers"


# -- entry point ------------------------------------------------------------------------------

def run_benchmark(cfg: dict) -> dict:
    """The whole benchmark for a loaded config → ``{machine, model, rows, end_to_end, ...}``;
    prints the tables."""
    root = cfg["images"]
    if not Path(root).is_dir():
        raise FroqError(f"{cfg['_source']}: images folder not found: {root} — give a folder of "
                        "aligned faces with --set images=DIR (the default is the golden calibration "
                        "set in ../shared/reference/froq-golden/calibration)")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    fr = fr_from_stage_config(cfg)
    device, bs, reps = fr.device, cfg["batch_size"], cfg["repeats"]
    paths = list_images(root)[:cfg["n_images"]]
    if len(paths) < 3:
        raise FroqError(f"{root}: {len(paths)} images found; the benchmark needs at least 3 "
                        "(.jpg .jpeg .png .bmp .webp, searched recursively)")
    paths, batches = preload(fr, root, paths, bs, cfg["num_workers"])
    n = len(paths)
    if n < 3:
        raise FroqError(f"{root}: only {n} readable images; the benchmark needs at least 3")
    lcfg = cfg["labels"]
    fb = lcfg["forward_batch"]
    fb = auto_forward_batch(device) if fb == "auto" else fb
    labeler = PseudoLabeler(fr, LabelSettings(alphas=tuple(lcfg["alphas"]), noise_count=lcfg["noise_count"],
                                              mpx=lcfg["mpx"], seed=cfg["seed"], forward_batch=fb))
    k_alpha = lcfg["noise_count"] * len(lcfg["alphas"])
    masks = labeler.masks.shape[0]
    n_lab = min(cfg["label_images"], n)
    label_batches = rebatch(batches, n_lab, bs)

    # untimed set-up: reference embeddings; flip labels of every image for the selection
    with torch.no_grad():
        refs = [labeler.embed(x) for x in label_batches]
        flip_labels = np.concatenate([labeler.flip_term(x, labeler.embed(x)).cpu().numpy()
                                      for x in batches]).astype(np.float64)
    record = init_pass(fr, batches, flip_labels, cfg["top_n"])
    selected = record["selected_layers"]
    log.info("selection for the inference rows: %s (%s)", ", ".join(selected), _layer_depth(fr, selected))

    runs: dict[str, Callable[[], object]] = {
        "forward (plain)": lambda: forward_pass(fr, batches),
        "labels (stage 1, PseudoLabeler.score)": lambda: label_pass(labeler, label_batches),
        "  label: reference embedding": lambda: component_pass(labeler, label_batches, refs, "reference"),
        "  label: flip": lambda: component_pass(labeler, label_batches, refs, "flip"),
        "  label: noise": lambda: component_pass(labeler, label_batches, refs, "noise"),
        "  label: occlusion": lambda: component_pass(labeler, label_batches, refs, "occlusion"),
        "init (stage 2, all layers + select)": lambda: init_pass(fr, batches, flip_labels, cfg["top_n"]),
        "inference, early exit": lambda: inference_pass(fr, batches, selected, True, False),
        "inference, no early exit": lambda: inference_pass(fr, batches, selected, False, False),
        "inference + embeddings": lambda: inference_pass(fr, batches, selected, False, True),
    }
    label_rows = [name for name in runs if name.startswith(("labels", "  label"))]
    counts = {name: (n_lab if name in label_rows else n) for name in runs}
    forwards = {"forward (plain)": "1", "labels (stage 1, PseudoLabeler.score)": str(2 + k_alpha + masks),
                "  label: reference embedding": "1", "  label: flip": "1",
                "  label: noise": str(k_alpha), "  label: occlusion": str(masks),
                "init (stage 2, all layers + select)": "1", "inference, early exit": "<=1",
                "inference, no early exit": "1", "inference + embeddings": "1"}
    # warm-up: one small batch through every pass (allocator, kernels, lazy inits)
    warm = [batches[0][:1]]
    forward_pass(fr, [batches[0]])
    label_pass(labeler, warm)
    inference_pass(fr, warm, selected, True, False)
    times = time_rows(runs, reps, device)
    rows = summarise(times, counts, forwards, "forward (plain)")

    e2e_rows = []
    if cfg["end_to_end"]:
        nw = cfg["num_workers"]

        def e2e_forward():
            with torch.no_grad():
                for _, x in iterate_folder(root, fr.preprocess, bs, paths=paths, device=device,
                                           num_workers=nw, desc="forward"):
                    fr.network(x)

        def e2e_init():
            layers, _, norms = collect_norms(fr, root, paths, bs, num_workers=nw)
            select_layers(layers, norms, flip_labels, cfg["top_n"])

        e2e = {"forward + reading": e2e_forward,
               "init + reading (collect_norms)": e2e_init,
               "inference + reading (froq_qualities)": lambda: froq_qualities(
                   fr, root, selected, batch_size=bs, paths=paths, num_workers=nw),
               "inference + emb. + reading": lambda: froq_qualities(
                   fr, root, selected, batch_size=bs, paths=paths, save_embeddings=True, num_workers=nw)}
        e2e_times = time_rows(e2e, reps, device)
        e2e_rows = summarise(e2e_times, {k: n for k in e2e},
                             {"forward + reading": "1", "init + reading (collect_norms)": "1",
                              "inference + reading (froq_qualities)": "<=1",
                              "inference + emb. + reading": "1"}, "forward + reading")

    machine = machine_info(device)
    load_before = cfg.get("_load_before")
    print(f"\nFROQ pipeline throughput — {fr.arch} ({fr.weights or 'generated/random weights'}), "
          f"input {list(fr.preprocess.size)}, batch {bs}, {n} images ({n_lab} for the label rows), "
          f"median of {reps}")
    print(f"machine: {machine['cpu_count']} CPUs ({machine['usable_cores']} usable), torch "
          f"{machine['torch']} with {machine['torch_threads']} threads, device {machine['device']}"
          + (f" ({machine['gpu']})" if "gpu" in machine else "")
          + (f", load average {load_before} before / {machine.get('load_average')} after"
             if load_before else ""))
    print(f"labels: K={lcfg['noise_count']} noise draws x {len(lcfg['alphas'])} alpha(s), "
          f"{masks} occlusion masks (mpx {lcfg['mpx']}), forward_batch {fb}; selection ({len(selected)} "
          f"layers, from flip labels): {', '.join(selected)}; {_layer_depth(fr, selected)}")
    print("\nin memory (images preloaded). ms/img, img/s and x fwd: median of the repeats; best: the "
          "fastest run\n(x fwd = time per image / plain forward time per image; spread = (max - min) / "
          "median — large on a shared CPU)")
    print(format_table(rows))
    if e2e_rows:
        print("\nend to end (library functions on the folder, reading + decoding included)")
        print(format_table(e2e_rows))
    result = {"model": fr.identity(), "machine": machine, "images": n, "label_images": n_lab,
              "batch_size": bs, "repeats": reps, "selected_layers": selected,
              "rows": rows, "end_to_end": e2e_rows, "config": public(cfg)}
    if cfg.get("outpath"):
        write_json(cfg["outpath"], result)
    return result


def main(argv=None) -> None:
    """Parse ``-c CFG [--set k=v]`` and run the benchmark (tables on stdout)."""
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    if hasattr(os, "getloadavg"):
        cfg["_load_before"] = [round(v, 2) for v in os.getloadavg()]
    run_benchmark(cfg)


if __name__ == "__main__":
    sys.exit(run_main(main))
