"""Import the handler ``handler_kind.resolve_handler`` chose for a model directory."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from loraserve.errors import ConfigError


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
