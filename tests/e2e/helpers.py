"""Helpers for end-to-end tests: model stores built in a temporary directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from loraserve.testing import copy_adaptecho

# Debian's chromium for the console's browser tests, headless and quiet (no network of its own)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_store(
    root: Path, properties: str | None = None, adapters: tuple[str, ...] = ("a1", "a2"), name: str = "echo"
) -> Path:
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


def make_engine_store(
    root: Path, properties: str = "option.max_lora_rank=8\noption.max_model_len=128\n", **model_kwargs
) -> tuple[Path, Path]:
    """A model store with one built-in-engine model ``tiny`` (a random tiny Llama, fp32) and a
    start-up adapter ``qv``; returns (store, base weights)."""
    from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

    base = make_tiny_llama(root / "weights", **model_kwargs)
    model = root / "store" / "tiny"
    (model / "adapters").mkdir(parents=True)
    make_peft_adapter(base, model / "adapters" / "qv", rank=4)
    (model / "serving.properties").write_text(f"option.model_id={base}\noption.dtype=fp32\n{properties}")
    return root / "store", base
