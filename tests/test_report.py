"""Pictures, the HTML report and the evaluation at the end of a run (froq/report.py,
observer/figures.py, froq/pairs_evaluation.py)."""

from __future__ import annotations

import base64
import html.parser
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from froq.core.io import read_csv, write_csv
from froq.report import CAPTION, LABEL_W, TILE, Face, contact_sheet, read_faces, write_report

COLOURS = [(10 * i + 5, 200 - 15 * i, (37 * i) % 256) for i in range(10)]


def _solid_faces(root: Path, n: int = 10) -> list[Face]:
    faces = []
    for i in range(n):
        f = root / f"p{i}.png"
        Image.new("RGB", (40, 50), COLOURS[i]).save(f)
        # qualities in a shuffled order: the sheet must sort them
        faces.append(Face(f"p{i}.png", f, quality=float((7 * i) % n), percentile=10.0 * i))
    return faces


def test_contact_sheet_shows_lowest_middle_highest_in_order(tmp_path):
    faces = _solid_faces(tmp_path)
    groups = contact_sheet(faces, tmp_path / "sheet.png", per_group=2)
    by_quality = sorted(faces, key=lambda f: f.quality)
    assert [f.quality for f in groups["lowest"]] == [0.0, 1.0]
    assert [f.quality for f in groups["middle"]] == [4.0, 5.0]  # the two around the median
    assert [f.quality for f in groups["highest"]] == [8.0, 9.0]
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    assert sheet.shape == (3 * (TILE + CAPTION), LABEL_W + 2 * TILE, 3)
    expected = [by_quality[k] for k in (0, 1, 4, 5, 8, 9)]
    for slot, face in enumerate(expected):
        r, c = divmod(slot, 2)
        top, left = r * (TILE + CAPTION), LABEL_W + c * TILE
        tile = sheet[top:top + TILE, left:left + TILE]
        colour = COLOURS[int(face.name[1:-4])]
        assert np.all(tile == np.array(colour, dtype=np.uint8)), (slot, face.name)
    # captions are drawn under the tiles (dark pixels on the white caption band)
    band = sheet[TILE + 2:TILE + CAPTION - 2, LABEL_W:LABEL_W + TILE]
    assert (band < 100).any()


def test_faces_without_an_aligned_face_are_left_out(tmp_path):
    faces = _solid_faces(tmp_path, 4)
    rows = [[f.name, f.quality, f.percentile, "ok"] for f in faces] + [["gone.png", -1.0, 0.0, "no_face"]]
    Image.new("RGB", (40, 50)).save(tmp_path / "gone.png")  # a file is there: the flag alone leaves it out
    write_csv(tmp_path / "q.csv", ["path", "quality", "percentile", "flag"], rows)
    got, left_out = read_faces(tmp_path / "q.csv", lambda name: tmp_path / name)
    assert [f.name for f in got] == [f.name for f in faces] and left_out == 1
    assert got[1].percentile == faces[1].percentile and got[0].flag == "ok"


OBSERVER = {
    "selected_layers": ["b.2", "b.5"],
    "candidates": ["b.2", "b.5", "b.4"],
    "layers": [{"name": "stem", "utility": 0.1}, {"name": "b.1", "utility": None},
               {"name": "b.2", "utility": 0.6}, {"name": "b.3", "utility": -0.2},
               {"name": "b.4", "utility": 0.4}, {"name": "b.5", "utility": 0.55}],
    "stability": {"layer_frequency": {"b.2": 1.0, "b.5": 0.7, "b.4": 0.2}},
}


def test_layer_plot_marks_the_selected_layers(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from observer.figures import plot_layer_utilities

    calls = []
    real = Axes.scatter

    def spy(self, x, y, *args, **kwargs):
        calls.append((list(x), list(y), kwargs))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "scatter", spy)
    pts = plot_layer_utilities(OBSERVER, tmp_path / "layers.png")
    assert Image.open(tmp_path / "layers.png").format == "PNG"
    every = next(c for c in calls if c[2].get("label") == "layer")
    assert every[0] == [0, 2, 3, 4, 5] and every[1] == [0.1, 0.6, -0.2, 0.4, 0.55]  # depth order, no None
    star = next(c for c in calls if c[2].get("label") == "selected")
    assert star[0] == [2, 5] and star[1] == [0.6, 0.55] and star[2]["marker"] == "*"
    cand = next(c for c in calls if c[2].get("label") == "top-n candidate")
    assert cand[0] == [4] and cand[1] == [0.4]  # candidates that were not selected
    assert pts["stability"] == {"b.2": 1.0, "b.5": 0.7}


