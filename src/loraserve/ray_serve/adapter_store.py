"""The application-wide adapter registry: one JSON file that the ingress writes and every
replica reads, so a registration reaches all replicas and survives any of them restarting.

Why a file and not a registry actor: the state must outlive every process anyway (an actor
would need this persistence behind it), ``loraserve serve`` already persists adapters this way
(the one schema of ``adapters.saved``, so one state directory serves both), and
readers pay one ``stat`` per look-up. Writers take an ``flock`` around read-modify-write, so
several ingress replicas cannot lose each other's updates. On several nodes the directory is a
shared file system (NFS, EFS, a CSI volume).

Each register/update takes the next ``revision`` of the model (never reused, unlike the
per-adapter ``version`` DJL reports), so a replica holding an older revision knows to reload.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraserve.adapters.saved import removed_startup
from loraserve.serving.state_store import StateStore


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """One registration as a replica needs it: where to read it and which revision it is."""

    name: str
    path: str
    revision: int
    pin: bool = False

    @classmethod
    def of(cls, entry: dict[str, Any]) -> AdapterRef:
        return cls(
            entry["name"],
            entry.get("path") or entry["src"],
            int(entry.get("revision", 0)),
            bool(entry.get("pin", False)),
        )


class SharedAdapterStore:
    """The adapters of one model in ``state_file``; cached until the file changes."""

    def __init__(self, state_file: Path, model: str) -> None:
        self.file = StateStore(state_file)
        self.lock_path = state_file.with_suffix(".lock")
        self.model = model
        self.generation = 0  # bumped whenever another read of the file was needed
        self._stamp: object = object()  # never equal to a file's stamp: the first read loads
        self._data: dict[str, Any] = {"models": {}}

    def _read(self) -> dict[str, Any]:
        path = self.file.path
        assert path is not None
        try:
            info = os.stat(path)
            stamp: tuple[int, ...] = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = ()
        if stamp != self._stamp:
            self._data, self._stamp = self.file.load(), stamp
            self.generation += 1
        return self._data

    def _section(self, data: dict[str, Any]) -> dict[str, Any]:
        return data["models"].setdefault(self.model, {"adapters": []})

    def entries(self) -> dict[str, dict[str, Any]]:
        """Registered adapters by name, as last written by any process."""
        return {e["name"]: e for e in self._section(self._read()).get("adapters", [])}

    def refs(self) -> dict[str, AdapterRef]:
        return {name: AdapterRef.of(e) for name, e in self.entries().items()}

    def removed_startup(self) -> set[str]:
        return removed_startup(self._section(self._read()))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock; the change is saved atomically."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._stamp = object()
                data = self._read()
                yield data
                self.file.save(data)
                self._stamp = object()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Add or replace ``entry["name"]`` under the model's next revision; returns it."""
        with self._locked() as data:
            section = self._section(data)
            section["revision"] = section.get("revision", 0) + 1
            entry = {**entry, "revision": section["revision"]}
            adapters = [e for e in section.get("adapters", []) if e["name"] != entry["name"]]
            section["adapters"] = [*adapters, entry]
            section["removed_startup"] = sorted(set(section.get("removed_startup", [])) - {entry["name"]})
        return entry

    def remove(self, name: str) -> dict[str, Any] | None:
        """Drop ``name``; a start-up adapter is remembered as removed so a restart keeps it gone."""
        with self._locked() as data:
            section = self._section(data)
            adapters = section.get("adapters", [])
            gone = next((e for e in adapters if e["name"] == name), None)
            section["adapters"] = [e for e in adapters if e["name"] != name]
            if gone is not None and gone.get("origin") == "startup":
                section["removed_startup"] = sorted({*section.get("removed_startup", []), name})
        return gone
