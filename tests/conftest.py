"""Shared fixtures: a model store with the adapter echo model, and a running server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


TIERS = ("unit", "integration", "e2e")  # tests/<tier>/...: each folder is its marker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tier its folder names, so ``-m unit`` selects by where a test
    lives and no module repeats it (``tests/djl`` marks its own, in its conftest)."""
    tests = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(tests).parts if tests in item.path.parents else ()
        if parts and parts[0] in TIERS:
            item.add_marker(parts[0])


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
