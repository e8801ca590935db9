"""One scoring path (issue 19, item 3): ``froq score``, ``froq score-photos``, ``./run.sh`` and
``froq.Observer.score`` read folders through ``observer.inference.read_folder`` and score through
``score_entries``, so they give the same rows, flags and failure quality (a FROQ+ observer
included); ``froq.pseudo_labels`` hits and fills the stage's labels cache; observer init takes the
labels stage's ``dataset.list`` and RecordIO inputs.

Tiny generated networks (global pooling: any input size) stand in for real models; dlib's ResNet
(its weights, skipped without them) only where the labels cache needs a weights identity on disk.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

import froq
from conftest import REPO
from face_recognition_model.loading import load_fr_model
from froq.core.errors import FroqError
from froq.core.recordio import write_records
from froq.score_photos import score_photos
from observer.inference import FAILURE_QUALITY
from observer.scale import scale_record
from stage_helpers import error_line, run_in_process
from test_score_photos import TinyNet  # noqa: F401  (registers tiny_score_photos_net)


def fr_config(tmp_path, size: str = "[112, 96]", extra: str = "alignment: sphereface96x112\n"):
    path = tmp_path / "fr.yaml"
    path.write_text(f"model: {{arch: tiny_score_photos_net, weights: random}}\n"
                    f"preprocess: {{size: {size}, mean: 0.5, std: 0.5}}\n{extra}")
    return path


def random_images(root, names, size, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / name)
    return root


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def stage_argv(cfg, folder, observer, out):
    return ["-c", str(REPO / "configs" / "inference.yaml"), "--set", f"face_recognition_config={cfg}",
            "--set", f"target_dataset={folder}", "--set", f"observer_data={observer}",
            "--set", f"outpath={out}", "--set", "device=cpu", "--set", "batch_size=2"]


PAPER = {"selected_layers": ["conv1", "conv2"]}
# FROQ+: a feature falling with quality (sign -1) makes qualities negative: failures go lower still
PLUS = {"selected_layers": ["conv1", "conv2"], "standardise": "none",
        "features": [{"layer": "conv1", "statistic": "l2", "sign": -1, "weight": 1.0},
                     {"layer": "conv2", "statistic": "std", "sign": 1, "weight": 1.0}]}


@pytest.mark.parametrize("variant", [PAPER, PLUS], ids=["paper", "plus"])
def test_stage_score_photos_and_api_give_the_same_rows(variant, tmp_path):
    from observer.inference import main as stage_main

    cfg = fr_config(tmp_path)
    fr = load_fr_model(cfg)
    observer = tmp_path / "observer.json"
    observer.write_text(json.dumps({**variant, "model": {**fr.identity(), "config": str(cfg)},
                                    "alignment": fr.alignment().record(),
                                    "scale": scale_record(np.linspace(-3.0, 40.0, 11))}))
    chips = random_images(tmp_path / "chips", ["a/1.png", "a/2.png", "b/1.png"], (96, 112))
    (chips / "b" / "0.png").write_bytes(b"not a png")
    counts = run_in_process(stage_main, stage_argv(cfg, chips, observer, tmp_path / "stage.csv"))
    assert counts["ok"] == 3 and counts["unreadable"] == 1
    stage = read_rows(tmp_path / "stage.csv")
    score_photos(observer, chips, tmp_path / "photos.csv", mode="aligned", device="cpu")
    assert read_rows(tmp_path / "photos.csv") == stage
    api = froq.Observer.load(observer, device="cpu").score(chips)
    assert [r["path"] for r in stage] == api.paths == ["a/1.png", "a/2.png", "b/0.png", "b/1.png"]
    assert [r["flag"] for r in stage] == api.flags == ["ok", "ok", "unreadable", "ok"]
    np.testing.assert_allclose([float(r["quality"]) for r in stage], api.quality, rtol=1e-6)
    np.testing.assert_allclose([float(r["percentile"]) for r in stage], api.percentile, rtol=1e-6)
    good = np.delete(api.quality, 2)
    assert api.quality[2] < good.min() and api.percentile[2] == 0  # the failure is lowest
    assert (api.quality[2] == FAILURE_QUALITY) == (variant is PAPER)
    # the in-memory path (one QualityObserver) agrees with the folder path
    memory = froq.Observer.load(observer, device="cpu").score([chips / p for p in ("a/1.png", "a/2.png", "b/1.png")])
    np.testing.assert_allclose(memory.quality, good, rtol=1e-6)


def test_photos_are_refused_by_the_stage_and_the_api_with_the_way_out(tmp_path, capsys):
    """Images that are not the model's chip size are photos: ``froq score`` and ``Observer.score``
    say to use ``froq score-photos``; chip-sized images off the template are scored, warned about."""
    from froq.commands import main

    cfg = fr_config(tmp_path)
    fr = load_fr_model(cfg)
    observer = tmp_path / "observer.json"
    observer.write_text(json.dumps({**PAPER, "model": {**fr.identity(), "config": str(cfg)},
                                    "alignment": fr.alignment().record()}))
    photos = random_images(tmp_path / "photos", ["p/1.jpg", "p/2.jpg"], (200, 150))
    capsys.readouterr()  # what was logged before the command is not its output
    rc = run_in_process(main, ["score", *stage_argv(cfg, photos, observer, tmp_path / "q.csv")])
    error_line(rc, capsys.readouterr().err, "not the sphereface96x112 chip size",
               f"froq score-photos OBSERVER {photos}")
    assert not (tmp_path / "q.csv").exists()
    with pytest.raises(FroqError, match="froq score-photos"):
        froq.Observer.load(observer, device="cpu").score(photos)
    chips = random_images(tmp_path / "chips", ["c/1.png"], (96, 112))
    assert run_in_process(main, ["score", *stage_argv(cfg, chips, observer, tmp_path / "q.csv")]) == 0
    assert "does not look aligned for sphereface96x112" in capsys.readouterr().err
    assert [r["flag"] for r in read_rows(tmp_path / "q.csv")] == ["ok"]


def test_api_pseudo_labels_hit_and_fill_the_stages_labels_cache(tmp_path, monkeypatch, capsys):
    from baselineFIQA import labels as labels_mod
    from baselineFIQA.main import main as labels_main
    from face_recognition_model.dlib_resnet import default_weights_path

    try:
        default_weights_path()
    except FroqError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("FROQ_CACHE", str(tmp_path / "cache"))
    dlib = REPO / "configs" / "fr" / "dlib_resnet.yaml"
    settings = ["--set", f"face_recognition_config={dlib}", "--set", "device=cpu",
                "--set", "dataset.image_size=150", "--set", "dataset.mpx=75", "--set", "dataset.noise_count=1"]

    def stage(folder, out):
        run_in_process(labels_main, ["-c", str(REPO / "configs" / "baseline.yaml"), *settings,
                                     "--set", f"dataset.path={folder}", "--set", f"outpath={out}"])
        return capsys.readouterr().out

    def api(folder):
        return froq.pseudo_labels(dlib, folder, device="cpu", mpx=75, noise_count=1)

    first = random_images(tmp_path / "first", ["p0/0.png", "p1/1.png"], (150, 150), seed=1)
    second = random_images(tmp_path / "second", ["p0/0.png", "p1/1.png"], (150, 150), seed=2)
    assert "reused" not in stage(first, tmp_path / "a.csv")
    computed_by_api = api(second)

    def no_forward(*_a, **_k):
        raise AssertionError("the labels were computed again")

    monkeypatch.setattr(labels_mod.PseudoLabeler, "score", no_forward)
    hit = api(first)  # the stage's entry, found by the API
    assert hit.paths == [r["path"] for r in read_rows(tmp_path / "a.csv")]
    assert hit.column("quality").tolist() == [float(r["quality"]) for r in read_rows(tmp_path / "a.csv")]
    assert "reused from the labels cache" in stage(second, tmp_path / "b.csv")  # the API's entry
    assert [float(r["quality"]) for r in read_rows(tmp_path / "b.csv")] == computed_by_api.column("quality").tolist()


def test_init_takes_the_labels_of_a_list_and_of_a_record_set(tmp_path):
    """Labels computed on ``dataset.list`` / a ``train.rec`` feed init with the same input: rows
    keyed alike (relative paths / record indices), every labelled image used."""
    from baselineFIQA.main import main as labels_main
    from observer.initialization import main as init_main

    cfg = fr_config(tmp_path, "16", "")
    common = ["--set", f"face_recognition_config={cfg}", "--set", "device=cpu", "--set", "dataset.batch_size=2"]
    folder = random_images(tmp_path / "faces", [f"id{k % 2}/{k}.png" for k in range(8)], (16, 16))
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"id{k % 2}/{k}.png\n" for k in range(5)))
    items = []
    for k in range(1, 6):
        buf = io.BytesIO()
        Image.open(folder / f"id{k % 2}/{k}.png").save(buf, format="PNG")
        items.append((k, float(k % 2), buf.getvalue()))
    rec = tmp_path / "train.rec"
    write_records(rec, items)
    for name, source in (("list", ["--set", f"dataset.path={folder}", "--set", f"dataset.list={listed}"]),
                         ("rec", ["--set", f"dataset.path={rec}"])):
        labels, observer = tmp_path / f"{name}_labels.csv", tmp_path / f"{name}_observer.json"
        run_in_process(labels_main, ["-c", str(REPO / "configs" / "baseline.yaml"), *common, *source,
                                     "--set", "dataset.mpx=8", "--set", "dataset.noise_count=2", "--set", "dataset.image_size=16",
                                     "--set", f"outpath={labels}"])
        run_in_process(init_main, ["-c", str(REPO / "configs" / "init.yaml"), *common, *source,
                                   "--set", f"label_location={labels}", "--set", f"outpath={observer}",
                                   "--set", "top_n=3"])
        record = json.loads(observer.read_text())
        assert record["calibration"]["images"] == 5 and record["selected_layers"], name


def test_the_stage_checks_the_sizes_of_a_sample_not_of_every_image(monkeypatch, tmp_path):
    """Mode ``faces`` (froq score, Observer.score) checks ``FACES_SAMPLE`` evenly spaced images,
    so a million-image folder is not read twice; ``froq score-photos`` checks all of them."""
    import observer.inference as inference
    import preparation.align as align

    checked, real = [], align.check_aligned
    monkeypatch.setattr(align, "check_aligned", lambda folder, rels, t: checked.append(rels) or real(folder, rels, t))
    monkeypatch.setattr(inference, "FACES_SAMPLE", 3)
    fr = load_fr_model(fr_config(tmp_path))
    chips = random_images(tmp_path / "chips", [f"c/{k}.png" for k in range(7)], (96, 112))
    _, entries, _, _ = inference.read_folder(fr, {}, chips)
    _, _, _, _ = inference.read_folder(fr, {}, chips, "aligned")
    assert len(entries) == 7 and checked == [["c/0.png", "c/3.png", "c/6.png"], [f"c/{k}.png" for k in range(7)]]
