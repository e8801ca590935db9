#!/usr/bin/env bash
# FROQ end to end: (align photos) -> (build a calibration set) -> pseudo-labels -> observer -> qualities.
#
# Usage: ./run.sh [--photos DIR] [--calibration DIR] [--target DIR] [options]
#
#   --photos DIR          raw photos (one folder per person, or flat). They are aligned for the FR
#                         model (face_recognition_model/align.py: dlib150 for dlib_resnet, arcface112
#                         for 112-px models) and split by identity into calibration sources and targets:
#                         the identities listed in --calibration-ids (default: a calibration_pool.txt
#                         beside DIR, as in ../shared/data/lfw) go to calibration, the rest are scored;
#                         without a list, every --every-th identity folder (sorted by name, starting with
#                         the first) goes to calibration, or every --every-th image when DIR is flat.
#                         With --calibration, all photos are targets; with --target, all are calibration.
#   --calibration DIR     aligned calibration faces (used as they are; no building)
#   --target DIR          aligned faces to score (default: the photos' target split, else the
#                         calibration faces themselves)
#   --fr CFG              FR config, a file or a path relative to the repository (default: configs/fr/adaface_ir101.yaml if its weights exist,
#                         otherwise configs/fr/dlib_resnet.yaml, which needs no download)
#   --out DIR             output folder (default: outputs/ of the repository)
#   --device DEV          auto | cpu | cuda | cuda:N (default: auto)
#   --max-calibration N   at most N calibration source images, evenly spaced over the sorted list
#                         (default 300 when the set is built from --photos; all of a given
#                         --calibration folder unless this is set). Labels cost ~76 forward passes
#                         per image: for 300 images with dlib_resnet ~2 min on an idle 2-core CPU
#                         (~230 forwards/s), 7 min measured on a busy one.
#   --variants N          degraded variants per calibration source (calibration_dataset/build.py; default 1)
#   --keep-clean          also put the clean sources into the built calibration set
#   --seed S              seed of the calibration build and of the stages (default 0)
#   --calibration-ids F   file of identity folder names (one a line) that form the calibration split
#   --every K             identity split ratio without an ids file (default 4: 1 in 4 to calibration)
#   --select largest|center      face choice when a photo holds several (default largest)
#   --fallback none|center-box   photos without a detected face: skip (default) or use a central box
#   -h, --help            this help
#
# Without arguments: the calibration set is calibration_dataset/ (if it holds images) and its own
# images are scored. Every stage resumes from its .partial file when interrupted; the first failing
# stage stops the run with its message. Environment: PYTHON (default: ./.venv, set up by
# install.sh on first use, or the active python when it already has FROQ's dependencies).
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 2; }

PHOTOS="" CALIB="" TARGET="" FR="" OUT="outputs" DEVICE="auto" MAXCAL="" VARIANTS=1 KEEP_CLEAN=""
SEED=0 IDS="" EVERY=4 SELECT="largest" FALLBACK="none" OUT_SET=""
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value (see ./run.sh -h)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --photos) need "$@"; PHOTOS=$2; shift 2 ;;
    --calibration) need "$@"; CALIB=$2; shift 2 ;;
    --target) need "$@"; TARGET=$2; shift 2 ;;
    --fr) need "$@"; FR=$2; shift 2 ;;
    --out) need "$@"; OUT=$2; OUT_SET=1; shift 2 ;;
    --device) need "$@"; DEVICE=$2; shift 2 ;;
    --max-calibration) need "$@"; MAXCAL=$2; shift 2 ;;
    --variants) need "$@"; VARIANTS=$2; shift 2 ;;
    --keep-clean) KEEP_CLEAN="--keep-clean"; shift ;;
    --seed) need "$@"; SEED=$2; shift 2 ;;
    --calibration-ids) need "$@"; IDS=$2; shift 2 ;;
    --every) need "$@"; EVERY=$2; shift 2 ;;
    --select) need "$@"; SELECT=$2; shift 2 ;;
    --fallback) need "$@"; FALLBACK=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see ./run.sh -h)" ;;
  esac
done
for n in "$MAXCAL" "$VARIANTS" "$SEED" "$EVERY"; do
  [ -z "$n" ] || [[ "$n" =~ ^[0-9]+$ ]] || die "expected a whole number, got '$n'"
