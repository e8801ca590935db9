"""Inference cost of FROQ+ observers against the paper's and a plain forward pass.

    python benchmarks/inference_cost.py -c configs/benchmark_inference_cost.yaml [--set threads=1]

Every row scores the same preloaded batches (reading excluded) with ``QualityObserver`` — the
class the inference stage uses — on an observer file: one hooked pass per batch, early exit after
the deepest hooked layer (``early_exit: true``). Rows run round-robin ``repeats`` times after a
warm-up; the median counts, ``x fwd`` = time per image / the plain forward's. Also printed: the
forwards per batch counted by a pre-hook, the hooked layers, the statistics computed per layer,
where the deepest hooked layer sits, and the early-exit cost: the share of the forward's Conv and
Linear multiply-adds run before the exit (``observer.depth``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _HERE:
    # run as a file (python benchmarks/inference_cost.py): the repository root goes first on
    # sys.path, so that ``benchmarks.pipeline`` is importable
    sys.path[0] = str(_HERE.parent)


import torch  # noqa: E402

from benchmarks.pipeline import format_table, machine_info, preload, summarise, time_rows  # noqa: E402
from face_recognition_model.loading import fr_from_stage_config  # noqa: E402
from froq.core.cli import run_main, setup_logging, stage_parser  # noqa: E402
from froq.core.config import Key, load_config, positive_int, public  # noqa: E402
from froq.core.errors import FroqError  # noqa: E402
from froq.core.images import list_images  # noqa: E402
from froq.core.io import write_json  # noqa: E402
from froq.core.stage import COMMON_KEYS  # noqa: E402
from observer.depth import early_exit_cost  # noqa: E402
from observer.hooks import observable_layers  # noqa: E402
from observer.initialization import network_costs  # noqa: E402
from observer.inference import QualityObserver, observer_plan, read_observer  # noqa: E402


SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config"),
    "images": Key("path", help="folder of aligned faces (first n_images in file order)"),
    "observers": Key("dict", help="{row name: observer JSON} (e.g. paper and plus)"),
    "n_images": Key(positive_int, default=256),
    "batch_size": Key(positive_int, default=32),
    "repeats": Key(positive_int, default=5),
    "early_exit": Key("bool", default=True),
    "threads": Key("int", default=None, minimum=1, help="torch.set_num_threads (null: default)"),
    "outpath": Key("any", default=None, help="optional JSON file for the numbers"),
    **COMMON_KEYS,
}


def main(argv=None) -> dict:
    """Parse arguments, time a plain forward and every observer, print the table."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    fr = fr_from_stage_config(cfg)
    paths = list_images(cfg["images"])[:cfg["n_images"]]
    if not paths:
        raise FroqError(f"{cfg['images']}: no images found")
    _, batches = preload(fr, cfg["images"], paths, cfg["batch_size"], cfg["num_workers"])
    n = sum(b.shape[0] for b in batches)
    all_layers = observable_layers(fr.network)
    costs = network_costs(fr)
    observers, details = {}, {}
    for name, path in cfg["observers"].items():
        obs = read_observer(path)
        layers, stats, features = observer_plan(obs)
        deepest = max(all_layers.index(x) for x in layers)
        observers[name] = QualityObserver(fr, obs, early_exit=cfg["early_exit"])
        details[name] = {"layers": layers, "statistics": stats,
                         "features": len(features) if features else len(layers),
                         "deepest": f"{all_layers[deepest]} (#{deepest + 1} of {len(all_layers)})",
                         "early_exit_cost": early_exit_cost(costs["costs"], layers)}
    forwards: list[int] = []
    handle = fr.network.register_forward_pre_hook(lambda *a: forwards.append(1))

    def plain() -> None:
        with torch.no_grad():
            for x in batches:
                fr.network(x)

    runs = {"forward (plain)": plain}
    for name, observe in observers.items():
        def run(observe=observe) -> None:
            with observe:  # hooks on only this observer's layers while its row runs
                for x in batches:
                    observe(x)
        runs[name] = run
    for name, run in runs.items():  # warm-up; also counts the forwards per batch
        forwards.clear()
        run()
        details.setdefault(name, {})["forwards_per_batch"] = len(forwards) / len(batches)
    handle.remove()
    times = time_rows(runs, cfg["repeats"], fr.device)
    rows = summarise(times, {k: n for k in runs}, {k: "1" if k == "forward (plain)" else "<=1" for k in runs},
                     "forward (plain)")
    print(format_table(rows))
    for name, d in details.items():
        if "layers" in d:
            print(f"{name}: {d['features']} feature(s) on {len(d['layers'])} layer(s), statistics "
                  f"{', '.join(d['statistics'])}; deepest hooked layer {d['deepest']}; early-exit "
                  f"cost {d['early_exit_cost']:.3f} of the multiply-adds; "
                  f"{d['forwards_per_batch']:.0f} forward per batch")
    result = {"machine": machine_info(fr.device), "images": n, "rows": rows, "observers": details,
              "cost_unit": costs["unit"], "total_macs": costs["total_macs"],
              "config": public(cfg)}
    if cfg["outpath"]:
        write_json(cfg["outpath"], result)
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
