"""Pictures and a one-page report of a run: what a researcher looks at first.

- ``contact_sheet``: a PNG of the scored faces with the lowest, the middle and the highest
  qualities (one row each, lowest to highest, quality and 0–100 percentile under every face).
- ``write_report``: ``report.html``, one self-contained page (every image embedded as a ``data:``
  URI, no script, no external file): the run summary, the contact sheet, the layer-utility plot of
  the observer (``observer.figures``), the EDC plot(s) and the evaluation table(s) when the run was
  evaluated.

``./run.sh`` writes ``contact_sheet.png``, ``layers.png`` and ``report.html`` into its output
folder after every run (``froq/pipeline.py``).
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from froq.core.errors import FroqError
from froq.core.images import load_rgb
from froq.core.io import atomic_open, read_csv


TILE = 112            # thumbnail side in the contact sheet (pixels)
CAPTION = 30          # caption height under each thumbnail
LABEL_W = 78          # width of the row labels on the left
GROUPS = ("lowest", "middle", "highest")
NOT_SCORED = ("no_face", "unreadable")  # flags of images that got the lowest quality without a face


@dataclass
class Face:
    """One scored image for the contact sheet: its name in the qualities CSV, the file to show,
    raw quality, 0–100 percentile (None when absent) and flag."""

    name: str
    file: Path
    quality: float
    percentile: float | None = None
    flag: str = "ok"


def read_faces(qualities_csv: str | os.PathLike, locate: Callable[[str], Path | None]) -> tuple[list[Face], int]:
    """The rows of a qualities CSV (``path,quality[,percentile][,flag]``) as ``Face`` items.

    In: the CSV and ``locate(name) -> image file or None``. Out: (faces with an image to show,
    count of rows left out: flagged ``no_face``/``unreadable`` or without a file)."""
    faces, left_out = [], 0
    for row in read_csv(qualities_csv, required=("path", "quality")):
        flag = (row.get("flag") or "ok").strip() or "ok"
        file = None if flag in NOT_SCORED else locate(row["path"])
        if file is None or not Path(file).is_file():
            left_out += 1
            continue
        pct = row.get("percentile")
        faces.append(Face(row["path"], Path(file), float(row["quality"]),
                          float(pct) if pct not in (None, "") else None, flag))
    return faces, left_out


def pick_groups(faces: Sequence[Face], per_group: int = 8) -> dict[str, list[Face]]:
    """The ``per_group`` lowest, middle (centred on the median) and highest faces, each group in
    ascending quality (ties by name). Fewer faces than 3 × ``per_group``: the groups split them."""
    ordered = sorted(faces, key=lambda f: (f.quality, f.name))
    n = len(ordered)
    if n < 3:
        return {"lowest": ordered, "middle": [], "highest": []}
    k = min(per_group, n // 3)
    mid = (n - k) // 2  # the k faces around the median; n >= 3k keeps the groups apart
    return {"lowest": ordered[:k], "middle": ordered[mid:mid + k], "highest": ordered[n - k:]}


def contact_sheet(faces: Sequence[Face], path: str | os.PathLike, per_group: int = 8,
                  title: str = "") -> dict[str, list[Face]]:
    """Write the contact sheet PNG (atomically): one row per group of ``pick_groups`` (lowest at
    the top), each face resized to ``TILE``×``TILE`` (bilinear) with ``q=<quality>`` and
    ``p=<percentile>`` (and a non-ok flag) under it. Out: the groups drawn, in drawing order.
    FroqError when there is no face to show."""
    from PIL import Image, ImageDraw

    if not faces:
        raise FroqError(f"{path}: no scored face to show in the contact sheet")
    groups = pick_groups(faces, per_group)
    cols = max(len(g) for g in groups.values())
    head = 22 if title else 0
    sheet = Image.new("RGB", (LABEL_W + cols * TILE, head + len(GROUPS) * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill="black")
    for r, name in enumerate(GROUPS):
        top = head + r * (TILE + CAPTION)
        draw.text((4, top + TILE // 2 - 6), name, fill="black")
        for c, face in enumerate(groups[name]):
            left = LABEL_W + c * TILE
            thumb = load_rgb(face.file).convert("RGB").resize((TILE, TILE), Image.BILINEAR)
            sheet.paste(thumb, (left, top))
            caption = f"q={face.quality:.4g}"
            if face.percentile is not None:  # the scale never reaches 0 or 100: say so
                p = face.percentile
                caption += " p<1" if p < 1 else " p>99" if p > 99 else f" p={p:.0f}"
            draw.text((left + 3, top + TILE + 2), caption, fill="black")
            if face.flag != "ok":
                draw.text((left + 3, top + TILE + 15), face.flag, fill=(170, 0, 0))
    with atomic_open(path, "wb") as fh:
        sheet.save(fh, format="PNG")
    return groups


# ---- the HTML report ------------------------------------------------------------------------------

def data_uri(png: str | os.PathLike) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def markdown_to_html(text: str) -> str:
    """The Markdown of an evaluation ``table.md`` as HTML: ``#`` headings, pipe tables (the
    separator row dropped; ``**bold**``/``*italic*`` kept), other lines as paragraphs. All text
    is escaped."""
    def inline(s: str) -> str:
        s = html.escape(s.strip())
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)

    out, rows = [], []

    def flush():
        if rows:
            head, *body = rows
            out.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = line.strip().strip("|").split("|")
            if not all(re.fullmatch(r"\s*:?-+:?\s*", c) for c in cells):
                rows.append(cells)
            continue
        flush()
        m = re.match(r"(#+)\s*(.*)", line)
        if m:
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}dd{margin:0}"""


def summary_items(summary: Mapping) -> list[tuple[str, str]]:
    """(label, text) pairs of a run's ``summary.json`` for the report's summary list."""
    def text(value) -> str:
        if isinstance(value, Mapping):
            return "; ".join(f"{k.replace('_', ' ')} {text(v)}" for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return ", ".join(text(v) for v in value)
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return [(key.replace("_", " "), text(value)) for key, value in summary.items()]


def write_report(path: str | os.PathLike, summary: Mapping, figures: Sequence[tuple[str, str | os.PathLike]] = (),
                 tables: Sequence[tuple[str, str]] = (), title: str = "FROQ run") -> Path:
    """Write the one-page HTML report (atomically), every picture embedded.

    In: the output path, the run summary (``summary.json``'s dict), ``figures`` as (caption, PNG
    path) — missing files are skipped with a note — and ``tables`` as (heading, Markdown text, e.g.
    an evaluation ``table.md``). Out: the path written."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<h2>Summary</h2><dl>"]
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in summary_items(summary)]
    parts.append("</dl>")
    for caption, png in figures:
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        if png and Path(png).is_file():
            parts.append(f"<figure><img src=\"{data_uri(png)}\" alt=\"{html.escape(caption)}\">"
                         f"<figcaption>{html.escape(Path(png).name)}</figcaption></figure>")
        else:
            parts.append(f"<p>(not available: {html.escape(str(png))})</p>")
    for heading, markdown in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(markdown_to_html(markdown))
    parts.append("</body></html>\n")
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return path