class _Parts(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.headings, self.cells, self._in = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])
        if tag in ("h1", "h2", "h3", "h4", "td", "th"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in in ("h1", "h2", "h3", "h4") and data.strip():
            self.headings.append(data.strip())
        if self._in in ("td", "th") and data.strip():
            self.cells.append(data.strip())


TABLE_MD = """# EDC pAUC (lower is better)

## dlib_resnet — FMR = 0.001

| Method | lfw | Mean |
|---|:---:|:---:|
| froq | **0.412** | **0.412** |
| *random* | 0.985 | 0.985 |
| *perfect* | 0.101 | 0.101 |
"""


def _report(tmp_path) -> tuple[Path, list[Path]]:
    from observer.figures import plot_layer_utilities

    faces = _solid_faces(tmp_path)
    contact_sheet(faces, tmp_path / "sheet.png", per_group=2)
    plot_layer_utilities(OBSERVER, tmp_path / "layers.png")
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "edc.png")
    pngs = [tmp_path / "sheet.png", tmp_path / "layers.png", tmp_path / "edc.png"]
    summary = {"fr_config": "configs/fr/dlib_resnet.yaml", "calibration_images": 300,
               "selected_layers": ["b.2", "b.5"], "calibration_spearman": 0.4567,
               "quality": {"min": 1.0, "median": 2.0, "max": 3.0}}
    out = write_report(tmp_path / "run" / "report.html", summary,
                       [("Contact sheet", pngs[0]), ("Layer utilities", pngs[1]), ("EDC", pngs[2])],
                       [("Evaluation on lfw", TABLE_MD)])
    return out, pngs


def test_html_report_holds_every_part_and_embeds_every_picture(tmp_path):
    out, pngs = _report(tmp_path)
    text = out.read_text(encoding="utf-8")
    parts = _Parts()
    parts.feed(text)
    assert parts.headings[:2] == ["FROQ run", "Summary"]
    assert {"Contact sheet", "Layer utilities", "EDC", "Evaluation on lfw"} <= set(parts.headings)
    assert len(parts.images) == 3 and parts.links == []  # self-contained: nothing to fetch
    for src, png in zip(parts.images, pngs):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    assert ["froq", "0.412", "0.412"] == parts.cells[3:6] and "perfect" in parts.cells
    assert "0.4567" in text and "min 1; median 2; max 3" in text and "b.2, b.5" in text and "configs/fr/dlib_resnet.yaml" in text
    # the page still stands when its pictures are deleted: they are inside it
    for png in pngs:
        png.unlink()
    assert out.read_text(encoding="utf-8") == text


