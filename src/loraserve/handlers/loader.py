"""Find and import the handler of a model directory: its ``model.py`` (or ``option.entryPoint``),
else the built-in LLM handler when ``option.model_id`` is set."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from loraserve.config import ModelConfig
from loraserve.errors import ConfigError

BUILTIN_HANDLER = "loraserve.handlers.builtin_llm"
# DJL's own handler names that our built-in engine stands in for.
BUILTIN_ALIASES = {
    "djl_python.huggingface",
    "djl_python.lmi_vllm.vllm_async_service",
    "djl_python.rolling_batch",
    "builtin",
    BUILTIN_HANDLER,
}


def resolve_entry_point(model_dir: Path, config: ModelConfig) -> str:
    """Return a file path or module name to import; raises when there is none."""
    entry = config.entry_point
    if entry in BUILTIN_ALIASES:
        return BUILTIN_HANDLER
    if entry:
        candidate = model_dir / entry
        if candidate.is_file():
            return str(candidate)
        if entry.endswith(".py"):
            raise ConfigError(f"option.entryPoint={entry} does not exist in {model_dir}")
        return entry
    if (model_dir / "model.py").is_file():
        return str(model_dir / "model.py")
    if "model_id" in config.options:
        return BUILTIN_HANDLER
    raise ConfigError(
        f"{model_dir} has no model.py and serving.properties sets no option.model_id; "
        "add a model.py with handle(inputs) or name a model with option.model_id"
    )


def import_handler(model_dir: Path, entry: str) -> ModuleType:
    """Import the entry point with the model directory on ``sys.path`` (DJL does the same)."""
    sys.path.insert(0, str(model_dir))
    if not entry.endswith(".py"):
        return importlib.import_module(entry)
    spec = importlib.util.spec_from_file_location("model", entry)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {entry}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "handle", None)):
        raise ConfigError(f"{entry} defines no handle(inputs) function")
    return module
