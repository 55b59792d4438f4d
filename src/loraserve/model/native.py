"""loraserve's native CPU kernels (``cpu_kernels.cpp``) for bf16 decoding.

At decode batch sizes a step is dominated by many small PyTorch ops, not by the GEMMs' FLOPs:
each kernel here replaces a chain of them (batched LoRA per token slot, residual add + RMSNorm,
RoPE + KV-cache write, one-token attention over the cache). Compiled on first use with
``torch.utils.cpp_extension`` (needs a C++ compiler and ninja; cached by torch per source hash).
When that is not possible, or ``LORASERVE_NATIVE=0``, callers keep their PyTorch path, which
computes the same thing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("loraserve.model")
_SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_module: ModuleType | None = None
_tried = False


def cpu_kernels() -> ModuleType | None:
    """The compiled kernels, or None where they cannot be built (or are switched off)."""
    global _module, _tried
    if _tried or os.environ.get("LORASERVE_NATIVE", "1") == "0":
        return _module
    _tried = True
    log.info("loading native CPU kernels (compiled once per machine and source, ~30 s the first time)")
    try:
        from torch.utils.cpp_extension import load

        _module = load(name="loraserve_cpu_kernels", sources=[str(_SOURCE)],
                       extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                       verbose=False)
    except Exception as exc:  # no compiler, no ninja, ...: the PyTorch path serves instead
        log.warning("native CPU kernels unavailable (%s); using the PyTorch path", exc)
    return _module


def kernels_for(dtype: torch.dtype, device: torch.device) -> ModuleType | None:
    """The kernels where they apply — bf16 tensors on the CPU — else None."""
    return cpu_kernels() if device.type == "cpu" and dtype == torch.bfloat16 else None
