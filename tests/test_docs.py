"""The documentation cannot drift from the code.

- ``docs/reference/*.md`` equal what ``tools/gen_docs.py`` generates from the code now (schemas,
  argparse parsers, the model registry, the import layers).
- Every pointer from the code to the documentation resolves: ``docs/<page>.md`` and
  ``docs/<page>.md#anchor`` in source, config and script files name a page and a heading that
  exist; a ``README, "Section"`` pointer names a heading of README.md (pointers to other projects'
  READMEs, with a URL or their repository path beside them, are not ours); the links of README.md
  resolve. Links inside ``docs/`` are checked by ``mkdocs build --strict`` in CI.
"""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

from conftest import REPO

SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt"}
DOCS_POINTER = re.compile(r"\bdocs/([\w./-]+?\.md)(?:#([\w-]+))?")
README_FILE = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*README\.md)(?:#([\w-]+))?")
README_SECTION = re.compile(r"(\S*)\s*\bREADME(?:\.md)?[,:]?\s+[\"'“]([^\"'”]+)[\"'”]")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*(?:\{#([\w-]+)\})?\s*$")


def slugify(text: str) -> str:
    """The id Python-Markdown's ``toc`` extension (MkDocs' default) gives a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The ids of a Markdown page's headings (fenced code skipped; duplicates get ``_1``, ``_2``)."""
    out: set[str] = set()
    fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        match = None if fence else HEADING.match(line)
        if match:
            ident = match.group(2) or slugify(match.group(1))
            base, n = ident, 0
            while ident in out:
                n += 1
                ident = f"{base}_{n}"
            out.add(ident)
    return out


def code_files(root: Path = REPO) -> list[Path]:
    """Source, config and script files of the repository (docs/ and this test excluded)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        paths = [root / p for p in listed]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in root.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    skip = {root / "tests" / "test_docs.py"}
    return sorted(p for p in paths if p.suffix in SUFFIXES and p.is_file() and p not in skip
                  and p.relative_to(root).parts[0] not in ("docs", "site"))


def broken_pointers(files: list[Path], root: Path = REPO) -> list[str]:
    """Every pointer in ``files`` to a page or section of this project's docs that does not exist."""
    cache: dict[Path, set[str]] = {}

    def check(where: str, page: Path, anchor: str | None, shown: str, out: list[str]) -> None:
        if not page.is_file():
            out.append(f"{where}: {shown}: no such page")
        elif anchor and anchor not in cache.setdefault(page, anchors(page)):
            out.append(f"{where}: {shown}: no heading with id '{anchor}' in {page.relative_to(root)}")

    out: list[str] = []
    readme_ids = anchors(root / "README.md")
    for path in files:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            where = f"{path.relative_to(root)}:{i + 1}"
            for m in DOCS_POINTER.finditer(line):
                check(where, root / "docs" / m.group(1), m.group(2), m.group(0), out)
            for m in README_FILE.finditer(line):
                check(where, root / m.group(1), m.group(2), m.group(0), out)
            window = " ".join(lines[max(0, i - 1):i + 1])
            for m in README_SECTION.finditer(line):
                external = re.search(r"://|url", window, re.I) or re.search(r"[/_]", m.group(1))
                if not external and slugify(m.group(2)) not in readme_ids:
                    out.append(f"{where}: README section '{m.group(2)}' does not exist: "
                               f"point at docs/<page>.md#<anchor> instead")
    return out


def test_every_pointer_from_the_code_to_the_docs_resolves():
    files = code_files()
    assert any(p.name == "table.py" for p in files) and any(p.suffix == ".yaml" for p in files)
    assert not broken_pointers(files), "\n".join(broken_pointers(files))


def test_readme_links_resolve():
    bad = []
    for target in MD_LINK.findall((REPO / "README.md").read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        page = REPO / file if file else REPO / "README.md"
        if not page.exists():
            bad.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(page):
            bad.append(f"{target}: no heading with id '{anchor}'")
    assert not bad, bad


def test_the_pointer_check_can_fail(tmp_path):
    """A pointer to a missing page, a missing anchor or a missing README section is reported; a
    good one and another project's README section are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## A section {#sec}\n\n## Plain `code` title\n")
    (tmp_path / "README.md").write_text("# Title\n\n## Python API\n")
    src = tmp_path / "mod.py"
    src.write_text('\n'.join([
        'OK = "docs/page.md#sec docs/page.md#plain-code-title docs/page.md (README, \'Python API\')"',
        'BAD1 = "docs/nowhere.md"', 'BAD2 = "docs/page.md#missing"', 'BAD3 = "(README, \'Calibration set\')"',
        'EXT = "https://github.com/x/y (README, \'Pretrained Models\')"',
        'EXT2 = "(recognition/arcface_torch README, \\"Model Zoo\\")"']))
    found = broken_pointers([src], root=tmp_path)
    assert [f.split(":")[1] for f in found] == ["2", "3", "4"], found


def test_reference_pages_match_the_code():
    """``tools/gen_docs.py --check`` regenerates every reference page and compares."""
    run = subprocess.run([sys.executable, "tools/gen_docs.py", "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:] + "\nrun: python tools/gen_docs.py"


def test_generator_finds_every_command_schema():
    """Schemas are discovered by import: each ``froq`` command's ``SCHEMA`` has its table, with
    every key."""
    import importlib
    sys.path.insert(0, str(REPO / "tools"))
    try:
        gen_docs = importlib.import_module("gen_docs")
    finally:
        sys.path.remove(str(REPO / "tools"))
    from froq.commands import COMMANDS
    found = {(module, name): schema for module, name, schema in gen_docs.schemas()}
    for module, _ in COMMANDS.values():
        schema = getattr(importlib.import_module(module), "SCHEMA", None)
        if schema is not None:  # under the module that declares it (evaluation.settings for evaluate)
            assert any(s is schema for s in found.values()), module
    page = (REPO / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    from observer.initialization import SCHEMA
    assert all(f"| `{key}` |" in page for key in SCHEMA)
