"""Persist the adapter registry so registrations survive a restart (durable, atomic JSON file).

A save is durable when it returns: the new content is written to a temporary file in the same
directory, flushed and fsynced, renamed over ``state.json``, and the directory is fsynced so the
rename itself survives a power loss. Any failure (a full disk, an I/O error, a read-only store)
raises ``InsufficientStorageError`` (507) and leaves the previous file as it was, with no
temporary file behind: the caller must not acknowledge the change it was saving.

A damaged ``state.json`` is never overwritten. It is moved aside to
``state.json.damaged-<UTC timestamp>`` and the server starts with empty state, logged as an
ERROR. Starting (rather than refusing to) keeps the models and their start-up adapters
serving; the operator still has every earlier registration in the preserved file. Only when
the damaged file cannot even be moved aside does loading fail, since the next save would
otherwise destroy it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from loraserve.errors import InsufficientStorageError

log = logging.getLogger("loraserve.state")
STATE_VERSION = 1


def _empty() -> dict[str, Any]:
    return {"version": STATE_VERSION, "models": {}}


class StateStore:
    """``{"version": 1, "models": {name: {"adapters": [...], "removed_startup": [...]}}}``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The saved state; empty when there is none, or when the file was damaged (moved aside)."""
        if self.path is None or not self.path.is_file():
            return _empty()
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            self._set_aside(f"it is not valid JSON ({exc})")
            return _empty()
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            self._set_aside("it does not hold a JSON object with a 'models' object")
            return _empty()
        data.setdefault("models", {})
        return data

    def _set_aside(self, reason: str) -> None:
        """Move the damaged file out of the way (never overwrite it) and say so loudly."""
        assert self.path is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        counter = 1
        while target.exists():  # two damaged files in one second: keep both
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{counter}")
            counter += 1
        try:
            os.replace(self.path, target)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise InsufficientStorageError(
                f"adapter state file {self.path} is damaged ({reason}) and cannot be moved aside "
                f"({exc.strerror or exc}); move or repair it, then start again"
            ) from None
        log.error(
            "adapter state file %s is damaged (%s): moved it to %s and started with no "
            "persisted adapters; registrations in it are NOT restored. Repair it and move "
            "it back while the server is stopped to restore them.",
            self.path,
            reason,
            target,
        )

    def save(self, data: dict[str, Any]) -> None:
        """Durably replace the file with ``data``; raises ``InsufficientStorageError`` if it
        cannot, with the old file intact and no temporary file left."""
        if self.path is None:
            return
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({**data, "version": STATE_VERSION}, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            tmp = None
            _fsync_dir(self.path.parent)
        except OSError as exc:
            log.error("cannot persist adapter state to %s: %s", self.path, exc)
            raise InsufficientStorageError(
                f"cannot save the adapter state to {self.path}: {exc.strerror or exc}; nothing was "
                "changed. Free space on (or fix) that file system, or choose another --state-dir"
            ) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the directory entry is data too)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
