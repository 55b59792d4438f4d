"""The start-up hardware choice: which kernel build a CPU runs and what ``dtype=auto`` means."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loraserve.errors import ConfigError
from loraserve.model.hardware import CpuInfo, _cpuinfo_flags, auto_dtype, compiler_flags, describe_choice

SRC = str(Path(__file__).resolve().parents[2] / "src")

ZEN3 = "fpu sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand avx2 bmi2"
SAPPHIRE = ZEN3 + " avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile"
SKYLAKE_X = ZEN3 + " avx512f avx512dq avx512bw avx512vl"


@pytest.mark.parametrize(
    ("flags", "isa", "dtype"),
    [
        (ZEN3, "avx2", torch.float32),  # AVX2 only: bf16 GEMMs are emulated, fp32 is faster
        (SKYLAKE_X, "avx512", torch.float32),  # AVX-512 without BF16: still no native bf16
        (SAPPHIRE, "avx512_bf16", torch.bfloat16),
        (ZEN3 + " amx_bf16", "avx2", torch.bfloat16),  # AMX tiles alone make bf16 GEMMs native
        ("fpu sse2", "scalar", torch.float32),
    ],
)
def test_isa_and_auto_dtype_follow_the_flags(flags, isa, dtype):
    info = CpuInfo(frozenset(flags.split()), "X")
    assert info.isa == isa
    assert auto_dtype(torch.device("cpu"), info) == dtype
    assert info.runnable_levels()[0] == isa and info.runnable_levels()[-1] == "scalar"


def test_auto_is_bf16_on_gpus():
    assert auto_dtype(torch.device("cuda"), CpuInfo(frozenset(), "DEFAULT")) == torch.bfloat16


def test_flags_are_read_from_cpuinfo_text():
    text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\nbugs\t\t: none\n"
    assert _cpuinfo_flags(text) == {"fpu", "avx2", "fma"}
    assert _cpuinfo_flags("no flags here") == frozenset()


def test_builds_never_use_march_native():
    assert compiler_flags("scalar") == []
    assert "-mavx2" in compiler_flags("avx2") and not any("avx512" in f for f in compiler_flags("avx2"))
    levels = ("avx512_bf16", "avx512", "avx2")
    assert all("native" not in flag for level in levels for flag in compiler_flags(level))


def test_describe_choice_names_isa_and_resolved_dtype():
    chosen = describe_choice("fp32", "cpu")
    assert chosen["dtype"] == "float32" and chosen["dtypeOption"] == "fp32" and chosen["isa"]
    assert describe_choice(None, None)["dtypeOption"] == "auto"


def test_describe_choice_refuses_a_bad_dtype_and_never_imports_torch():
    with pytest.raises(ConfigError, match="fp8 is not one of"):
        describe_choice("fp8", "cpu")
    code = (
        "import sys; from loraserve.model.hardware import describe_choice; "
        "describe_choice(None, None); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC})


def test_packed_gemm_leaves_bf16_to_onednn_on_amx():
    """oneDNN's bf16 GEMM runs on AMX tiles where the CPU has them; the packed GEMM (VDPBF16PS)
    takes bf16 only without AMX, and fp32 everywhere its build tiles it."""
    from loraserve.model.packed import packed_gemm_preferred

    zen4 = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})
    sapphire_rapids = zen4 | {"amx_bf16", "amx_tile", "amx_int8"}
    assert packed_gemm_preferred(torch.bfloat16, zen4)
    assert not packed_gemm_preferred(torch.bfloat16, sapphire_rapids)
    assert packed_gemm_preferred(torch.float32, sapphire_rapids)
