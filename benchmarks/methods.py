"""Throughput of the comparison FIQA methods beside a plain forward pass, same model and images.

    python benchmarks/methods.py -c configs/methods/benchmark.yaml [--set images=64 --set device=cpu]

The config is a score config (``configs/score.yaml`` keys: face_recognition_config, target_dataset,
batch_size, device, num_workers, methods.<name>.*) plus ``images`` (how many, first in file order),
``benchmark_methods`` (which to run), ``repeats`` (round-robin over the methods; the fastest run
of each counts) and optional ``outpath`` (a JSON of the numbers). Prints a
table: seconds, images/s, ms/image and the ratio to the plain forward pass (reading + preprocessing
included everywhere). A method that does not apply to the model is listed as N/A with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _HERE:
    # run as a file (python benchmarks/methods.py), Python puts this folder first on sys.path,
    # where this very file would hide the methods package: the repository root goes there instead
    sys.path[0] = str(_HERE.parent)

import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

from face_recognition_model.loading import fr_from_stage_config  # noqa: E402
from froq.core.cli import run_main, setup_logging, stage_parser  # noqa: E402
from froq.core.config import Key, load_config, positive_int  # noqa: E402
from froq.core.errors import FroqError  # noqa: E402
from froq.core.images import FailureLog, list_images  # noqa: E402
from froq.core.io import write_json  # noqa: E402
from froq.core.runner import iterate_folder  # noqa: E402
from froq.core.stage import COMMON_KEYS  # noqa: E402
from methods import get_method, list_methods, run_method  # noqa: E402
from methods.score import method_options  # noqa: E402

log = logging.getLogger("benchmarks.methods")

SCHEMA = {
    "face_recognition_config": Key("path"),
    "target_dataset": Key("path", help="any folder of face images (content does not matter for speed)"),
    "batch_size": Key(positive_int, default=16),
    "images": Key(positive_int, default=32, help="number of images (first in file order)"),
    "benchmark_methods": Key("list", default=["froq", "embedding_norm", "serfiq", "grafiqs", "crfiqa",
                                              "aux_fiqa"]),
    "methods": Key("dict", default={}),
    "repeats": Key(positive_int, default=3, help="runs per method; the fastest is reported"),
    "outpath": Key("any", default=None, help="optional JSON file for the numbers"),
    **COMMON_KEYS,
}


def time_forward(fr, root, paths, batch_size, num_workers) -> float:
    """Seconds for reading, preprocessing and one plain forward pass of every image."""
    start = time.perf_counter()
    with torch.no_grad():
        for _, images in iterate_folder(root, fr.preprocess, batch_size, paths=paths,
                                        num_workers=num_workers, device=fr.device, desc="forward",
                                        failures=FailureLog("forward")):
            fr.network(images)
    if fr.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_method(fr, name, root, paths, batch_size, num_workers, options) -> float:
    """Seconds for one full run of method ``name`` over ``paths`` (reading included)."""
    start = time.perf_counter()
    run_method(name, fr, root, batch_size=batch_size, num_workers=num_workers, paths=paths,
               options=options)
    if fr.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def quick_observer(fr, root, paths, batch_size, num_workers, out_dir) -> str:
    """An observer for timing FROQ when none is configured: initialised on the benchmark images
    with the flip component of the pseudo-labels as labels (cheap; selection quality does not
    matter for speed, only how deep the selected layers are). Returns the JSON path."""
    from baselineFIQA.labels import LabelSettings, PseudoLabeler
    from observer.initialization import collect_norms, select_layers

    labeler = PseudoLabeler(fr, LabelSettings())
    flips = {}
    with torch.no_grad():
        for batch_paths, images in iterate_folder(root, fr.preprocess, batch_size, paths=paths,
                                                  num_workers=num_workers, device=fr.device,
                                                  desc="flip labels", failures=FailureLog("froq")):
            flips.update(zip(batch_paths, labeler.flip_term(images, labeler.embed(images)).tolist()))
    layers, read, norms = collect_norms(fr, root, paths, batch_size, num_workers)
    record = select_layers(layers, norms, [flips[p] for p in read])
    path = Path(out_dir) / "observer.json"
    write_json(path, {**record, "model": fr.identity()})
    log.info("froq: no methods.froq.observer given; timed with a quick observer selecting %s",
             ", ".join(record["selected_layers"]))
    return str(path)


def main(argv=None) -> None:
    """Run every configured method once on the same images and print the throughput table."""
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    for name in cfg["benchmark_methods"]:
        if name not in list_methods():
            raise FroqError(f"{cfg['_source']}: benchmark_methods: unknown method '{name}' "
                            f"(known: {', '.join(list_methods())})")
    fr = fr_from_stage_config(cfg)
    root = cfg["target_dataset"]
    paths = list_images(root)[:cfg["images"]]
    bs, nw = cfg["batch_size"], cfg["num_workers"]
    reps = cfg["repeats"]
    time_forward(fr, root, paths, bs, nw)  # warm-up (and the files into the OS cache)
    runs: dict[str, Callable[[], float]] = {"forward (plain)": lambda: time_forward(fr, root, paths, bs, nw)}
    notes: dict[str, str] = {}
    tmp = tempfile.TemporaryDirectory(prefix="froq-bench-")
    for name in cfg["benchmark_methods"]:
        options = method_options(cfg, name)
        if name == "froq" and not options.get("observer"):
            options["observer"] = quick_observer(fr, root, paths, bs, nw, tmp.name)
        try:
            get_method(name).check(fr, options)
        except FroqError as exc:
            notes[name] = f"N/A: {exc}"
            continue
        runs[name] = lambda name=name, options=options: time_method(fr, name, root, paths, bs, nw, options)
    # round-robin repeats, so every method sees the same (shared-machine) load; fastest run counts
    best = {name: float("inf") for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    base = best["forward (plain)"]
    rows = [{"method": name, "seconds": best.get(name), "note": notes.get(name, "")}
            for name in ["forward (plain)", *cfg["benchmark_methods"]]]
    n = len(paths)
    print(f"\nFIQA methods on {fr.arch} ({fr.weights or 'random weights'}), {n} images, "
          f"batch {bs}, device {fr.device}, torch threads {torch.get_num_threads()}, best of {reps}")
    print(f"{'method':<16} {'seconds':>9} {'img/s':>9} {'ms/img':>9} {'x forward':>10}")
    for r in rows:
        if r["seconds"] is None:
            print(f"{r['method']:<16} {'N/A':>9}   {r['note']}")
            continue
        r.update(images_per_s=n / r["seconds"], ms_per_image=1000 * r["seconds"] / n,
                 ratio_to_forward=r["seconds"] / base)
        print(f"{r['method']:<16} {r['seconds']:>9.2f} {r['images_per_s']:>9.1f} "
              f"{r['ms_per_image']:>9.1f} {r['ratio_to_forward']:>10.1f}")
    if cfg.get("outpath"):
        write_json(cfg["outpath"], {"model": fr.identity(), "images": n, "batch_size": bs,
                                    "device": str(fr.device), "threads": torch.get_num_threads(),
                                    "rows": rows})


if __name__ == "__main__":
    sys.exit(run_main(main))
