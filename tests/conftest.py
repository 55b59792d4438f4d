"""Shared fixtures: a model store with the adapter echo model, and a running server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def server_log(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


@pytest.fixture(scope="session", autouse=True)
def native_kernels_built() -> None:
    """Compile the native CPU kernels once, before any server starts: a server's worker then
    loads the cached build instead of compiling it (minutes on a loaded 2-core machine) under
    its readiness deadline. Where they cannot build, the servers use the PyTorch path anyway."""
    from loraserve.model.native import cpu_kernels

    cpu_kernels()
