#!/usr/bin/env bash
# Create .venv and install mlcompress into it (editable). `./setup.sh --dev` adds the test tools (sacrebleu among
# them, for the seq2seq eval's chrF/BLEU: the dev extra), headless
# Chromium with its driver (Debian packages chromium, chromium-driver) for the web demo's test, when missing, and
# transformers.js (npm, into .cache/node) for the client-layout test.
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
if [ -n "$extras" ]; then
  # FastEmbed for tests/test_client_layout.py, without its huggingface-hub < 2 pin (see pyproject's dev extra)
  "$VPY" -m pip install -q --no-deps "fastembed>=0.9,<0.10" && "$VPY" -m pip install -q loguru mmh3 py-rust-stemmers pillow requests tqdm
  # transformers.js (npm) for tests/test_client_layout.py, which runs it with node on a bundle: pinned, in .cache/node
  # (ignored by git). Install scripts are skipped: onnxruntime-node's fetches CUDA binaries only (its CPU ones ship in
  # the package). Without npm that test skips its transformers.js check.
  if command -v npm >/dev/null 2>&1; then
    mkdir -p .cache/node
    ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix .cache/node --no-audit --no-fund --ignore-scripts --save-exact \
      --silent "@huggingface/transformers@4.3.2" \
      || echo "warning: npm could not install @huggingface/transformers: its test in tests/test_client_layout.py skips" >&2
  else
    echo "warning: no npm here: tests/test_client_layout.py skips its transformers.js check (install Node.js >= 18)" >&2
  fi
fi
echo "mlcompress installed in .venv ($("$VPY" -c 'import mlcompress, torch; print(mlcompress.__version__, "torch", torch.__version__)'))"
