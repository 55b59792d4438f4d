"""What this CPU can do, read once at start-up, and the compute dtype ``dtype=auto`` picks from it.

bf16 matrix products are only fast where the CPU has native bf16 (AVX512-BF16 dot products or
AMX tiles); elsewhere oneDNN emulates them and a bf16 decode step runs ~4x slower than fp32
(measured on an AVX2-only EPYC Zen 3). So ``auto`` is bf16 with native support, fp32 without.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loraserve.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: the server front end (describe_choice)
# must not pay for importing it.
log = logging.getLogger("loraserve.model")

# Kernel builds, widest first. Each names the flags the compiler is given, so a build only ever
# runs on a CPU that has every one of them (never -march=native).
ISA_LEVELS = ("avx512_bf16", "avx512", "avx2", "scalar")
_REQUIRED = {
    # every CPU with AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4) has AVX512-VNNI too
    "avx512_bf16": (
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512dq",
        "avx512_bf16",
        "avx512_vnni",
        "avx2",
        "fma",
        "f16c",
    ),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"),
    "avx2": ("avx2", "fma", "f16c"),
    "scalar": (),
}
_COMPILER_FLAGS = {
    "avx512_bf16": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mavx512bf16",
        "-mavx512vnni",
        "-mavx2",
        "-mfma",
        "-mf16c",
    ],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "scalar": [],
}


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """The CPU's feature flags that matter here, and the widest kernel build it can run."""

    flags: frozenset[str]
    torch_capability: str  # torch's own view: "AVX512", "AVX2", "DEFAULT", ...

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def isa(self) -> str:
        return next(level for level in ISA_LEVELS if self.supports(level))

    def supports(self, level: str) -> bool:
        return all(flag in self.flags for flag in _REQUIRED[level])

    def runnable_levels(self) -> list[str]:
        return [level for level in ISA_LEVELS if self.supports(level)]


def compiler_flags(level: str) -> list[str]:
    return list(_COMPILER_FLAGS[level])


def _cpuinfo_flags(text: str) -> frozenset[str]:
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """/proc/cpuinfo's flags (Linux; empty elsewhere)."""
    path = Path("/proc/cpuinfo")
    return _cpuinfo_flags(path.read_text()) if path.is_file() else frozenset()


@functools.cache
def cpu_info() -> CpuInfo:
    """Read once: /proc/cpuinfo's flags (Linux); torch's capability where that file is missing."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags()
    if not flags:  # no /proc (macOS, ...): infer what torch's dispatcher found
        flags = frozenset({"AVX2": _REQUIRED["avx2"], "AVX512": _REQUIRED["avx512"]}.get(capability, ()))
    return CpuInfo(flags, capability)


def auto_dtype(device: torch.device, info: CpuInfo | None = None) -> torch.dtype:
    """The fastest dtype that is exact enough: bf16 on GPUs and on CPUs with native bf16, else fp32."""
    import torch

    if device.type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if (info or cpu_info()).native_bf16 else torch.float32


_DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}


def describe_choice(dtype_option: str | None, device_option: str | None) -> dict[str, str]:
    """What the built-in engine picks on this machine for these options (for ``GET /models``),
    from the CPU's flags alone: no torch import, no question to a worker. ``device=auto`` is
    taken as CUDA where an NVIDIA device node exists."""
    info = CpuInfo(cpu_flags(), "")
    device = device_option or "auto"
    if device == "auto":
        device = "cuda" if Path("/dev/nvidiactl").exists() else "cpu"
    option = dtype_option or "auto"
    if option == "auto":
        dtype = "bfloat16" if device != "cpu" or info.native_bf16 else "float32"
    elif option in _DTYPE_NAMES:
        dtype = _DTYPE_NAMES[option]
    else:
        raise ConfigError(f"option.dtype={option} is not one of fp32, bf16, fp16, auto")
    return {"device": device, "isa": info.isa, "dtype": dtype, "dtypeOption": option}
