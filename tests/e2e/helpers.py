"""Helpers for end-to-end tests: model stores built in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

from loraserve.testing import copy_adaptecho


def make_store(root: Path, properties: str | None = None,
               adapters: tuple[str, ...] = ("a1", "a2"), name: str = "echo") -> Path:
    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    copy_adaptecho(store / name, properties=properties, adapters=adapters)
    (store / "extra").mkdir(exist_ok=True)
    return store


def make_adapter_dir(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"echo": name}))
    return folder


def read_events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
