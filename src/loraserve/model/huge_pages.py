"""The base weights in transparent huge pages (Linux, CPU): a single stream's decode reads every
weight once per token, and on 4 KiB pages the hardware prefetcher stops at each page boundary
and each page costs a TLB walk. Moved into one anonymous mapping advised ``MADV_HUGEPAGE`` (2 MiB
pages), SmolLM2's LM head is read at 34 GB/s instead of 27 (bf16, AVX512-BF16 EPYC, 2 threads,
cold). Where the kernel refuses huge pages (``transparent_hugepage`` set to ``never``, not Linux)
the weights stay where they are. ``LORASERVE_HUGE_PAGES=0`` switches it off."""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
from pathlib import Path

import torch

log = logging.getLogger("loraserve.model")
HUGE = 2 << 20
MADV_HUGEPAGE = 14
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool:
    if os.environ.get("LORASERVE_HUGE_PAGES", "1") == "0" or not _THP.is_file():
        return False
    return "[never]" not in _THP.read_text()


def move_to_huge_pages(tensors: list[torch.Tensor]) -> int:
    """Each distinct CPU tensor's data copied into one huge-page mapping and the tensor pointed at
    it in place (``set_``: every holder of the tensor, a tied embedding and head included, sees
    the move). The mapping lives as long as the tensors. Returns the bytes moved (0: not moved)."""
    unique = list({t.data_ptr(): t for t in tensors if t.device.type == "cpu" and t.is_contiguous()}.values())
    total = sum(_aligned(t.nbytes) for t in unique)
    if not unique or not huge_pages_available():
        return 0
    mapping = mmap.mmap(-1, total + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps the mapping alive with its storage
    start = -arena.data_ptr() % HUGE
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(arena.data_ptr() + start), ctypes.c_size_t(total), MADV_HUGEPAGE) != 0:
        log.info("huge pages refused (errno %d): weights stay on normal pages", ctypes.get_errno())
        return 0
    offset = start
    for tensor in unique:
        home = arena[offset : offset + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
        home.copy_(tensor)
        tensor.set_(home.untyped_storage(), home.storage_offset(), home.shape, home.stride())
        offset += _aligned(tensor.nbytes)
    return total


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 64) * 64  # each tensor on its own cache line
