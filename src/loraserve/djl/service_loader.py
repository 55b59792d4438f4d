"""DJL's ``service_loader``: import a ``model.py`` (or a module) and call its functions."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any


class ModelService:
    """A loaded handler module; every call sees ``model_dir`` in its properties, as in DJL."""

    def __init__(self, module: ModuleType, model_dir: str | None) -> None:
        self.module = module
        self.model_dir = model_dir

    def invoke_handler(self, function_name: str, inputs: Any) -> Any:
        inputs.properties["model_dir"] = self.model_dir
        return getattr(self.module, function_name)(inputs)

    async def invoke_handler_async(self, function_name: str, inputs: Any) -> Any:
        inputs.properties["model_dir"] = self.model_dir
        return await getattr(self.module, function_name)(inputs)


def _import_file(path: str, namespace: str | None) -> ModuleType:
    """Import a file under a name of its own, so two models' ``model.py`` never collide."""
    if not os.path.exists(path):
        raise ValueError(f"entry-point file not found {path}.")
    if namespace:
        name = "ns_" + namespace.replace("-", "_").replace(".", "_")
    else:
        name = "model_" + hashlib.md5(path.encode(), usedforsecurity=False).hexdigest()[:8]
    return import_as(path, name)


def import_as(path: str, name: str) -> ModuleType:
    """Execute ``path`` as module ``name``; a failed import leaves nothing in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"Unable to load entry_point {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_model_service(
    model_dir: str, entry_point: str, device_id: Any, namespace: str | None = None
) -> ModelService:
    """``entry_point``: an absolute file, a file in ``model_dir`` or an importable module."""
    if os.path.isabs(entry_point):
        module = _import_file(entry_point, namespace)
    elif entry_point.endswith(".py"):
        module = _import_file(os.path.join(model_dir, entry_point), namespace)
    else:
        module = importlib.import_module(entry_point)
    return ModelService(module, model_dir)


def has_function_in_module(module: ModuleType, function_name: str) -> bool:
    return callable(getattr(module, function_name, None))
