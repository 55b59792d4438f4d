"""The persisted adapter state: a save is durable or refused (507), a damaged file is kept."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

from loraserve.errors import InsufficientStorageError
from loraserve.serving.state_store import StateStore
from loraserve.testing.disk import fill_up, mounted_tmpfs

STATE = {"models": {"echo": {"adapters": [{"name": "kept", "src": "/x"}], "removed_startup": []}}}


@pytest.fixture
def full_disk(tmp_path: Path):
    """A real 64 KiB tmpfs: fill_up() makes writes in it fail with ENOSPC."""
    with mounted_tmpfs(tmp_path / "small", "64k") as mount:
        yield mount


def test_save_on_a_full_disk_refuses_and_keeps_the_old_file(full_disk: Path):
    store = StateStore(full_disk / "state.json")
    store.save(STATE)
    fill_up(full_disk)
    bigger = {"models": {f"m{i}": {"adapters": [{"name": "a" * 100}]} for i in range(100)}}
    with pytest.raises(InsufficientStorageError) as raised:
        store.save(bigger)
    assert raised.value.status_code == 507 and "state.json" in raised.value.message
    assert store.load()["models"] == STATE["models"]
    assert [p.name for p in full_disk.iterdir() if p.name.startswith(".state-")] == []


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_an_io_error_anywhere_refuses_and_leaves_no_temp_file(tmp_path: Path, monkeypatch, failing):
    store = StateStore(tmp_path / "state.json")
    store.save(STATE)

    def broken(*_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(InsufficientStorageError):
        store.save({"models": {}})
    monkeypatch.undo()
    assert store.load()["models"] == STATE["models"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_damaged_file_is_moved_aside_not_overwritten(tmp_path: Path, caplog):
    path = tmp_path / "state.json"
    whole = json.dumps(STATE)
    path.write_text(whole[: len(whole) // 2])
    store = StateStore(path)
    with caplog.at_level(logging.ERROR, logger="loraserve.state"):
        assert store.load()["models"] == {}
    aside = list(tmp_path.glob("state.json.damaged-*"))
    assert len(aside) == 1 and aside[0].read_text() == whole[: len(whole) // 2]
    assert any(r.levelno == logging.ERROR and "damaged" in r.message for r in caplog.records)
    store.save({"models": {}})  # the next save writes a new file; the damaged one stays
    assert aside[0].read_text() == whole[: len(whole) // 2]


def test_a_file_that_is_not_an_object_counts_as_damaged(tmp_path: Path):
    path = tmp_path / "state.json"
    path.write_text("[1, 2]")
    assert StateStore(path).load()["models"] == {}
    assert len(list(tmp_path.glob("state.json.damaged-*"))) == 1
