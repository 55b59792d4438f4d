"""loraserve's native CPU kernels (``csrc/``), one build per ISA level.

At decode batch sizes a step is dominated by many small PyTorch ops, not by the GEMMs' FLOPs:
each kernel replaces a chain of them (batched LoRA per token slot, residual add + RMSNorm, RoPE +
KV-cache write, one-token attention over the cache), in fp32 and bf16. Compiled on first use with
``torch.utils.cpp_extension`` (needs a C++ compiler and ninja). Each ISA level is its own extension,
``loraserve_cpu_kernels_<level>``, built with exactly that level's ``-m`` flags (never
``-march=native``), so torch's extension cache can never hand a binary to a CPU that lacks its
instructions. ``LORASERVE_NATIVE=0``, or no compiler, leaves the PyTorch path, which computes the
same thing.
"""

from __future__ import annotations

import logging
import os
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


def _build(level: str) -> ModuleType | None:
    log.info("loading native CPU kernels for %s (compiled once per machine and source, ~1 min the "
             "first time)", level)
    try:
        from torch.utils.cpp_extension import load

        names = ("cpu_kernels.cpp", "kernels_f32.cpp", "kernels_bf16.cpp")
        sources = [str(_SOURCES / name) for name in names]
        return load(name=f"loraserve_cpu_kernels_{level}", sources=sources,
                    extra_cflags=["-O3", "-fopenmp", *compiler_flags(level)], extra_ldflags=["-fopenmp"],
                    extra_include_paths=[str(_SOURCES)], verbose=False)
    except Exception as exc:  # no compiler, no ninja, ...: the PyTorch path serves instead
        log.warning("native CPU kernels (%s) unavailable (%s); using the PyTorch path", level, exc)
        return None
