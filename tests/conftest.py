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
