"""Persist the adapter registry so registrations survive a restart (atomic JSON file)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("loraserve.state")
STATE_VERSION = 1


class StateStore:
    """``{"version": 1, "models": {name: {"adapters": [...], "removed_startup": [...]}}}``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {"version": STATE_VERSION, "models": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable state file %s: %s", self.path, exc)
            return {"version": STATE_VERSION, "models": {}}
        data.setdefault("models", {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Write to a temporary file in the same directory, then rename over the old one."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({**data, "version": STATE_VERSION}, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only model store must not stop serving
            log.warning("cannot persist adapter state to %s: %s", self.path, exc)
