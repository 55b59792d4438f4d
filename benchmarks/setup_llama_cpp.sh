#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp from source, this CPU's ISA) into its own venv
# (benchmarks/.llamacpp-venv) for bench_vs_llama_cpp.py, with llama.cpp's own gguf-py and
# convert_lora_to_gguf.py from the same source tree (the adapter converter the issue names).
# Why a separate venv: its numpy/gguf pins must not change what loraserve's tests import.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${LLAMA_CPP_VENV:-$HERE/.llamacpp-venv}"
PY="${PYTHON:-python3}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# GGML_NATIVE: compile for this machine's ISA (AVX-512/AMX where present), as a user building it would.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$VENV/bin/pip" install --no-binary llama-cpp-python "llama-cpp-python==$VERSION"
# The converter and its gguf package live in the sdist's vendored llama.cpp tree.
SRC="$VENV/src"
if [ ! -d "$SRC/llama.cpp" ]; then
  mkdir -p "$SRC"
  "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$SRC" "llama-cpp-python==$VERSION"
  tar -xzf "$SRC/llama_cpp_python-$VERSION.tar.gz" -C "$SRC"
  mv "$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC/llama.cpp"
  rm -rf "$SRC/llama_cpp_python-$VERSION" "$SRC/llama_cpp_python-$VERSION.tar.gz"
fi
"$VENV/bin/pip" install -q "$SRC/llama.cpp/gguf-py" "torch==2.13.0" safetensors transformers sentencepiece
"$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
