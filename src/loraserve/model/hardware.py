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

import torch

log = logging.getLogger("loraserve.model")

# Kernel builds, widest first. Each names the flags the compiler is given, so a build only ever
# runs on a CPU that has every one of them (never -march=native).
ISA_LEVELS = ("avx512_bf16", "avx512", "avx2", "scalar")
_REQUIRED = {
    "avx512_bf16": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx2", "fma", "f16c"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"),
    "avx2": ("avx2", "fma", "f16c"),
    "scalar": (),
}
_COMPILER_FLAGS = {
    "avx512_bf16": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx2",
                    "-mfma", "-mf16c"],
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
def cpu_info() -> CpuInfo:
    """Read once: /proc/cpuinfo's flags (Linux); torch's capability where that file is missing."""
    capability = torch.backends.cpu.get_cpu_capability()
    path = Path("/proc/cpuinfo")
    flags = _cpuinfo_flags(path.read_text()) if path.is_file() else frozenset()
    if not flags:  # no /proc (macOS, ...): infer what torch's dispatcher found
        flags = frozenset({"AVX2": _REQUIRED["avx2"], "AVX512": _REQUIRED["avx512"]}.get(capability, ()))
    return CpuInfo(flags, capability)


def auto_dtype(device: torch.device, info: CpuInfo | None = None) -> torch.dtype:
    """The fastest dtype that is exact enough: bf16 on GPUs and on CPUs with native bf16, else fp32."""
    if device.type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if (info or cpu_info()).native_bf16 else torch.float32


def describe_choice(dtype_option: str | None, device_option: str | None) -> dict[str, str]:
    """What the built-in engine picks on this machine for these options (for ``GET /models``):
    computed from the CPU alone, so the front end can say it without asking a worker."""
    from loraserve.model.loader import parse_dtype  # loader imports this module

    info = cpu_info()
    device = "cpu" if device_option in (None, "", "auto") else device_option
    if device_option in (None, "", "auto") and torch.cuda.is_available():
        device = "cuda"
    dtype = parse_dtype(dtype_option, device.split(":")[0])
    return {"device": device, "isa": info.isa, "dtype": str(dtype).removeprefix("torch."),
            "dtypeOption": dtype_option or "auto"}
