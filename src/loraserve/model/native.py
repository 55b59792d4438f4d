"""loraserve's native CPU kernels (``csrc/``), one build per ISA level and source.

At decode batch sizes a step is dominated by many small PyTorch ops, not by the GEMMs' FLOPs:
each kernel replaces a chain of them (batched LoRA per token slot, residual add + RMSNorm, RoPE +
KV-cache write, one-token attention over the cache), in fp32 and bf16. Compiled on first use with
``torch.utils.cpp_extension`` (needs a C++ compiler and ninja). Each ISA level is its own extension,
``loraserve_cpu_kernels_<level>``, built with exactly that level's ``-m`` flags (never
``-march=native``), so torch's extension cache can never hand a binary to a CPU that lacks its
instructions. The extension's name also carries a hash of the sources, the flags and torch's
version (``build_key``): two checkouts or venvs on one machine never rebuild each other's build in
turn, and a restarted worker always finds its own. ``LORASERVE_NATIVE=0``, or no compiler, leaves
the PyTorch path, which computes the same thing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from loraserve.model.hardware import compiler_flags, cpu_info

log = logging.getLogger("loraserve.model")
_SOURCES = Path(__file__).with_name("csrc")
_modules: dict[str, ModuleType | None] = {}


def native_enabled() -> bool:
    return os.environ.get("LORASERVE_NATIVE", "1") != "0"


def cpu_kernels(level: str | None = None) -> ModuleType | None:
    """The kernels built for ``level`` (default: the widest this CPU runs), or None where they
    cannot be built, are switched off, or the CPU cannot run that level."""
    if not native_enabled():
        return None
    level = level or cpu_info().isa
    if level not in _modules:
        _modules[level] = _build(level) if cpu_info().supports(level) else None
    return _modules[level]


_UNITS = (
    "cpu_kernels.cpp",
    "bgmv.cpp",
    "rowwise.cpp",
    "attention.cpp",
    "gemm.cpp",
    "gemv.cpp",
    "w8a8.cpp",
    "lora_image.cpp",
    "decode_loop.cpp",
)


def _cflags(level: str) -> list[str]:
    return ["-O3", "-fopenmp", "-fvisibility=hidden", *compiler_flags(level)]


def build_key(level: str) -> str:
    """What a build depends on — every source and header, the flags, torch's version and the
    Python ABI — hashed: a different checkout gets a different extension, an identical one the same."""
    import sys

    import torch

    digest = hashlib.sha256()
    for path in sorted(_SOURCES.iterdir()):
        if path.suffix in (".cpp", ".h"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join([*_cflags(level), torch.__version__, sys.implementation.cache_tag]).encode())
    return digest.hexdigest()[:12]


def extension_name(level: str) -> str:
    return f"loraserve_cpu_kernels_{level}_{build_key(level)}"


def _pinned_sources(build_dir: Path, name: str) -> Path:
    """The sources copied once, next to the build, under the build's own name. torch's build
    file names its inputs by path, so two checkouts compiling from their own trees rebuilt
    each other's (identical) build on every load; from this one copy, never. Written to a
    temporary folder and renamed into place, so no process ever compiles a half-written copy."""
    pinned = build_dir.parent / f"{name}-sources"
    if not pinned.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=build_dir.parent))
        for path in _SOURCES.iterdir():
            if path.suffix in (".cpp", ".h"):
                shutil.copy2(path, staging / path.name)
        try:
            staging.rename(pinned)
        except OSError:  # another process put it there first: the same content
            shutil.rmtree(staging, ignore_errors=True)
    return pinned


def _build(level: str) -> ModuleType | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory, load

        name = extension_name(level)
        build_dir = Path(_get_build_directory(name, verbose=False))
        sources = _pinned_sources(build_dir, name)
        built = any(build_dir.glob(f"{name}*.so"))
        if not built:  # say so before a silent multi-minute compile
            log.warning(
                "compiling the native CPU kernels for %s (once per machine and source: "
                "1-5 min on 2 busy cores); requests wait until they are built",
                level,
            )
        started = time.monotonic()
        with _build_lock(name):
            module = load(
                name=name,
                sources=[str(sources / unit) for unit in _UNITS],
                extra_cflags=_cflags(level),
                extra_ldflags=["-fopenmp"],
                extra_include_paths=[str(sources)],
                verbose=False,
            )
        log.info(
            "native CPU kernels for %s %s in %.1f s (%s)",
            level,
            "loaded" if built else "built",
            time.monotonic() - started,
            name,
        )
        return module
    except Exception as exc:  # no compiler, no ninja, ...: the PyTorch path serves instead
        log.warning("native CPU kernels (%s) unavailable (%s); using the PyTorch path", level, exc)
        return None


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """Serialise builds of ``name`` with an OS lock, which dies with its holder, then drop any
    ``lock`` file torch left in the build folder: torch waits forever on one left by a process
    killed mid-compile (a server stopped during its first start wedged every later start)."""
    from torch.utils.cpp_extension import _get_build_directory

    folder = Path(_get_build_directory(name, verbose=False))
    with open(folder.parent / f".{name}.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # every builder of ours holds this first
        stale = folder / "lock"
        if stale.exists():
            log.warning("removing %s, left by a build that was killed", stale)
            stale.unlink(missing_ok=True)
        yield
