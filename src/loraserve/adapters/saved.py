"""The one schema of a registration in ``state.json``, written and read by ``loraserve serve``
(``ModelManager.persist`` and its restore) and the Ray ingress (``SharedAdapterStore``) alike,
so one state directory serves both::

    {"version": 1, "models": {"<model>": {"adapters": [<entry>, ...],
                                          "removed_startup": ["<name>", ...]}}}

An entry is what re-registers the adapter: ``name``, ``src``, ``preload``, ``pin``, ``options``,
plus ``path`` (where the server resolved ``src``), ``origin``, ``version`` and ``registered_at``.
Ray's store adds a ``revision`` per entry and per model (its replicas' reload counter).
"""

from __future__ import annotations

import time
from typing import Any

from loraserve.adapters.registry import AdapterOrigin, AdapterRecord, AdapterState


def entry_of(record: AdapterRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "src": record.src,
        "path": record.path,
        "preload": record.preload,
        "pin": record.pin,
        "options": dict(record.options),
        "origin": record.origin.value,
        "version": record.version,
        "registered_at": record.registered_at,
    }


def record_of(entry: dict[str, Any]) -> AdapterRecord:
    """A saved entry as a ready record (files written before ``path``/``origin`` existed load too)."""
    return AdapterRecord(
        name=entry["name"],
        src=entry["src"],
        path=entry.get("path") or entry["src"],
        preload=entry.get("preload", True),
        pin=entry.get("pin", False),
        options=dict(entry.get("options", {})),
        origin=AdapterOrigin(entry.get("origin", "api")),
        state=AdapterState.READY,
        version=int(entry.get("version", 1)),
        registered_at=float(entry.get("registered_at", time.time())),
    )


def saved_records(section: dict[str, Any]) -> list[AdapterRecord]:
    """The registrations a model's section holds, in the order they were saved."""
    return [record_of(entry) for entry in section.get("adapters", [])]


def removed_startup(section: dict[str, Any]) -> set[str]:
    """Start-up adapters (the model's ``adapters/`` folders) a client deleted: kept gone."""
    return set(section.get("removed_startup", []))
