"""The rooms of the repository and the direction of their imports.

Every import in every module (function-level imports included) is read with ``ast``. A room may
import its own modules and the rooms of LOWER layers only; no module may take part in an import
cycle. Layers, bottom to top:

0. ``froq.core``                 shared plumbing (configs, image reader, runner, I/O, CLI helpers)
1. ``face_recognition_model``    the model zoo (registry, layouts, loaders)
2. ``preparation``, ``conformance``, ``baselineFIQA``   data preparation, generated test weights,
   stage 1 (pseudo-labels) — side by side, none imports another
3. ``observer``                  stages 2 and 3
4. ``methods``                   comparison FIQA methods (FROQ and the pseudo-label FIQA among them)
5. ``evaluation``                EDC / pAUC, benchmarks, tables
6. ``froq``                      the public face: API, the ``froq`` command, the run orchestrator
7. ``benchmarks``, ``calibration_dataset``   scripts on top
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LAYERS = [
    ("froq.core",),
    ("face_recognition_model",),
    ("preparation", "conformance", "baselineFIQA"),
    ("observer",),
    ("methods",),
    ("evaluation",),
    ("froq",),
    ("benchmarks", "calibration_dataset"),
]
ROOMS = {room: layer for layer, rooms in enumerate(LAYERS) for room in rooms}


def room_of(module: str) -> str | None:
    """The room of a dotted module name (the longest matching room prefix), None for third party."""
    best = None
    for room in ROOMS:
        if module == room or module.startswith(room + "."):
            if best is None or len(room) > len(best):
                best = room
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    """Every Python module of the repository's rooms (tests excluded)."""
    out = {}
    for room in {r.split(".")[0] for r in ROOMS}:
        base = REPO / room
        if base.is_dir():
            for path in base.rglob("*.py"):
                out[module_name(path)] = path
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of ours that ``path`` imports anywhere in its body (``from pkg import sub`` counts as
    importing ``pkg.sub`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = our_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def test_every_module_belongs_to_a_room(graph):
    assert graph, "no modules found"
    assert all(room_of(m) for m in graph)
    for room in ("froq.core", "face_recognition_model", "baselineFIQA", "observer", "evaluation", "froq"):
        assert any(room_of(m) == room for m in graph), f"room {room} has no module"


def test_rooms_import_only_lower_layers(graph):
    upward = []
    for module, deps in graph.items():
        mine = room_of(module)
        for dep in deps:
            theirs = room_of(dep)
            if theirs != mine and ROOMS[theirs] >= ROOMS[mine]:
                upward.append(f"{module} ({mine}, layer {ROOMS[mine]}) imports {dep} "
                              f"({theirs}, layer {ROOMS[theirs]})")
    assert not upward, "imports that run up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycles(graph):
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The rules themselves can fail: an upward import and a two-module cycle are both caught."""
    assert ROOMS[room_of("froq.core.io")] < ROOMS[room_of("observer.hooks")]
    assert room_of("froq.api") == "froq" and room_of("froq.core.runner") == "froq.core"
    a = tmp_path / "a.py"
    a.write_text("from observer.hooks import NormRecorder\nimport b\n")
    assert imports_of(a, "froq.core.a", {"observer.hooks", "b"}) == {"observer.hooks", "b"}
    fn = tmp_path / "fn.py"
    fn.write_text("def f():\n    from evaluation import reporting\n")
    assert imports_of(fn, "evaluation.evaluate", {"evaluation.reporting", "evaluation"}) == {"evaluation.reporting"}


def test_the_ground_floor_loads_nothing_of_the_roof():
    """``froq/core`` sits inside the ``froq`` package (the roof): importing it, or any room built on
    it, runs ``froq/__init__.py``, which must stay lazy, so that no higher room is loaded with it."""
    rooms = sorted({r.split(".")[0] for r in ROOMS})
    probe = ("import sys, froq.core.runner, froq.core.stage, face_recognition_model.loading\n"
             f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {rooms!r})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    assert "froq.core.runner" in loaded
    roof = [m for m in loaded if room_of(m) == "froq" and m != "froq"]
    assert not roof, f"importing the ground floor loaded the roof: {roof}"
