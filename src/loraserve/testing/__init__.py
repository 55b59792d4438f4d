"""Test fakes shipped with loraserve, shared by tests, docs and users' own tests.

``ADAPTECHO_DIR`` is a Python-mode model shaped like DJL's ``adaptecho`` test model: it echoes
its input with the adapter it was called with and records adapter (un)registrations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
ADAPTECHO_DIR = MODELS_DIR / "adaptecho"


def copy_adaptecho(target: Path, properties: str | None = None, adapters: tuple[str, ...] = ()) -> Path:
    """A fresh adaptecho model directory at ``target`` with optional start-up adapters."""
    shutil.copytree(ADAPTECHO_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    if properties is not None:
        (target / "serving.properties").write_text(properties, encoding="utf-8")
    for name in adapters:
        folder = target / "adapters" / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"echo": name}), encoding="utf-8")
    return target
