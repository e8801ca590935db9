"""Pseudo-label speed: images/s of stage 1 against a plain forward, the official implementation's
label computation rule, each occlusion path, and another checkout of the repository (e.g. main
before a change), in one command.

    python benchmarks/labels.py --fr configs/fr/dlib_resnet.yaml --images DIR [--baseline DIR]

Every ``labels`` row runs ``PseudoLabeler.score`` (the labels' own code path: flip, K noise draws,
every occlusion cell) on the same preloaded faces with the same weights, so reading images is not
timed. The ``official rule`` row computes the same labels as the official code does: one full
forward of the batch of images per perturbation (clean, flip, each noise draw, each occluded
cell), fp32. This checkout's rows: the path of main before issue 20 (one full forward per occluded
copy, nothing folded), the incremental occlusion, the default (incremental + affines folded into
the convolutions, baselineFIQA/fusion.py) and the ``precision: bf16`` option (other numbers: its
``max |Δ|`` says how far; ``--no-bf16`` skips it). ``x fwd`` = seconds per labelled image /
seconds per plain forward of one image (the official rule's count is 2 + K + cells, 76 with the
paper's constants). ``--baseline DIR`` runs
the same measurement with the code of the checkout ``DIR`` (its ``PYTHONPATH``) in a child process
and reports its rows too; ``speed-up`` and ``max |Δ|`` compare every row with the baseline's first
labels row (or this checkout's ``occlusion full`` row), ``max |Δ| official`` with the official rule.
Timings use ``--threads`` torch threads (default 1: on a shared 2-core CPU, 2 threads were
erratic); the fastest of ``--repeats`` runs is reported beside the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = os.environ.get("FROQ_BENCH_REPO", str(REPO))  # never this folder (methods.py)


def _imports():
    """The pieces of whichever checkout is on the path (today's layout or the one before rooms)."""
    import torch  # noqa: F401
    from baselineFIQA.labels import LabelSettings, PseudoLabeler
    from face_recognition_model.loading import load_fr_config, load_fr_model
    try:
        from froq.core.images import ImageFolder, list_images
    except ImportError:  # the layout before froq/core
        from froq.images import ImageFolder, list_images
    return LabelSettings, PseudoLabeler, load_fr_config, load_fr_model, ImageFolder, list_images


def measure(args) -> dict:
    """The rows of this checkout: {name: {seconds: [...], labels: [...]}} plus the forward row."""
    import torch

    LabelSettings, PseudoLabeler, load_fr_config, load_fr_model, ImageFolder, list_images = _imports()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # generated (random) weights: the same in every checkout's process
    fr = load_fr_model(load_fr_config(args.fr, args.fr_set), "cpu")
    paths = list_images(args.images)[:args.n_images]
    data = ImageFolder(args.images, fr.preprocess, paths=paths)
    x = torch.stack([data[i][1] for i in range(len(paths))])
    fields = set(LabelSettings.__dataclass_fields__)
    rows = {"forward (plain)": {}}
    variants = [("labels, this checkout's defaults", {})]
    if "occlusion" in fields:
        variants = [("labels, occlusion full", {"occlusion": "full"}),
                    ("labels, occlusion incremental (default)", {"occlusion": "incremental"})]
    if "fold" in fields:  # issue 20: the path of main before it, each step, and the bf16 option
        variants = [("labels, occlusion full, not folded (main before issue 20)", {"occlusion": "full", "fold": False}),
                    ("labels, occlusion incremental, not folded", {"occlusion": "incremental", "fold": False}),
                    ("labels, incremental + folded (default)", {}),
                    ("labels, default + bf16 (option; labels change)", {"precision": "bf16"})]
        if not args.bf16:
            variants.pop()
    variants += [(f"labels, forward_batch {fb}", {"forward_batch": fb}) for fb in args.forward_batches]
    if args.channels_last_off and "channels_last" in fields:
        variants.append(("labels, default, channels-last off", {"channels_last": False}))
    mpx = args.mpx or (min(fr.preprocess.size) + 4) // 8
    if args.official:
        rows["official rule"] = {}

    def forward():
        with torch.no_grad():
            for chunk in torch.split(x, 32):
                fr.network(chunk)

    # the stage's defaults where this checkout has them (compute_pseudo_labels resolves channels_last
    # auto = on for CPU; LabelSettings alone defaults to off)
    defaults = {"forward_batch": 32, **({"channels_last": True} if "channels_last" in fields else {})}
    labelers = {name: PseudoLabeler(fr, LabelSettings(mpx=mpx, **{**defaults, **extra}))
                for name, extra in variants}
    forward()  # warm-up
    for name, labeler in labelers.items():
        labeler.score(x[:1])
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward()
        rows["forward (plain)"].setdefault("seconds", []).append(time.perf_counter() - start)
        if args.official:
            start = time.perf_counter()
            rows["official rule"]["labels"] = official_rule(fr, x, mpx)
            rows["official rule"].setdefault("seconds", []).append(time.perf_counter() - start)
        for name, labeler in labelers.items():
            start = time.perf_counter()
            out = labeler.score(x)
            rows.setdefault(name, {}).setdefault("seconds", []).append(time.perf_counter() - start)
            rows[name]["labels"] = out["quality"].tolist()
    cells = labelers[variants[0][0]].masks.shape[0]
    return {"rows": rows, "images": len(paths), "arch": fr.arch, "forwards": 2 + 10 + cells,
            "torch": torch.__version__, "threads": args.threads,
            "load": " ".join(f"{v:.1f}" for v in os.getloadavg())}


def official_rule(fr, x, mpx: int, noise_count: int = 10, alpha: float = 0.001) -> list[float]:
    """Labels (B,) by the official implementation's rule: each perturbation is one full fp32
    forward of the whole batch (clean, flip, K noise draws, every occluded cell), label = mean of
    the mean cosines of flip, noise and occlusion."""
    import torch
    import torch.nn.functional as F

    h, w = fr.preprocess.size
    noise = torch.randn((noise_count, 3, h, w), generator=torch.Generator().manual_seed(0))
    black = fr.preprocess.black_value().view(1, 3, 1, 1)
    with torch.no_grad():
        ref = fr.network(x)
        cos = lambda y: F.cosine_similarity(fr.network(y), ref, dim=-1)  # noqa: E731
        flip = cos(torch.flip(x, dims=[-1]))
        noisy = torch.stack([cos((1 - alpha) * x + alpha * n) for n in noise]).mean(0)
        occluded = []
        for top in range(0, h, mpx):
            for left in range(0, w, mpx):
                y = x.clone()
                y[:, :, top:top + mpx, left:left + mpx] = black
                occluded.append(cos(y))
        return ((flip + noisy + torch.stack(occluded).mean(0)) / 3).tolist()


def report(mine: dict, base: dict | None, label: str) -> None:
    """Print the table: img/s, x fwd, speed-up and max |Δ| against the baseline's (or this
    checkout's full-forward) labels, and max |Δ| against the official rule."""
    n = mine["images"]
    fwd = min(mine["rows"]["forward (plain)"]["seconds"]) / n
    ref_rows = (base or mine)["rows"]
    ref_name = next((k for k in ref_rows if k.startswith("labels, occlusion full")),
                    next(k for k in ref_rows if k.startswith("labels")))
    ref_time = min(ref_rows[ref_name]["seconds"])
    ref_labels = ref_rows[ref_name]["labels"]
    official = mine["rows"].get("official rule", {}).get("labels")
    print(f"\n{label}: {mine['arch']}, {n} faces, torch {mine['torch']}, {mine['threads']} thread(s), "
          f"load {mine['load']}, official rule {mine['forwards']} forwards/image")
    print(f"speed-up and max |Δ| against: {'baseline ' if base else ''}{ref_name}")
    print("| row | img/s (fastest) | img/s (median) | x fwd | speed-up | max abs diff | max abs diff official |")
    print("|---|---|---|---|---|---|---|")

    def diff(labels, other):
        return f"{max(abs(a - b) for a, b in zip(labels, other)):.1e}" if other else ""

    for name, row in mine["rows"].items():
        best, med = min(row["seconds"]), statistics.median(row["seconds"])
        if name == "forward (plain)":
            print(f"| {name} | {n / best:.2f} | {n / med:.2f} | 1.00 | | | |")
            continue
        print(f"| {name} | {n / best:.3f} | {n / med:.3f} | {best / n / fwd:.1f} | "
              f"{ref_time / best:.2f}x | {diff(row['labels'], ref_labels)} | {diff(row['labels'], official)} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fr", default=str(REPO / "configs" / "fr" / "dlib_resnet.yaml"), help="FR config")
    p.add_argument("--fr-set", action="append", default=[], help="override of the FR config (key=value)")
    p.add_argument("--images", required=True, help="folder of aligned faces")
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--mpx", type=int, default=0, help="occlusion cell (default: an 8x8 grid)")
    p.add_argument("--forward-batches", type=int, nargs="*", default=[16, 64])
    p.add_argument("--no-official", dest="official", action="store_false",
                   help="skip the official rule's row (the slowest)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 option's row")
    p.add_argument("--channels-last-off", action="store_true",
                   help="add a row with the channels-last format off (the stage's CPU default is on)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", default=None, help="another checkout to measure the same way")
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)  # child mode: write rows here
    args = p.parse_args(argv)
    mine = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(mine))
        return 0
    base = None
    if args.baseline:
        out = Path(args.baseline).resolve() / ".bench_labels.json"
        env = {**os.environ, "PYTHONPATH": str(Path(args.baseline).resolve()),
               "FROQ_BENCH_REPO": str(Path(args.baseline).resolve())}
        child = [sys.executable, str(Path(__file__).resolve()), *[a for a in (argv or sys.argv[1:])
                 if a != "--baseline" and a != args.baseline], "--json", str(out),
                 "--forward-batches", "--no-official"]
        subprocess.run(child, check=True, env=env, cwd=args.baseline)
        base = json.loads(out.read_text())
        out.unlink()
        report(base, None, f"baseline {args.baseline}")
    report(mine, base, "this checkout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
