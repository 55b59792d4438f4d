"""Helpers for end-to-end tests: model stores built in a temporary directory."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def make_engine_store(root: Path, properties: str = "option.max_lora_rank=8\noption.max_model_len=128\n",
                      **model_kwargs) -> tuple[Path, Path]:
    """A model store with one built-in-engine model ``tiny`` (a random tiny Llama, fp32) and a
    start-up adapter ``qv``; returns (store, base weights)."""
    from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

    base = make_tiny_llama(root / "weights", **model_kwargs)
    model = root / "store" / "tiny"
    (model / "adapters").mkdir(parents=True)
    make_peft_adapter(base, model / "adapters" / "qv", rank=4)
    (model / "serving.properties").write_text(f"option.model_id={base}\noption.dtype=fp32\n{properties}")
    return root / "store", base


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``mount`` (a full disk on demand); skips where mounting is not
    permitted; always unmounted afterwards."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill_up(directory: Path) -> Path:
    """Write a file into ``directory`` until its file system is full (ENOSPC); returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler
