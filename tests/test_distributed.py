"""Scale-out under torchrun (issue 11): a job of several gloo processes on CPU writes exactly the
one-process outputs (pseudo-labels, observer, FROQ qualities, a comparison method); a job whose
rank dies is finished by a rerun with 1 or 3 processes without recomputing finished rows; list
files as input; the shard arithmetic.

The multi-process jobs are real ``python -m torch.distributed.run --standalone`` launches of this
file, which runs several stage commands in one job (one process-group start for all of them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stage_helpers import error_line

REPO = Path(__file__).resolve().parents[1]
FR = str(REPO / "configs" / "fr" / "dlib_resnet.yaml")
CHEAP = ["dataset.mpx=75", "dataset.noise_count=2", "dataset.batch_size=2"]  # a 2x2 occlusion grid


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def commands(faces: Path, out: Path) -> dict[str, list[str]]:
    """The stage commands of the job, all writing under ``out``."""
    cfg = REPO / "configs"
    return {
        "labels": ["labels", "-c", str(cfg / "baseline.yaml"),
                   *sets(f"face_recognition_config={FR}", f"dataset.path={faces}", "dataset.image_size=150",
                         f"outpath={out / 'labels.csv'}", "device=cpu", *CHEAP)],
        "init": ["init", "-c", str(cfg / "init.yaml"),
                 *sets(f"face_recognition_config={FR}", f"dataset.path={faces}", "dataset.batch_size=3",
                       f"label_location={out / 'labels.csv'}", f"outpath={out / 'observer.json'}", "device=cpu")],
        "score": ["score", "-c", str(cfg / "inference.yaml"),
                  *sets(f"face_recognition_config={FR}", f"target_dataset={faces}", "batch_size=3",
                        f"observer_data={out / 'observer.json'}", f"outpath={out / 'qualities.csv'}", "device=cpu")],
        "methods": ["methods", "-c", str(cfg / "score.yaml"), "--method", "embedding_norm",
                    *sets(f"face_recognition_config={FR}", f"target_dataset={faces}", "batch_size=3",
                          f"outpath={out / 'embedding_norm.csv'}", "device=cpu")],
    }


def run_here(argvs: list[list[str]]) -> None:
    """The commands in this process, one after the other (a one-process run), with one thread as
    each torchrun process has (OMP_NUM_THREADS=1): on some CPUs a convolution of a batch of one
    image sums in another order with two threads (labels 6e-8 apart), which is not sharding."""
    import torch

    from froq.commands import main
    from stage_helpers import run_in_process

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for argv in argvs:
            assert run_in_process(main, argv) == 0, argv
    finally:
        torch.set_num_threads(threads)


def torchrun(n: int, argvs: list[list[str]], env: dict | None = None, timeout: int = 240):
    """The commands as one torchrun job of ``n`` gloo processes → CompletedProcess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           __file__, json.dumps(argvs)]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "FROQ_CACHE": "off", "FROQ_DIST_TIMEOUT": "120",
               **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=environ)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from test_reliability import faces as make_faces

    folder = tmp_path_factory.mktemp("dist") / "faces"
    make_faces(folder, 11, seed=3)  # odd: the shards and the last batch are uneven
    return folder


@pytest.fixture(scope="module")
def one_process(faces, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("one")
    run_here(list(commands(faces, out).values()))
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("FROQ_CACHE", "off")
    yield mp
    mp.undo()


def test_two_processes_write_exactly_the_one_process_outputs(faces, one_process, tmp_path):
    proc = torchrun(2, list(commands(faces, tmp_path).values()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("labels.csv", "qualities.csv", "embedding_norm.csv"):
        assert (tmp_path / name).read_bytes() == (one_process / name).read_bytes(), name
    # observer init gathered every rank's norms: the same selection, scale and record
    a = json.loads((tmp_path / "observer.json").read_text().replace(str(tmp_path), "DIR"))
    b = json.loads((one_process / "observer.json").read_text().replace(str(one_process), "DIR"))
    for record in (a, b):
        record.get("stability", {}).pop("seconds", None)  # a timing
    assert a == b
    assert "rank 1 of 2 computes" in proc.stderr and not list(tmp_path.glob("*.partial*"))
    assert not list(tmp_path.glob("*.lock"))


def _done_and_todo(stderr: str) -> tuple[int, int]:
    found = re.findall(r"pseudo-labels: (\d+) of (\d+) images already done, (\d+) to go", stderr)
    assert found, stderr[-2000:]
    done, total, todo = map(int, found[0])
    return done, todo


def test_a_dead_rank_is_finished_by_reruns_with_1_or_3_processes_without_recomputing(
        faces, one_process, tmp_path):
    killed = tmp_path / "killed"
    argv = commands(faces, killed)["labels"]
    # two processes started as torchrun would (its environment), without torchrun, which would
    # stop rank 0 itself: rank 1 dies after one batch; rank 0 finishes its share, then reports
    # the dead peer in one line instead of waiting
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FROQ_CACHE": "off", "FROQ_DIST_TIMEOUT": "60",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    launcher = str(REPO / "tests" / "stop_after_batches.py")  # rank 1 stops after 1 batch
    procs = [subprocess.Popen([sys.executable, launcher, "1:1", *argv], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    (_, err0), (_, err1) = (p.communicate(timeout=180) for p in procs)
    assert procs[1].returncode == 17 and not (killed / "labels.csv").exists()
    error_line(procs[0].returncode, err0, "rank 0 of 2", "another process stopped",
               "run the same command again")
    partials = sorted(p.name for p in killed.glob("labels.csv.partial.*"))
    assert "labels.csv.partial.1-of-2" in partials, err1[-2000:]
    rows = sum(len((killed / p).read_text().splitlines()) - 2 for p in partials)
    assert rows >= 2  # rank 1's batch at least

    for n in (1, 3):
        again = tmp_path / f"rerun{n}"
        shutil.copytree(killed, again)
        argv = commands(faces, again)["labels"]
        if n == 1:
            import io
            from contextlib import redirect_stderr

            err = io.StringIO()
            with redirect_stderr(err):
                run_here([argv])
            stderr = err.getvalue()
        else:
            done = torchrun(n, [argv])
            assert done.returncode == 0, done.stderr[-3000:]
            stderr = done.stderr
            computed = sum(map(int, re.findall(r"rank \d of 3 computes (\d+) of", stderr)))
            assert computed == 11 - rows
        assert _done_and_todo(stderr) == (rows, 11 - rows)
        assert (again / "labels.csv").read_bytes() == (one_process / "labels.csv").read_bytes()
        assert not list(again.glob("*.partial*"))


def test_a_list_file_scores_the_listed_images_in_sorted_order(faces, one_process, tmp_path):
    listed = sorted(p.relative_to(faces).as_posix() for p in faces.rglob("*.png"))[::2]
    (tmp_path / "images.txt").write_text("# every other face\n" + "\n".join(reversed(listed)) + "\n\n")
    argv = commands(faces, tmp_path)["methods"] + ["--set", f"target_list={tmp_path / 'images.txt'}"]
    run_here([argv])
    lines = (tmp_path / "embedding_norm.csv").read_text().splitlines()
    full = (one_process / "embedding_norm.csv").read_text().splitlines()
    assert lines == [full[0]] + [line for line in full[1:] if line.split(",")[0] in set(listed)]


def test_a_record_set_scores_like_the_same_images_in_a_folder(faces, one_process, tmp_path):
    """``froq score`` on a train.rec holding the folder's PNG files: the same qualities and
    percentiles, rows keyed by record index, the identity label kept."""
    from froq.core.recordio import write_records

    rels = sorted(p.relative_to(faces).as_posix() for p in faces.rglob("*.png"))
    write_records(tmp_path / "train.rec", [(k + 1, float(rel[2]), (faces / rel).read_bytes())
                                           for k, rel in enumerate(rels)])
    argv = commands(tmp_path / "train.rec", tmp_path)["score"]
    argv = [a.replace(str(tmp_path / "observer.json"), str(one_process / "observer.json")) for a in argv]
    run_here([argv])
    rows = (tmp_path / "qualities.csv").read_text().splitlines()
    folder = (one_process / "qualities.csv").read_text().splitlines()
    assert rows[0] == "path,label,quality,percentile,flag" and len(rows) == len(folder)
    for k, (mine, theirs) in enumerate(zip(rows[1:], folder[1:])):
        key, label, rest = mine.split(",", 2)
        assert key == str(k + 1) and float(label) == float(rels[k][2])
        assert theirs == f"{rels[k]},{rest}"


def test_bad_list_files_are_one_line_errors(tmp_path):
    from froq.core.errors import FroqError
    from froq.core.images import read_image_list

    for text, needle in [("a.png\n../b.png\n", ":2:"), ("a.png\na.png\n", "listed twice"),
                         ("/abs/a.png\n", "not a path relative"), ("# nothing\n", "lists no image")]:
        (tmp_path / "l.txt").write_text(text)
        with pytest.raises(FroqError, match=re.escape(needle)):
            read_image_list(tmp_path / "l.txt")


def test_shards_cover_every_item_once_without_padding():
    from froq.core.distributed import shard_range

    for n in (0, 1, 5, 11, 1000):
        for world in (1, 2, 3, 7):
            parts = [range(*shard_range(n, r, world)) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_never_starts_torch_distributed(monkeypatch):
    import torch

    from froq.core import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    me = distributed.init(torch.device("cpu"))
    assert not me.active and me.main and not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(Exception, match="inconsistent torchrun environment"):
        distributed.current()


if __name__ == "__main__":  # one torchrun worker: run the stage commands given as JSON
    sys.path.insert(0, str(REPO))
    from froq.commands import main as froq_main

    for args in json.loads(sys.argv[1]):
        code = froq_main(args)
        if code:
            sys.exit(code)