done
[ -z "$MAXCAL" ] || [ "$MAXCAL" -ge 3 ] || die "--max-calibration must be at least 3"
[ "$EVERY" -ge 2 ] || die "--every must be at least 2"
[ -z "$PHOTOS" ] || [ -d "$PHOTOS" ] || die "--photos: folder not found: $PHOTOS"
[ -z "$CALIB" ] || [ -d "$CALIB" ] || die "--calibration: folder not found: $CALIB"
[ -z "$TARGET" ] || [ -d "$TARGET" ] || die "--target: folder not found: $TARGET"
[ -z "$IDS" ] || [ -f "$IDS" ] || die "--calibration-ids: file not found: $IDS"
if [ -n "$PHOTOS" ] && [ -n "$CALIB" ] && [ -n "$TARGET" ]; then
  die "--photos is unused when both --calibration and --target are given: drop one of them"
fi
# user paths are taken relative to the current folder; the run itself happens in the repo root
abs() { if [ -z "$1" ] || [[ "$1" = /* ]]; then printf '%s' "$1"; else printf '%s' "$PWD/$1"; fi; }
PHOTOS=$(abs "$PHOTOS") CALIB=$(abs "$CALIB") TARGET=$(abs "$TARGET") IDS=$(abs "$IDS")
[ -z "$FR" ] || [ ! -f "$FR" ] || FR=$(abs "$FR")
[ "$OUT" = outputs ] && [ "$OUT_SET" = "" ] || OUT=$(abs "$OUT")
cd "$REPO"
# the interpreter: $PYTHON if set; else the repo's .venv (set up by install.sh on first use) unless
# the active python already has FROQ's dependencies
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then
    bash "$REPO/install.sh"  # no-op when up to date
    PYTHON="$REPO/.venv/bin/python"
  elif command -v python >/dev/null && python -c "import torch, scipy, yaml, dlib, froq" 2>/dev/null; then
    PYTHON=python
  else
    bash "$REPO/install.sh"
    PYTHON="$REPO/.venv/bin/python"
  fi
fi
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found: activate the project's venv or set PYTHON=/path/to/python"

# YAML single-quoted scalar, so any path survives --set key=value parsing
q() { printf "'%s'" "${1//\'/\'\'}"; }

# Run one step; on failure name it and stop (the step has printed its own 'error: ...' line).
step() {
  local name=$1; shift
  echo "== $name"
  local rc=0
  "$@" || rc=$?
  if [ $rc -ne 0 ]; then
    echo "run.sh: stopped: $name failed (exit $rc); fix the problem above and run again (finished work resumes)" >&2
    exit $rc
  fi
}

# Python helpers (the repo's own readers, so error messages are the stages' ones)
py_has_images() {  # DIR -> exit 0 when it holds at least one image
  "$PYTHON" - "$1" <<'PY' 2>/dev/null
import sys
from froq.core.images import list_images
sys.exit(0 if list_images(sys.argv[1]) else 1)
PY
}

# ---- FR model -------------------------------------------------------------------------------------
fr_info() {  # CFG [strict] -> "arch size weights_status" (strict: missing weights is an error)
  "$PYTHON" - "$@" <<'PY'
import sys
from froq.core.errors import FroqError
from face_recognition_model.loading import load_fr_config, resolve_weights
try:
    cfg = load_fr_config(sys.argv[1])
except FroqError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
try:
    resolve_weights(cfg)
    status = "ok"
except FroqError as exc:
    if len(sys.argv) > 2:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    status = "missing"
size = cfg["preprocess"]["size"]
size = size if isinstance(size, int) else size[0]
print(cfg["model"]["arch"], size, status)
PY
}

if [ -z "$FR" ]; then
  FR=configs/fr/adaface_ir101.yaml
  read -r _ _ status < <(fr_info "$FR") || exit 2
  if [ "$status" != ok ]; then
    echo "AdaFace weights of $FR are absent: using dlib's ResNet (configs/fr/dlib_resnet.yaml, no download needed)"
    FR=configs/fr/dlib_resnet.yaml
  fi
fi
[ -f "$FR" ] || die "--fr: FR config not found: $FR"
INFO=$(fr_info "$FR" strict) || exit 2
read -r ARCH SIZE _ <<< "$INFO"
case "$SIZE" in
  150) TEMPLATE=dlib150 ;;
  112) TEMPLATE=arcface112 ;;
  *) TEMPLATE="" ;;
esac
MPX=$(( (SIZE + 4) / 8 ))   # occlusion cell: an 8x8 grid as the paper's 14 px on 112 px (19 px on 150)
echo "FR model: $ARCH ($FR), input ${SIZE}px"

# ---- inputs ---------------------------------------------------------------------------------------
if [ -z "$PHOTOS" ] && [ -z "$CALIB" ]; then
  if [ -d calibration_dataset ] && py_has_images calibration_dataset; then
    CALIB=calibration_dataset
  else
    die "nothing to calibrate on: pass --photos DIR (a folder of face photos, e.g. ../shared/data/lfw/images), or --calibration DIR (aligned faces) [--target DIR], or put aligned calibration faces into calibration_dataset/ (see ./run.sh -h)"
  fi
fi
mkdir -p "$OUT"
CAL_SOURCE=""   # clean aligned calibration sources to build from (photos only)

if [ -n "$PHOTOS" ]; then
  [ -n "$TEMPLATE" ] || die "no alignment template for a ${SIZE}px model: align the photos yourself and pass --calibration/--target"
  ALIGNED="$OUT/aligned/$TEMPLATE"
  step "align photos ($TEMPLATE) -> $ALIGNED" \
    "$PYTHON" face_recognition_model/align.py --input "$PHOTOS" --output "$ALIGNED" --template "$TEMPLATE" \
      --select "$SELECT" --fallback "$FALLBACK"
  if [ -z "$IDS" ] && [ -f "$PHOTOS/../calibration_pool.txt" ]; then
    IDS="$PHOTOS/../calibration_pool.txt"
    echo "calibration identities: $IDS (found beside the photos)"
  fi
  MODE=split
  [ -z "$CALIB" ] || MODE=all-target
  [ -z "$TARGET" ] || MODE=all-calibration
  SPLIT="$OUT/split"
  step "split aligned photos into calibration / target ($SPLIT)" \
    "$PYTHON" - "$ALIGNED" "$SPLIT" "$MODE" "$EVERY" "$IDS" "${MAXCAL:-300}" <<'PY'
"""Symlink the aligned photos into SPLIT/calibration (at most MAX, evenly spaced) and SPLIT/target."""
import os, shutil, sys
from pathlib import Path, PurePosixPath
from froq.core.errors import FroqError
from froq.core.images import list_images

aligned, split, mode, every, ids = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
cap = int(sys.argv[6])
try:
    rels = list_images(aligned)
except FroqError as exc:
    print(f"error: no aligned face to use: {exc} (no face found in the photos?)", file=sys.stderr)
    sys.exit(2)
ident = lambda r: PurePosixPath(r).parts[0] if len(PurePosixPath(r).parts) > 1 else ""
names = sorted({ident(r) for r in rels})
if mode == "all-target":
    calib = set()
    rule = "all photos are targets (--calibration given)"
elif mode == "all-calibration":
    calib = set(rels)
    rule = "all photos are calibration sources (--target given)"
elif ids:
    wanted = {line.strip() for line in open(ids, encoding="utf-8") if line.strip()}
    calib = {r for r in rels if ident(r) in wanted}
    rule = f"identities listed in {ids}"
elif len([n for n in names if n]) >= 2:
    chosen = {n for i, n in enumerate(names) if i % every == 0}
    calib = {r for r in rels if ident(r) in chosen}
    rule = f"1 in {every} identity folders (sorted by name) to calibration"
else:
    calib = {r for i, r in enumerate(rels) if i % every == 0}
    rule = f"1 in {every} images (sorted) to calibration"
pool = [r for r in rels if r in calib]
kept = set(pool) if len(pool) <= cap else {pool[(i * len(pool)) // cap] for i in range(cap)}
for part in ("calibration", "target"):
    if (split / part).exists():
        shutil.rmtree(split / part)
n = {"calibration": 0, "target": 0}
for r in rels:
    if r in calib and r not in kept:
        continue  # over the --max-calibration cap: neither calibrated on nor scored
    part = "calibration" if r in calib else "target"
    dst = split / part / r
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink((aligned / r).resolve(), dst)
    n[part] += 1
if mode == "split" and (n["calibration"] < 3 or n["target"] == 0):
    print(f"error: splitting {aligned} ({rule}) gives {n['calibration']} calibration and "
          f"{n['target']} target images: pass more photos, --calibration-ids or --every", file=sys.stderr)
    sys.exit(2)
capped = f" ({cap} of {len(pool)}, evenly spaced: --max-calibration)" if len(pool) > cap else ""
print(f"split ({rule}): {n['calibration']} calibration sources{capped}, {n['target']} targets")
PY
  if [ -z "$CALIB" ]; then CAL_SOURCE="$SPLIT/calibration"; fi
  if [ -z "$TARGET" ]; then TARGET="$SPLIT/target"; fi
fi

# subsample DIR N DST -> prints the folder to use (DIR itself when it has <= N images)
subsample() {
  "$PYTHON" - "$1" "$2" "$3" <<'PY'
import os, shutil, sys
from pathlib import Path
from froq.core.images import list_images
src, n, dst = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rels = list_images(src)
if len(rels) <= n:
    print(src)
    sys.exit(0)
pick = [rels[(i * len(rels)) // n] for i in range(n)]
if dst.exists():
    shutil.rmtree(dst)
for r in pick:
    (dst / r).parent.mkdir(parents=True, exist_ok=True)
    os.symlink((src / r).resolve(), dst / r)
print(f"using {n} of {len(rels)} images of {src} (evenly spaced; --max-calibration)", file=sys.stderr)
print(dst)
PY
}

if [ -n "$CAL_SOURCE" ]; then
  CALIB="$OUT/calibration"
  step "build calibration set ($VARIANTS degraded variant(s) per source) -> $CALIB" \
    "$PYTHON" calibration_dataset/build.py --source "$CAL_SOURCE" --output "$CALIB" \
      --variants "$VARIANTS" --seed "$SEED" $KEEP_CLEAN
elif [ -n "$MAXCAL" ]; then
  CALIB=$(subsample "$CALIB" "$MAXCAL" "$OUT/calibration_subset") || exit 2
fi
if [ -z "$TARGET" ]; then
  TARGET="$CALIB"
  echo "no --target: scoring the calibration images themselves"
fi
"$PYTHON" - "$CALIB" "$TARGET" <<'PY' || exit 2
import sys
from froq.core.errors import FroqError
from froq.core.images import list_images
try:
    n = [len(list_images(d)) for d in sys.argv[1:]]
except FroqError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
print(f"calibration: {n[0]} images in {sys.argv[1]}; target: {n[1]} images in {sys.argv[2]}")
PY

# ---- the three stages -----------------------------------------------------------------------------
COMMON=(--set "face_recognition_config=$(q "$FR")" --set "device=$(q "$DEVICE")" --set "seed=$SEED")
step "pseudo-labels (~76 forward passes per image)" \
  "$PYTHON" baselineFIQA/main.py -c configs/baseline.yaml "${COMMON[@]}" \
    --set "dataset.path=$(q "$CALIB")" --set "dataset.image_size=$SIZE" --set "dataset.mpx=$MPX" \
    --set "outpath=$(q "$OUT/labels.csv")"
step "observer initialisation" \
  "$PYTHON" observer/initialization.py -c configs/init.yaml "${COMMON[@]}" \
    --set "dataset.path=$(q "$CALIB")" --set "label_location=$(q "$OUT/labels.csv")" \
    --set "outpath=$(q "$OUT/observer.json")"
step "FROQ qualities" \
  "$PYTHON" observer/inference.py -c configs/inference.yaml "${COMMON[@]}" \
    --set "target_dataset=$(q "$TARGET")" --set "observer_data=$(q "$OUT/observer.json")" \
    --set "outpath=$(q "$OUT/qualities.csv")"

# ---- summary --------------------------------------------------------------------------------------
"$PYTHON" - "$OUT" "$FR" "$CALIB" "$TARGET" <<'PY'
import csv, sys
from pathlib import Path
import numpy as np
from froq.core.io import read_json, write_json
out, fr, calib, target = Path(sys.argv[1]), *sys.argv[2:]
obs = read_json(out / "observer.json")
with open(out / "qualities.csv", newline="") as fh:
    q = np.array([float(r["quality"]) for r in csv.DictReader(fh)])
with open(out / "labels.csv", newline="") as fh:
    n_labels = sum(1 for _ in csv.DictReader(fh))
sel = obs["selected_layers"]
rho = obs["greedy"][len(sel) - 1]["spearman"]
summary = {"fr_config": fr, "calibration": calib, "calibration_images": n_labels,
           "target": target, "target_images": int(len(q)), "selected_layers": sel,
           "calibration_spearman": rho,
           "quality": {"min": float(q.min()), "median": float(np.median(q)), "max": float(q.max())},
           "outputs": {"labels": str(out / "labels.csv"), "observer": str(out / "observer.json"),
                       "qualities": str(out / "qualities.csv")}}
write_json(out / "summary.json", summary)
print("\n== summary")
print(f"FR config:        {fr}")
print(f"calibration:      {n_labels} images ({calib})")
print(f"selected layers:  {', '.join(sel)}")
print(f"Spearman (observer vs pseudo-labels, calibration set): {rho:.3f}")
print(f"target:           {len(q)} images scored ({target}); quality min/median/max "
      f"{q.min():.4g}/{np.median(q):.4g}/{q.max():.4g} (higher = better)")
print(f"outputs:          {out / 'qualities.csv'} (path,quality), {out / 'observer.json'}, "
      f"{out / 'labels.csv'}, {out / 'summary.json'}")
PY
