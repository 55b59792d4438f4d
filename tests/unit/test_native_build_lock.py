"""A build killed mid-compile must not wedge later starts (torch waits forever on its lock file)."""

from __future__ import annotations

import pytest

from loraserve.model import native

pytestmark = pytest.mark.unit


def test_a_lock_left_by_a_killed_build_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = tmp_path / "loraserve_cpu_kernels_test"
    folder.mkdir()
    (folder / "lock").touch()  # what a SIGKILLed compile leaves behind
    with native._build_lock("loraserve_cpu_kernels_test"):
        assert not (folder / "lock").exists()


def test_builds_without_a_stale_lock_go_ahead(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with native._build_lock("loraserve_cpu_kernels_test"):
        assert (tmp_path / "loraserve_cpu_kernels_test").is_dir()
