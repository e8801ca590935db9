"""FROQ end to end, the orchestrator behind ``./run.sh``: (align photos) → (build a calibration set)
→ pseudo-labels → observer → qualities.

    ./run.sh --photos DIR [options]              # = python -m froq.pipeline --photos DIR [options]

``main(argv)`` parses run.sh's options (``HELP``), resolves the user's relative paths against the
current folder and then works in the repository root (the stage configs and the FR configs are
named relative to it), as run.sh always did:

1. ``choose_fr_config``: AdaFace IR-101 when its weights exist, else dlib's ResNet (said in one
   line); ``fr_info`` gives the architecture and input size; ``fr_template_name`` the alignment
   template and ``baselineFIQA.perturbations.default_mpx`` the occlusion cell.
2. ``--photos``: aligned with ``preparation.align``, split by identity with
   ``preparation.split.split_aligned`` (``calibration_ids_beside`` finds a ``calibration_pool.txt``
   beside the photos), calibration sources capped at 1,000 and degraded with
   ``preparation.calibration``; a given ``--calibration`` folder is capped only with
   ``--max-calibration`` (``preparation.split.subsample_folder``).
3. The three stages, called in this process through their ``main(argv)`` with ``--set`` overrides
   (``stage_argv``).
4. ``evaluate_step``: with ``--pairs FILE`` or a ``pairs.txt`` in or beside the photos, the EDC
   evaluation of the qualities (``froq.pairs_evaluation``), its table printed.
5. ``pictures_step``: contact sheet, layer-utility plot and the one-page ``report.html``
   (``froq.report``, ``observer.figures``).
6. ``write_summary``: ``summary.json`` and the printed summary (``summary_lines``).

Every step prints ``== step``; the first failing step prints its own ``error: ...`` line, then
``run.sh: stopped: ...``, and the run exits with the step's code (2 for a user error). Problems with
the options print one ``run.sh: ...`` line and exit with 2. Heavy modules (torch, the stages) are
imported only when needed, so ``-h`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from froq.core.cli import add_config_options, apply_config, run_main
from froq.core.errors import FroqError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FR = "configs/fr/adaface_ir101.yaml"
FALLBACK_FR = "configs/fr/dlib_resnet.yaml"
DEFAULT_OUT = "outputs"
DEFAULT_CALIBRATION = "calibration_dataset"
DEFAULT_CAP = 1000           # calibration sources built from --photos without --max-calibration:
                             # measured (docs/results.md#calibration-size): the layer selection on LFW
                             # with dlib is reproducible from ~1,000 images, not from 300
POOL_FILE = "calibration_pool.txt"
STAGE_CONFIGS = {"labels": "configs/baseline.yaml", "init": "configs/init.yaml",
                 "inference": "configs/inference.yaml"}

HELP = """\
FROQ end to end: (align photos) -> (build a calibration set) -> pseudo-labels -> observer -> qualities.

