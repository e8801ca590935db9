"""Scale-out benchmark (issue 11): images/s of a stage with 1 and 2 torchrun processes, and the
resume bookkeeping alone (list → shard → per-process partials → merge) for a million rows.

    python benchmarks/scale.py --images /work/cache/lfw/aligned_dlib150 --n 200
    python benchmarks/scale.py --rows 1000000 --skip-throughput

Throughput: the comparison method ``embedding_norm`` on dlib's ResNet (150 px) over the first
``--n`` images of ``--images`` (given to the stage as a list file), one torch thread per process:
``python -m froq methods`` for one process, ``python -m torch.distributed.run --standalone
--nproc_per_node=2 -m froq methods`` for two; images/s from the stage's own timing line (model
loading and process start excluded) and from the whole command's wall time; the two outputs are
compared byte for byte. With CUDA present it also runs one process on ``cuda`` (and two when there
are two GPUs) and names the card.

Bookkeeping: ``--rows`` synthetic paths, no model, no image: the sorted key list, the batch grid
split over 2 ranks, each rank's rows appended to its ``.partial.<rank>-of-2`` (batches of 256), then
the merge every rank does (``scan_rows`` of every partial into the result) and rank 0's CSV write.
Wall time per step and the process's peak resident memory (``resource.getrusage``), measured in a
child process so nothing else is counted, next to the same child's memory before the first step.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

REPO = _HERE.parent
FR = REPO / "configs" / "fr" / "dlib_resnet.yaml"


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine is shared: say how busy it was)."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def stage_command(procs: int, images: Path, listing: Path, out: Path, device: str) -> list[str]:
    """The ``froq methods --method embedding_norm`` command for ``procs`` processes."""
    launch = [sys.executable, "-m", "froq"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
        "-m", "froq"]
    sets = [f"face_recognition_config={FR}", f"target_dataset={images}", f"target_list={listing}",
            f"outpath={out}", f"device={device}", "batch_size=16"]
    return [*launch, "methods", "-c", str(REPO / "configs" / "score.yaml"), "--method", "embedding_norm",
            *[a for s in sets for a in ("--set", s)]]


def throughput(images: Path, n: int, procs: int, device: str, work: Path) -> dict:
    """One run: images, stage seconds (its own timing line), wall seconds, output file."""
    from froq.core.images import list_images

    listing = work / "images.txt"
    if not listing.exists():
        listing.write_text("\n".join(list_images(images)[:n]) + "\n")
    out = work / f"{device.replace(':', '')}_{procs}.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FROQ_CACHE": "off"}
    started = time.perf_counter()
    proc = subprocess.run(stage_command(procs, images, listing, out, device), capture_output=True,
                          text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"error: the {procs}-process run failed:\n{proc.stderr[-2000:]}")
    found = re.search(r"embedding_norm: (\d+) images in ([\d.]+) s", proc.stderr)
    count, seconds = int(found.group(1)), float(found.group(2))
    return {"processes": procs, "device": device, "images": count, "stage_s": seconds,
            "stage_img_s": count / seconds, "wall_s": round(wall, 2), "wall_img_s": count / wall,
            "output": str(out)}


def bookkeeping(rows: int, work: Path) -> dict:
    """The resume bookkeeping alone for ``rows`` synthetic rows over 2 ranks (see module doc)."""
    import numpy as np

    from froq.core import distributed
    from froq.core.io import fingerprint, write_csv
    from froq.core.runner import (FolderSource, PartialWriter, _Scan, partial_files, scan_rows)

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mb()
    times = {}
    cpu_start = time.process_time()
    t = time.perf_counter()
    keys = sorted(f"id{i // 50:06d}/img{i:08d}.jpg" for i in range(rows))
    source = FolderSource(work / "no-such-folder", keys)  # identities: "missing", never opened
    times["list"] = time.perf_counter() - t

    columns = ["flip", "noise", "occlusion", "quality"]
    header = ["path", "file", *columns]
    stamp = f"# froq-partial {fingerprint({'benchmark': rows})}"
    out = work / "labels.csv"
    batch = 256
    t = time.perf_counter()
    todo = np.arange(rows)
    grid = np.split(todo, np.flatnonzero(np.diff(todo // batch)) + 1)
    shards = [grid[slice(*distributed.shard_range(len(grid), r, 2))] for r in range(2)]
    times["shard"] = time.perf_counter() - t

    t = time.perf_counter()
    rng = np.random.default_rng(0)
    for rank, batches in enumerate(shards):
        writer = PartialWriter(Path(f"{out}.partial.{rank}-of-2"), stamp, header, None)
        for members in batches:
            values = rng.random((len(members), len(columns)))
            writer.append([[keys[i], source.identity(i), *values[j].tolist()]
                           for j, i in enumerate(members.tolist())])
        writer.close()
    times["partials"] = time.perf_counter() - t

    t = time.perf_counter()
    scan = _Scan(have=np.zeros(rows, dtype=bool), values=np.full((rows, len(columns)), np.nan))
    for path in partial_files(out):
        scan_rows(path, stamp, header, source, scan)
    read = np.flatnonzero(scan.have)
    times["merge_read"] = time.perf_counter() - t
    t = time.perf_counter()
    write_csv(out, ["path", *columns], ([keys[i], *scan.values[i].tolist()] for i in read))
    times["merge_write"] = time.perf_counter() - t
    assert len(read) == rows
    lines = sum(1 for _ in open(out, encoding="utf-8"))
    assert lines == rows + 1
    size = sum(p.stat().st_size for p in partial_files(out))
    return {"rows": rows, "seconds": {k: round(v, 2) for k, v in times.items()},
            "total_s": round(sum(times.values()), 2), "cpu_s": round(time.process_time() - cpu_start, 2), "peak_rss_mb": round(peak_mb(), 1),
            "rss_before_mb": round(before, 1), "partials_mb": round(size / 2**20, 1),
            "output_mb": round(out.stat().st_size / 2**20, 1)}


def main(argv=None) -> None:
    """Run the benchmark and print its numbers (and a JSON line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("/work/cache/lfw/aligned_dlib150"),
                        help="folder of 150 px aligned faces (dlib)")
    parser.add_argument("--n", type=int, default=200, help="images scored per run")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows of the bookkeeping run")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-bookkeeping", action="store_true")
    parser.add_argument("--bookkeeping-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bookkeeping_child:
        print(json.dumps(bookkeeping(args.rows, args.bookkeeping_child)))
        return
    import torch

    results: dict = {"load_before": load_average(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="froq-scale-") as tmp:
        work = Path(tmp)
        if not args.skip_throughput:
            runs = [throughput(args.images, args.n, procs, "cpu", work) for procs in (1, 2)]
            same = Path(runs[0]["output"]).read_bytes() == Path(runs[1]["output"]).read_bytes()
            results["cpu"] = runs
            print(f"CPU, {os.cpu_count()} cores, 1 torch thread per process, dlib ResNet 150 px, "
                  f"embedding_norm, {runs[0]['images']} images, batch 16:")
            for r in runs:
                print(f"  {r['processes']} process(es): {r['stage_img_s']:.1f} img/s in the stage "
                      f"({r['stage_s']:.1f} s), {r['wall_img_s']:.1f} img/s wall ({r['wall_s']:.1f} s)")
            print(f"  ratio 2/1: {runs[1]['stage_img_s'] / runs[0]['stage_img_s']:.2f} (stage), "
                  f"{runs[1]['wall_img_s'] / runs[0]['wall_img_s']:.2f} (wall); outputs identical: {same}")
            if torch.cuda.is_available():  # not measured on the development machine (no GPU)
                card = torch.cuda.get_device_name(0)
                gpu = [throughput(args.images, args.n, 1, "cuda", work)]
                if torch.cuda.device_count() >= 2:
                    gpu.append(throughput(args.images, args.n, 2, "auto", work))
                results["gpu"] = {"card": card, "runs": gpu}
                for r in gpu:
                    print(f"  GPU {card}, {r['processes']} process(es): {r['stage_img_s']:.1f} img/s "
                          f"in the stage, {r['wall_img_s']:.1f} img/s wall")
        if not args.skip_bookkeeping:
            child = subprocess.run([sys.executable, __file__, "--rows", str(args.rows),
                                    "--bookkeeping-child", str(work)], capture_output=True, text=True,
                                   cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if child.returncode:
                raise SystemExit(f"error: bookkeeping run failed:\n{child.stderr[-2000:]}")
            book = json.loads(child.stdout.strip().splitlines()[-1])
            results["bookkeeping"] = book
            print(f"bookkeeping, {book['rows']:,} rows, 2 ranks, no model: {book['total_s']:.1f} s "
                  f"({', '.join(f'{k} {v:.1f} s' for k, v in book['seconds'].items())}); peak RSS "
                  f"{book['peak_rss_mb']:.0f} MB (process before the first step: {book['rss_before_mb']:.0f} MB); CPU time {book['cpu_s']:.1f} s; "
                  f"partials {book['partials_mb']:.0f} MB, output {book['output_mb']:.0f} MB")
    results["load_after"] = load_average()
    print(f"load average (1/5/15 min): {results['load_before']} before, {results['load_after']} after")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
