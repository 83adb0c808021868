#!/usr/bin/env bash
# Create .venv and install mlcompress into it (editable). `./setup.sh --dev` adds the test tools, and headless
# Chromium with its driver (Debian packages chromium, chromium-driver) for the web demo's test, when missing.
# On a machine without an NVIDIA GPU the CPU build of torch is installed first, so that the
# project's torch range is met without pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade "pip>=24" "setuptools>=69" wheel
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VPY" -m pip install -q "torch>=2.4,<3"
  else
    "$VPY" -m pip install -q "torch==2.13.0" || "$VPY" -m pip install -q "torch>=2.4,<3" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
if [ -n "$extras" ] && ! { command -v chromedriver >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; }; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
  else
    echo "warning: install Chromium and chromedriver yourself (no apt-get here): tests/test_web_demo.py needs them" >&2
  fi
fi
"$VPY" -m pip install -q -e ".${extras}"
echo "mlcompress installed in .venv ($("$VPY" -c 'import mlcompress, torch; print(mlcompress.__version__, "torch", torch.__version__)'))"