Usage: ./run.sh [--photos DIR] [--calibration DIR] [--target DIR] [options]

  --photos DIR          raw photos (one folder per person, or flat). They are aligned for the FR
                        model (preparation/align.py, to the template of the FR config's 'alignment':
                        dlib150, arcface112, sphereface96x112, ...) and split by identity into
                        calibration sources and targets (scored under the photos' own names, with a
                        flag; photos without a face get the lowest quality):
                        the identities listed in --calibration-ids (default: a calibration_pool.txt
                        beside DIR, as in ../shared/data/lfw) go to calibration, the rest are scored;
                        without a list, every --every-th identity folder (sorted by name, starting with
                        the first) goes to calibration, or every --every-th image when DIR is flat.
                        With --calibration, all photos are targets; with --target, all are calibration.
  --calibration DIR     aligned calibration faces (used as they are; no building)
  --target DIR          aligned faces to score (default: the photos' target split, else the
                        calibration faces themselves)
  --fr CFG              FR config, a file, a path relative to the repository or a name of configs/fr/ (e.g. sface, dlib_resnet)
                        (default: configs/fr/adaface_ir101.yaml if its weights exist,
                        otherwise configs/fr/dlib_resnet.yaml, which needs no download)
  --out DIR             output folder (default: outputs/ of the repository)
  --device DEV          auto | cpu | cuda | cuda:N (default: auto)
  --max-calibration N   at most N calibration source images, evenly spaced over the sorted list
                        (default 1000 when the set is built from --photos: smaller sets gave
                        other layer selections on LFW; all of a given --calibration folder unless
                        this is set). Labels cost ~76 forward passes per image by the official
                        rule, ~41 with this toolkit's default path (same labels); measured with
                        benchmarks/labels.py, dlib_resnet, one thread on a 2-core Xeon VM at
                        load ~2: 3.3 img/s (1000 images ~5 min; an AVX2 EPYC: 2.4 img/s, ~7 min);
                        AdaFace IR-50 0.2 img/s (~1.4 h; EPYC 0.12, ~2.4 h); a busy machine takes
                        several times longer (docs/method.md#bf16). Finished
                        labels are reused by any later run on the same images, model and settings
                        (cache in ~/.cache/froq/labels, FROQ_CACHE=DIR or off).
  --variants N          degraded variants per calibration source (preparation/calibration.py; default 1)
  --keep-clean          also put the clean sources into the built calibration set
  --seed S              seed of the calibration build and of the stages (default 0)
  --calibration-ids F   file of identity folder names (one a line) that form the calibration split
  --every K             identity split ratio without an ids file (default 4: 1 in 4 to calibration)
  --select central|largest|center   face choice when a photo holds several (default central: near
                        the centre, weighted by size; preparation/align.py). Changing it (or --fallback)
                        for the same --out reuses the detections: only changed crops are made again
  --fallback none|center-box   photos without a detected face: skip (default) or use a central box
  --pairs FILE          LFW-style pairs of the photos to evaluate on (default: a pairs.txt inside or beside
                        --photos, as in ../shared/data/lfw): FROQ vs random and perfect, EDC pAUC table
                        and plot in OUT/evaluation/ (froq/pairs_evaluation.py)
  -c, --config FILE     YAML file of these options (keys = option names, e.g. max-calibration: 500)
  --set KEY=VALUE       one option value, e.g. --set variants=2 (repeatable)
  -h, --help            this help

Without arguments: the calibration set is calibration_dataset/ (if it holds images) and its own
images are scored. After the qualities: OUT/contact_sheet.png (lowest, middle, highest qualities),
OUT/layers.png (every layer's Spearman rho against depth, selected layers marked) and
OUT/report.html (one self-contained page: summary, figures, evaluation). Every stage resumes
from its .partial file when interrupted; the first failing stage stops the run with its message.
Environment: PYTHON (default: ./.venv, set up by install.sh on first use, or the active python
when it already has FROQ's dependencies)."""


class RunError(FroqError):
    """A problem with run.sh's options or inputs: printed as one ``run.sh: ...`` line, exit code 2."""


class Stopped(Exception):
    """A step failed (its message is printed already); ``code`` is the exit code of the run."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


# ---- options ------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse that raises RunError (run.sh's wording) instead of printing usage and exiting."""

    def error(self, message: str):
        m = re.match(r"argument (\S+?)(?:/\S+)?: expected one argument", message)
        if m:
            raise RunError(f"option {m.group(1)} needs a value (see ./run.sh -h)")
        raise RunError(f"{message} (see ./run.sh -h)")


def build_parser() -> argparse.ArgumentParser:
    """run.sh's options (``HELP`` is their description; ``-h`` prints it). Values stay strings:
    ``check_options`` validates them with run.sh's messages."""
    p = _Parser(prog="run.sh", add_help=False, allow_abbrev=False)
    for opt, dest in (("--photos", "photos"), ("--calibration", "calibration"), ("--target", "target"),
                      ("--fr", "fr"), ("--out", "out"), ("--device", "device"),
                      ("--max-calibration", "max_calibration"), ("--variants", "variants"),
                      ("--seed", "seed"), ("--calibration-ids", "calibration_ids"),
                      ("--every", "every"), ("--select", "select"), ("--fallback", "fallback"),
                      ("--pairs", "pairs")):
        p.add_argument(opt, dest=dest, default=None)
    p.add_argument("--keep-clean", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    return add_config_options(p)


@dataclass
class Options:
    """The run's settings after ``check_options`` (paths as the user gave them until
    ``resolve_user_paths``; '' = not given)."""

    photos: str = ""
    calibration: str = ""
    target: str = ""
    fr: str = ""
    out: str = DEFAULT_OUT
    out_set: bool = False
    device: str = "auto"
    max_calibration: int | None = None
    variants: int = 1
    keep_clean: bool = False
    seed: int = 0
    calibration_ids: str = ""
    every: int = 4
    select: str = "central"
    fallback: str = "none"
    pairs: str = ""


def parse_args(argv: Sequence[str] | None) -> Options | None:
    """Command line → checked ``Options``; None when help was asked for. Raises RunError."""
    parser = build_parser()
    apply_config(parser, argv)
    ns, unknown = parser.parse_known_args(argv)
    if ns.help:
        return None
    if unknown:
        raise RunError(f"unknown argument '{unknown[0]}' (see ./run.sh -h)")
    return check_options(ns)


def _whole_number(value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]+", value):
        raise RunError(f"expected a whole number, got '{value}'")
    return int(value)


def check_options(ns: argparse.Namespace) -> Options:
    """Validate the parsed options in run.sh's order and with its messages (paths are checked
    relative to the current folder). Out: ``Options``. Raises RunError."""
    for name, value in vars(ns).items():
        if value == "":
            raise RunError(f"option --{name.replace('_', '-')} needs a value (see ./run.sh -h)")
    numbers = {k: _whole_number(getattr(ns, k), d) for k, d in
               (("max_calibration", None), ("variants", 1), ("seed", 0), ("every", 4))}
    if numbers["max_calibration"] is not None and numbers["max_calibration"] < 3:
        raise RunError("--max-calibration must be at least 3")
    if numbers["every"] < 2:
        raise RunError("--every must be at least 2")
    for opt, value in (("--photos", ns.photos), ("--calibration", ns.calibration), ("--target", ns.target)):
        if value and not os.path.isdir(value):
            raise RunError(f"{opt}: folder not found: {value}")
    if ns.calibration_ids and not os.path.isfile(ns.calibration_ids):
        raise RunError(f"--calibration-ids: file not found: {ns.calibration_ids}")
    if ns.pairs and not os.path.isfile(ns.pairs):
        raise RunError(f"--pairs: file not found: {ns.pairs}")
    if ns.photos and ns.calibration and ns.target:
        raise RunError("--photos is unused when both --calibration and --target are given: drop one of them")
    from preparation.align import FALLBACKS, SELECT_MODES
    for opt, value, allowed in (("--select", ns.select, SELECT_MODES), ("--fallback", ns.fallback, FALLBACKS)):
        if value is not None and value not in allowed:
            raise RunError(f"{opt} must be {' or '.join(allowed)}, got '{value}'")
    return Options(photos=ns.photos or "", calibration=ns.calibration or "", target=ns.target or "",
                   fr=ns.fr or "", out=ns.out or DEFAULT_OUT, out_set=ns.out is not None,
                   device=ns.device or "auto", keep_clean=ns.keep_clean,
                   calibration_ids=ns.calibration_ids or "", select=ns.select or "central",
                   fallback=ns.fallback or "none", pairs=ns.pairs or "", **numbers)


def absolute(path: str, cwd: str) -> str:
    """``path`` made absolute against ``cwd`` (run.sh's ``$PWD/path``); '' and absolute paths as they are."""
    if not path or os.path.isabs(path):
        return path
    return f"{cwd}/{path}"


def resolve_user_paths(opts: Options, cwd: str) -> Options:
    """The user's paths made absolute against ``cwd`` (the caller's folder), since the run itself
    happens in the repository root: the folders and the ids file always; ``--fr`` when it names a
    file there (else it is relative to the repository); ``--out`` when given (the default
    ``outputs`` is the repository's)."""
    opts.photos, opts.calibration, opts.target, opts.calibration_ids, opts.pairs = (
        absolute(p, cwd) for p in (opts.photos, opts.calibration, opts.target, opts.calibration_ids,
                                   opts.pairs))
    if opts.fr and os.path.isfile(os.path.join(cwd, opts.fr)):
        opts.fr = absolute(opts.fr, cwd)
    if opts.out_set:
        opts.out = absolute(opts.out, cwd)
    return opts


@contextlib.contextmanager
def working_folder(path: str | os.PathLike) -> Iterator[None]:
    """Run the body in ``path`` (the repository root) and return to the previous folder after."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ---- FR model -----------------------------------------------------------------------------------

@dataclass
class FRInfo:
    """What the run needs to know of an FR config."""

    arch: str
    size: int            # input side in pixels (the first of [H, W])
    weights_ok: bool     # the weights file exists (or none is needed)


def fr_info(config: str, strict: bool = False) -> FRInfo:
    """Architecture, input size and weights status of an FR config (the configs' own messages:
    FroqError for a bad config, and with ``strict`` also for missing weights)."""
    from face_recognition_model.loading import load_fr_config, resolve_weights

    cfg = load_fr_config(config)
    try:
        resolve_weights(cfg)
        ok = True
    except FroqError:
        if strict:
            raise
        ok = False
    size = cfg["preprocess"]["size"]
    size = size if isinstance(size, int) else size[0]
    return FRInfo(cfg["model"]["arch"], int(size), ok)


def choose_fr_config(fr: str = "") -> str:
    """The FR config of the run: ``fr`` when given (a bare name such as ``sface`` that is no file
    means ``configs/fr/<name>.yaml``); else AdaFace IR-101 (``DEFAULT_FR``) when its weights
    exist, otherwise dlib's ResNet (``FALLBACK_FR``, no download), said in one line."""
    if fr:
        short = f"configs/fr/{fr}.yaml"
        if "/" not in fr and os.sep not in fr and not os.path.isfile(fr) and os.path.isfile(short):
            return short
        return fr
    if fr_info(DEFAULT_FR).weights_ok:
        return DEFAULT_FR
    print(f"AdaFace weights of {DEFAULT_FR} are absent: using dlib's ResNet "
          f"({FALLBACK_FR}, no download needed)", flush=True)
    return FALLBACK_FR


def fr_template_name(config: str) -> str | None:
    """The alignment template of an FR config (its ``alignment`` key, else the one of its input
    size: ``face_recognition_model.templates``), by name; None when there is none."""
    from face_recognition_model.loading import alignment_of, load_fr_config

    template = alignment_of(load_fr_config(config), config)
    return template.name if template else None


# ---- inputs -------------------------------------------------------------------------------------

def has_images(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds at least one image (any problem reads as no)."""
    try:
        from froq.core.images import list_images
        return bool(list_images(folder))
    except Exception:
        return False


def calibration_ids_beside(photos: str) -> str | None:
    """``PHOTOS/../calibration_pool.txt`` when it exists (how ../shared/data/lfw is split)."""
    candidate = f"{photos}/../{POOL_FILE}"
    return candidate if os.path.isfile(candidate) else None


def yaml_quoted(value: str) -> str:
    """A YAML single-quoted scalar, so any path survives ``--set key=value`` parsing."""
    return "'" + value.replace("'", "''") + "'"


def stage_argv(stage: str, common: Sequence[str], **keys: str) -> list[str]:
    """``-c configs/<stage>.yaml`` + the common ``--set`` pairs + one ``--set key=value`` per key
    (``dataset__path`` → ``dataset.path``)."""
    argv = ["-c", STAGE_CONFIGS[stage], *common]
    for key, value in keys.items():
        argv += ["--set", f"{key.replace('__', '.')}={value}"]
    return argv


# ---- steps --------------------------------------------------------------------------------------

def step(name: str, func: Callable[[], object]) -> object:
    """Print ``== name`` and run ``func()`` like a stage command (``froq.core.cli.run_main``: a
    FroqError or OSError becomes its ``error: ...`` line). On failure print which step stopped the
    run and raise ``Stopped`` with the exit code. Out: what ``func`` returned."""
    print(f"== {name}", flush=True)
    box = {}

    def call(_argv):
        box["result"] = func()

    try:
        code = run_main(call, None)
    except SystemExit as exc:  # an argparse error inside a stage
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # a bug rather than a user error: the traceback, as a crashed command would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    if code == 130:  # Ctrl-C: run_main said so already
        raise Stopped(code)
    if code != 0:
        print(f"run.sh: stopped: {name} failed (exit {code}); fix the problem above and run again "
              "(finished work resumes)", file=sys.stderr, flush=True)
        raise Stopped(code)
    return box.get("result")


def stage_step(name: str, main: Callable, argv: Sequence[str]) -> None:
    """A stage command (``main(argv)``) as a ``step``."""
    step(name, lambda: main(list(argv)))


# ---- summary ------------------------------------------------------------------------------------

def write_summary(out: str | os.PathLike, fr_config: str, calibration: str, target: str,
                  extra: dict | None = None) -> dict:
    """Summarise a finished run from ``out``'s ``observer.json``, ``qualities.csv`` and
    ``labels.csv``; write ``out/summary.json`` (atomically). Out: the summary dict: FR config,
    calibration folder and image count, target folder and scored count, selected layers, the
    observer's Spearman with the pseudo-labels (greedy step of the selection) and its bootstrap
    stability, quality min/median/max, output paths, and ``extra`` (evaluation, pictures)."""
    import numpy as np

    from froq.core.io import read_csv, read_json, read_quality_csv, write_json
    from observer.stability import stability_text

    out = Path(out)
    obs = read_json(out / "observer.json")
    q_all = np.array(list(read_quality_csv(out / "qualities.csv").values()))
    flags = [r.get("flag") or "ok" for r in read_csv(out / "qualities.csv", required=("path",))]
    acquired = np.array([f in ("ok", "fallback") for f in flags], dtype=bool)
    q = q_all[acquired] if acquired.any() else q_all   # the range of the faces, not of the failures
    n_labels = len(read_csv(out / "labels.csv", required=("path",)))
    sel = obs["selected_layers"]
    rho = obs["greedy"][len(obs.get("features") or sel) - 1]["spearman"]
    summary = {"fr_config": fr_config, "calibration": calibration, "calibration_images": n_labels,
               "target": target, "target_images": int(len(q_all)),
               "target_flags": {f: flags.count(f) for f in ("ok", "fallback", "no_face", "unreadable")},
               "selected_layers": sel,
               "calibration_spearman": rho,
               "quality": {"min": float(q.min()), "median": float(np.median(q)), "max": float(q.max())},
               "outputs": {"labels": str(out / "labels.csv"), "observer": str(out / "observer.json"),
                           "qualities": str(out / "qualities.csv")}}
    if obs.get("stability"):
        summary["calibration_stability"] = stability_text(obs["stability"], sel)
    summary.update(extra or {})
    write_json(out / "summary.json", summary)
    return summary


def summary_lines(summary: dict, out: str | os.PathLike) -> list[str]:
    """The printed summary of ``write_summary``'s dict (``== summary`` first)."""
    out = Path(out)
    q = summary["quality"]
    lines = ["", "== summary",
             f"FR config:        {summary['fr_config']}",
             f"calibration:      {summary['calibration_images']} images ({summary['calibration']})",
             f"selected layers:  {', '.join(summary['selected_layers'])}",
             f"Spearman (observer vs pseudo-labels, calibration set): {summary['calibration_spearman']:.3f}"]
    if summary.get("calibration_stability"):
        lines.append(f"stability:        {summary['calibration_stability']}")
    failed = {f: n for f, n in (summary.get("target_flags") or {}).items() if f in ("no_face", "unreadable") and n}
    failed_text = ("; " + ", ".join(f"{n} {f} (lowest quality, -1)" for f, n in failed.items())) if failed else ""
    lines += [f"target:           {summary['target_images']} images scored ({summary['target']}); "
              f"quality min/median/max {q['min']:.4g}/{q['median']:.4g}/{q['max']:.4g} (higher = better)"
              + failed_text,
              f"outputs:          {out / 'qualities.csv'} (path,quality,percentile,flag), {out / 'observer.json'}, "
              f"{out / 'labels.csv'}, {out / 'summary.json'}"]
    ev = summary.get("evaluation")
    if ev:
        values = ", ".join(f"{m} {v:.3f}" for m, v in (ev.get("pauc_norm") or {}).items() if v is not None)
        lines.append(f"evaluation:       {ev['benchmark']}, EDC pAUC (normalised; lower = better): "
                     f"{values or 'see the table'}; {ev['table']}")
        if ev.get("undefined"):
            lines.append(f"                  FROQ's pAUC is undefined: {ev['undefined']}")
    pics = summary.get("pictures")
    if pics:
        lines.append(f"pictures:         {', '.join(str(p) for p in pics.values() if p)}")
    return lines


def pair_paucs(results: dict, bench: str, model: str) -> dict:
    """``{method: normalised pAUC}`` of one benchmark and model of ``run_evaluation``'s results
    (primary FMR and discard limit; undefined values left out); {} when the layout is not the
    expected one."""
    import numpy as np

    try:
        values = {m: v.get("pauc_norm") for m, v in results[bench][model].items()}
        return {m: float(v) for m, v in values.items() if v is not None and np.isfinite(float(v))}
    except (KeyError, TypeError, AttributeError, ValueError):
        return {}


def evaluate_step(opts: Options, out: str, fr: str, target: str, aligned: str) -> dict | None:
    """The evaluation at the end of a run (``froq.pairs_evaluation``) when ``--pairs`` is given or
    a ``pairs.txt`` lies in or beside the photos; prints the table. ``aligned`` (the alignment
    folder) when the qualities are named after the photos, else '' (named after ``target``). A pairs file found (not given)
    that does not fit the photos is skipped with a note. Out: the summary's ``evaluation`` entry,
    or None."""
    from froq.pairs_evaluation import evaluate_run, find_pairs_file

    pairs = opts.pairs or find_pairs_file(opts.photos)
    if not pairs:
        return None
    images = opts.photos if aligned else target  # the names of the qualities CSV

    def evaluate():
        try:
            return evaluate_run(out, pairs, images, f"{out}/qualities.csv", fr, opts.device,
                                aligned or None)
        except FroqError as exc:
            if opts.pairs:
                raise
            print(f"{pairs} (found beside the photos) does not fit them: no evaluation ({exc})", flush=True)
            return None

    done = step(f"evaluation on {pairs} -> {out}/evaluation", evaluate)
    if not done:
        return None
    print(Path(done["table"]).read_text(encoding="utf-8"), flush=True)
    paucs = pair_paucs(done["results"], done["benchmark"], done["model"])
    entry = {"benchmark": done["benchmark"], "pairs": pairs, "table": done["table"],
             "edc_plots": done["edc_plots"], "no_face": done["no_face"],
             "without_quality": done["without_quality"], "pauc_norm": paucs}
    if "froq" not in paucs:  # why FROQ's value is undefined (e.g. FNMR(0) = 0 on a few pairs)
        from evaluation.reporting import empty_reason

        entry["undefined"] = empty_reason(done["results"], done["benchmark"], done["model"], "froq")
    return entry


def pictures_step(opts: Options, out: str, target: str, aligned: str, summary: dict,
                  evaluation: dict | None) -> dict:
    """Contact sheet, layer-utility plot and the HTML report of a finished run (``froq.report``,
    ``observer.figures``). Out: the summary's ``pictures`` entry (paths)."""
    from froq.core.io import read_json
    from froq.pairs_evaluation import chip_map
    from froq.report import contact_sheet, read_faces, write_report
    from observer.figures import plot_layer_utilities

    def make() -> dict:
        chips = chip_map(aligned) if aligned and os.path.isfile(f"{aligned}/landmarks.csv") else {}

        def locate(name: str) -> Path | None:
            for candidate in ((Path(aligned) / chips[name]) if name in chips else None,
                              Path(target) / name, Path(opts.photos or target) / name):
                if candidate is not None and candidate.is_file():
                    return candidate
            return None

        faces, left_out = read_faces(f"{out}/qualities.csv", locate)
        sheet, layers_png, report = f"{out}/contact_sheet.png", f"{out}/layers.png", f"{out}/report.html"
        contact_sheet(faces, sheet, title=f"{len(faces)} scored faces: lowest, middle, highest quality"
                      + (f" ({left_out} without a face not shown)" if left_out else ""))
        plot_layer_utilities(read_json(f"{out}/observer.json"), layers_png)
        pictures = {"contact_sheet": sheet, "layers": layers_png, "report": report}
        figures = [("Lowest, middle and highest qualities", sheet),
                   ("Layer utilities against depth (selected layers marked)", layers_png)]
        tables = []
        if evaluation:
            figures += [(f"EDC ({Path(p).stem})", p) for p in evaluation["edc_plots"]]
            tables.append((f"Evaluation on {evaluation['benchmark']}",
                           Path(evaluation["table"]).read_text(encoding="utf-8")))
        write_report(report, {**summary, "pictures": pictures}, figures, tables,
                     title=f"FROQ run: {out}")
        return pictures

    return step("pictures and report", make)


# ---- the run ------------------------------------------------------------------------------------

def run(opts: Options) -> int:
    """The whole run in the current folder (the repository root), paths already resolved.
    Out: 0. Raises RunError, FroqError or Stopped."""
    from baselineFIQA.perturbations import default_mpx
    from froq.core.images import list_images

    fr = choose_fr_config(opts.fr)
    if not os.path.isfile(fr):
        raise RunError(f"--fr: FR config not found: {fr}")
    info = fr_info(fr, strict=True)
    template = fr_template_name(fr)   # the FR config's alignment (else its preprocess size's)
    mpx = default_mpx(info.size)
    print(f"FR model: {info.arch} ({fr}), input {info.size}px", flush=True)

    calib, target, out = opts.calibration, opts.target, opts.out
    if not opts.photos and not calib:
        if os.path.isdir(DEFAULT_CALIBRATION) and has_images(DEFAULT_CALIBRATION):
            calib = DEFAULT_CALIBRATION
        else:
            raise RunError("nothing to calibrate on: pass --photos DIR (a folder of face photos, e.g. "
                           "../shared/data/lfw/images), or --calibration DIR (aligned faces) [--target DIR], "
                           "or put aligned calibration faces into calibration_dataset/ (see ./run.sh -h)")
    os.makedirs(out, exist_ok=True)
    cal_source = ""   # clean aligned calibration sources to build from (photos only)

    if opts.photos:
        from preparation import align
        from preparation.split import split_aligned

        if not template:
            raise RunError(f"no alignment template for {fr} (a {info.size}px model): add 'alignment' to "
                           "the FR config (face_recognition_model/templates.py), or align the photos "
                           "yourself and pass --calibration/--target")
        aligned = f"{out}/aligned/{template}"
        stage_step(f"align photos ({template}) -> {aligned}", align.main,
                   ["--input", opts.photos, "--output", aligned, "--fr", fr,
                    "--select", opts.select, "--fallback", opts.fallback])
        ids = opts.calibration_ids
        if not ids:
            ids = calibration_ids_beside(opts.photos) or ""
            if ids:
                print(f"calibration identities: {ids} (found beside the photos)", flush=True)
        mode = "all-calibration" if target else "all-target" if calib else "split"
        split_dir = f"{out}/split"
        cap = opts.max_calibration or DEFAULT_CAP
        result = step(f"split aligned photos into calibration / target ({split_dir})",
                      lambda: split_aligned(aligned, split_dir, mode, opts.every, ids or None, cap))
        print(result.summary_line(), flush=True)
        if not calib:
            cal_source = f"{split_dir}/calibration"
        if not target:
            target = f"{split_dir}/target"

    if cal_source:
        from preparation.calibration import main as build_main

        calib = f"{out}/calibration"
        stage_step(f"build calibration set ({opts.variants} degraded variant(s) per source) -> {calib}",
                   build_main, ["--source", cal_source, "--output", calib, "--variants", str(opts.variants),
                                "--seed", str(opts.seed), *(["--keep-clean"] if opts.keep_clean else [])])
    elif opts.max_calibration:
        from preparation.split import subsample_folder

        folder, total = subsample_folder(calib, opts.max_calibration, f"{out}/calibration_subset")
        if total > opts.max_calibration:
            print(f"using {opts.max_calibration} of {total} images of {calib} (evenly spaced; "
                  "--max-calibration)", file=sys.stderr, flush=True)
            calib = str(folder)
    if not target:
        target = calib
        print("no --target: scoring the calibration images themselves", flush=True)
    counts = [len(list_images(d)) for d in (calib, target)]
    print(f"calibration: {counts[0]} images in {calib}; target: {counts[1]} images in {target}", flush=True)

    from baselineFIQA.main import main as labels_main
    from froq.score_photos import score_targets
    from observer.initialization import main as init_main

    q = yaml_quoted
    common = ["--set", f"face_recognition_config={q(fr)}", "--set", f"device={q(opts.device)}",
              "--set", f"seed={opts.seed}"]
    labels, observer, qualities = f"{out}/labels.csv", f"{out}/observer.json", f"{out}/qualities.csv"
    stage_step("pseudo-labels (~76 forward passes per image)", labels_main,
               stage_argv("labels", common, dataset__path=q(calib), dataset__image_size=str(info.size),
                          dataset__mpx=str(mpx), outpath=q(labels)))
    stage_step("observer initialisation", init_main,
               stage_argv("init", common, dataset__path=q(calib), label_location=q(labels),
                          outpath=q(observer)))
    # one way to score photos (froq.score_photos): original names, flags, lowest quality for no face
    scored_photos = opts.photos and target == f"{out}/split/target"
    aligned = f"{out}/aligned/{template}" if scored_photos else ""  # qualities named after the photos
    step("FROQ qualities", lambda: score_targets(
        stage_argv("inference", common, target_dataset=q(target), observer_data=q(observer),
                   outpath=q(qualities)),
        aligned=aligned or None, calibration_ids=(ids or None) if scored_photos and mode == "split" else None))

    extra = {}
    evaluation = evaluate_step(opts, out, fr, target, aligned)
    if evaluation:
        extra["evaluation"] = evaluation
    summary = write_summary(out, fr, calib, target, extra)
    extra["pictures"] = pictures_step(opts, out, target, aligned, summary, evaluation)
    summary = write_summary(out, fr, calib, target, extra)
    print("\n".join(summary_lines(summary, out)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """run.sh's command line (``HELP``). Out: the exit code: 0, 2 for a problem with the options,
    the inputs or a step's user error, the step's own code otherwise (130 after Ctrl-C)."""
    try:
        opts = parse_args(argv)
        if opts is None:
            print(HELP)
            return 0
        opts = resolve_user_paths(opts, os.getcwd())
        with working_folder(REPO):
            return run(opts)
    except RunError as exc:
        print(f"run.sh: {exc}", file=sys.stderr)
        return 2
    except FroqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        return exc.code
    except KeyboardInterrupt:
        print("interrupted (finished work is kept; run again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