def test_html_report_renders_in_a_headless_browser(tmp_path):
    """Chromium (Debian package ``chromium``; .ci/run installs it) loads the page: every image
    decodes (naturalWidth > 0) and the table is there."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        pytest.skip("no headless browser (apt-get install chromium); the HTML was checked by parsing only")
    out, _ = _report(tmp_path)
    probe = out.with_name("probe.html")
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
              "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);"
              "document.body.setAttribute('data-cells',document.querySelectorAll('td').length)});</script>")
    probe.write_text(out.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'data-decoded="3/3"' in res.stdout, res.stdout[:500]
    assert 'data-cells="9"' in res.stdout


# ---- the evaluation at the end of run.sh ------------------------------------------------------------

PAIRS = "1\t2\nA\t1\t2\nB\t1\t2\nA\t1\tC\t1\nB\t2\tC\t1\n"


@pytest.fixture
def run_folder(tmp_path):
    """Photos, their aligned chips with ``landmarks.csv`` and a run's outputs, as run.sh leaves
    them; C_0001 had no face (no chip, flag no_face, lowest quality); pairs.txt beside the photos."""
    from face_recognition_model.dlib_resnet import default_weights_path
    from froq.core.errors import FroqError

    try:
        default_weights_path()
    except FroqError as exc:
        pytest.skip(str(exc))
    photos, out = tmp_path / "lfw" / "images", tmp_path / "out"
    aligned = out / "aligned" / "dlib150"
    rng = np.random.default_rng(0)
    rows, qualities = [], []
    for k, name in enumerate(["A/A_0001", "A/A_0002", "B/B_0001", "B/B_0002", "C/C_0001"]):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(photos / f"{name}.jpg")
        chip = "" if name.startswith("C") else f"{name}.png"
        if chip:
            (aligned / chip).parent.mkdir(parents=True, exist_ok=True)
            base = np.full((150, 150, 3), 40 * (ord(name[0]) - 64), dtype=np.uint8)  # same person alike
            noise = rng.integers(0, 30, (150, 150, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(aligned / chip)
        rows.append([f"{name}.jpg", chip, "ok" if chip else "no_face"])
        qualities.append([f"{name}.jpg", float(k) if chip else -1e9, 10.0 * k, "ok" if chip else "no_face"])
    write_csv(aligned / "landmarks.csv", ["path", "output", "status"], rows)
    write_csv(out / "qualities.csv", ["path", "quality", "percentile", "flag"], qualities)
    write_csv(out / "labels.csv", ["path", "quality"], [["x/1.png", 0.5], ["x/2.png", 0.7], ["x/3.png", 0.6]])
    from froq.core.io import write_json
    write_json(out / "observer.json", {**OBSERVER, "greedy": [{"layer": "b.2", "spearman": 0.6},
                                                            {"layer": "b.5", "spearman": 0.62}]})
    (tmp_path / "lfw" / "pairs.txt").write_text(PAIRS)
    return {"photos": photos, "out": out, "aligned": aligned, "pairs": tmp_path / "lfw" / "pairs.txt",
            "fr": str(Path(__file__).resolve().parents[1] / "configs/fr/dlib_resnet.yaml")}


def test_run_evaluation_covers_pairs_with_an_unaligned_face(run_folder):
    """Every pair is evaluated; pairs with C_0001 score -1 (non-match); the table holds froq,
    random and perfect."""
    from froq.pairs_evaluation import NO_FACE_SCORE, evaluate_run, find_pairs_file

    r = run_folder
    pairs = find_pairs_file(str(r["photos"]))
    assert pairs == str(r["pairs"])  # beside the photos, as ../shared/data/lfw
    done = evaluate_run(r["out"], pairs, str(r["photos"]), r["out"] / "qualities.csv", r["fr"], "cpu",
                        r["aligned"])
    scores = {(x["path1"], x["path2"]): float(x["score"])
              for x in read_csv(r["out"] / "evaluation/comparison_scores.csv")}
    assert len(scores) == 4
    assert scores[("A/A_0001.jpg", "C/C_0001.jpg")] == NO_FACE_SCORE == scores[("B/B_0002.jpg", "C/C_0001.jpg")]
    assert -1 < scores[("A/A_0001.jpg", "A/A_0002.jpg")] <= 1
    assert done["no_face"] == 1 and done["without_quality"] == 0 and done["model"] == "dlib_resnet"
    table = Path(done["table"]).read_text()
    for method in ("froq", "random", "perfect"):
        assert method in table
    assert done["edc_plots"] and all(Path(p).is_file() for p in done["edc_plots"])


def test_pipeline_end_evaluates_and_reports(run_folder, capsys):
    """The end of ``run()``: evaluation (pairs.txt found beside the photos), pictures, report and
    the summary naming them; a found pairs file that does not fit is skipped, a given one stops."""
    from froq import pipeline

    r = run_folder
    out, target = str(r["out"]), str(r["out"] / "split" / "target")
    opts = pipeline.Options(photos=str(r["photos"]), device="cpu")
    evaluation = pipeline.evaluate_step(opts, out, r["fr"], target, str(r["aligned"]))
    printed = capsys.readouterr().out
    assert "== evaluation on" in printed and "| froq |" in printed and "*perfect*" in printed
    summary = pipeline.write_summary(out, r["fr"], "calib", target, {"evaluation": evaluation})
    pictures = pipeline.pictures_step(opts, out, target, str(r["aligned"]), summary, evaluation)
    sheet = Image.open(pictures["contact_sheet"])
    assert sheet.size == (LABEL_W + TILE, 22 + 3 * (TILE + CAPTION))  # 4 faces shown: one per group
    page = Path(pictures["report"]).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2 + len(evaluation["edc_plots"])
    assert "Evaluation on lfw" in page and "dlib_resnet" in page
    lines = pipeline.summary_lines(pipeline.write_summary(out, r["fr"], "calib", target,
                                                          {"evaluation": evaluation, "pictures": pictures}), out)
    assert any(line.startswith("evaluation:") and "table.md" in line for line in lines)
    assert any(line.startswith("pictures:") and "report.html" in line for line in lines)

    r["pairs"].write_text("1\t1\nZed\t1\t2\nA\t1\tZed\t1\n")  # names no photo of the folder
    assert pipeline.evaluate_step(opts, out, r["fr"], target, str(r["aligned"])) is None
    assert "does not fit them: no evaluation" in capsys.readouterr().out
    given = pipeline.Options(photos=str(r["photos"]), device="cpu", pairs=str(r["pairs"]))
    with pytest.raises(pipeline.Stopped) as stop:
        pipeline.evaluate_step(given, out, r["fr"], target, str(r["aligned"]))
    assert stop.value.code == 2
