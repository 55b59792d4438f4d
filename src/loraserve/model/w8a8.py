"""W8A8 (``option.quantize=w8a8``): int8 weights, one scale per output channel (as ``int8``),
times int8 activations, one scale per token, quantized on the fly before every base product
(SmoothQuant's per-token dynamic scheme, without smoothing). The integer products are exact, so
at every batch size the product runs on integer hardware: VPDPBUSD (AVX512-VNNI) in loraserve's
native GEMM on weights packed for it (``pack_vnni``) at decode batch sizes, oneDNN's int8 GEMM on
weights packed once (VNNI, AMX-int8 where the CPU has it) for long prefills — half the bytes of
bf16 at batch 1, twice its multiply rate at batch 32.

Exactness is stated against the model whose weights are the dequantized int8 weights and whose
every base product's input is rounded the same way (``fake_quantize``): only the sum's conversion
to fp32 and the final scaling round. Against the weight-only ``int8`` model it adds the
activations' own rounding (at most half a step of each token's largest magnitude / 127).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from loraserve.model.hardware import cpu_info
from loraserve.model.int8 import quantize_rows
from loraserve.model.matrix_formats import MatrixFormat, NativeMatrix

# Without AMX the native GEMM beats oneDNN's int8 GEMM at every row count measured (SmolLM2's 121
# matrices, AVX512-VNNI EPYC: 2.4x at 1 row, 1.43x at 32, 1.27x at 256, 1.26x at 2,048), so
# oneDNN's copy is not built. With AMX-INT8 oneDNN's tiles should win long prefills: rows past
# this go there (not measured: no AMX CPU was lent).
AMX_NATIVE_ROWS = 64


@dataclass(frozen=True, slots=True)
class W8A8Kernels:
    """The native entry points (``csrc/w8a8.cpp``)."""

    gemm: Callable[..., None]  # (x, vnni, wsum, sw, out)
    quantize: Callable[..., None]  # (x, xu, sx)
    rescale: Callable[..., None]  # (acc, sx, sw, out)


class W8A8Weight(NamedTuple):
    """What a matrix stores: its int8 weights in the form of each kernel that reads them."""

    q: torch.Tensor | None  # (N, K) int8 for torch._int_mm, where neither kernel below is built
    vnni: torch.Tensor | None  # pack_vnni(q) for the native GEMM, where built
    wsum: torch.Tensor  # (N,) int32 row sums: VPDPBUSD's offset for unsigned activations
    scales: torch.Tensor  # (N,) fp32
    packed: torch.Tensor | None  # oneDNN's packed copy for its int8 GEMM


def pack_vnni(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 → (ceil(N/16), ceil(K/4), 64): 16 output channels x 4 consecutive k per 64
    bytes, the operand layout of VPDPBUSD (zero padded: padding adds nothing to a sum)."""
    n, k = q.shape
    groups, quads = -(-n // 16), -(-k // 4)
    padded = torch.zeros(groups * 16, quads * 4, dtype=torch.int8)
    padded[:n, :k] = q
    return padded.view(groups, 16, quads, 4).permute(0, 2, 1, 3).reshape(groups, quads, 64).contiguous()


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 (M, K), scales (M,) fp32): symmetric per row, a zero row's scale the smallest normal
    float, a row holding NaN/inf zeros with a NaN scale (its products non-finite); the native
    kernel's arithmetic, so both give the same bits."""
    x32 = x.float()
    scales = (x32.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    finite = torch.isfinite(scales)
    scales = torch.where(finite, scales, torch.nan)
    q = torch.where(finite[:, None], torch.round(x32 / scales[:, None]).clamp(-127, 127), 0)
    return q.to(torch.int8), scales


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """x with each row rounded as the kernel rounds it, in x's dtype: the reference's input."""
    rows = x.reshape(-1, x.shape[-1])
    q, scales = quantize_activations(rows)
    return (q.float() * scales[:, None]).to(x.dtype).view(x.shape)


# Instructions with which oneDNN's int8 GEMM (and torch._int_mm, which runs it) sums int8 pairs
# in int32. Without them it multiplies with VPMADDUBSW, whose int16 pair sums saturate (2 * 255 *
# 127 > 32767): wrong sums, so w8a8 is refused there (the weight-only int8 serves).
EXACT_INT8_GEMM = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
MAX_K = 66_000  # the VNNI GEMM's shifted sums (255 * 127 * K) stay below 2^31


def w8a8_available(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (``flags``: /proc/cpuinfo's, by default) sums int8 products exactly at
    every batch size."""
    if device.type != "cpu":
        return False
    if not EXACT_INT8_GEMM & (cpu_info().flags if flags is None else flags):
        return False
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if capped.upper() in ("SSE41", "AVX", "AVX2", "AVX512_CORE"):  # oneDNN told to stop below VNNI
        return False
    try:
        torch._int_mm(torch.zeros(1, 8, dtype=torch.int8), torch.zeros(8, 8, dtype=torch.int8))
    except (RuntimeError, AttributeError):
        return False
    return True


def onednn_int8_available() -> bool:
    """oneDNN's int8 linear on prepacked weights (the kernel PyTorch's x86 int8 inference uses)."""
    try:
        packed = torch.ops.onednn.qlinear_prepack(torch.zeros(16, 8, dtype=torch.int8), [1, 8])
        _onednn_int8(torch.zeros(1, 8, dtype=torch.uint8), packed, *_unit_scales(16))
    except (RuntimeError, AttributeError):
        return False
    return True


def _unit_scales(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones(n), torch.zeros(n, dtype=torch.int32)


def _onednn_int8(
    xu: torch.Tensor, packed: torch.Tensor, ones: torch.Tensor, zeros: torch.Tensor
) -> torch.Tensor:
    """(M, N) fp32 integer sums of (xu - 128) @ q^T: unit scales, so oneDNN only converts them."""
    return torch.ops.onednn.qlinear_pointwise(
        xu, 1.0, 128, packed, ones, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )


class W8A8Format:
    """Every row count goes through it (``max_rows`` unbounded): the int8 GEMM beats the packed
    bf16 one at batch sizes too, so the dequantized weights are never read by a product."""

    name = "w8a8-int8-dynamic"
    max_rows = sys.maxsize

    def __init__(self, native: W8A8Kernels | None = None, batch_hint: int = 32) -> None:
        self.native, self.batch_hint = native, batch_hint
        amx = "amx_int8" in cpu_info().flags
        self.onednn = (native is None or amx) and onednn_int8_available()
        self.native_rows = AMX_NATIVE_ROWS if self.onednn else sys.maxsize
        self._units: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def quantize(self, weight: torch.Tensor, dtype: torch.dtype) -> tuple[W8A8Weight | None, torch.Tensor]:
        """The scales stay fp32 whatever ``dtype``: the rescale multiplies in fp32 and rounds
        once. A matrix wider than ``MAX_K`` stays dense (its sums could leave int32)."""
        if weight.shape[1] > MAX_K:
            return None, weight
        q, scales = quantize_rows(weight)
        native, packed = self.native is not None, None
        if self.onednn:
            packed = torch.ops.onednn.qlinear_prepack(q, [self.batch_hint, q.shape[1]])
        stored = W8A8Weight(
            None if native or packed is not None else q,
            pack_vnni(q) if native else None,
            q.sum(dim=1, dtype=torch.int32),
            scales,
            packed,
        )
        return stored, q.float() * scales[:, None]

    def native_matrix(self, stored: W8A8Weight, rows: int) -> NativeMatrix | None:
        """The native GEMM where ``matmul`` runs it at this row count; not oneDNN's (AMX, long
        prefills) or torch's."""
        _, vnni, wsum, scales, packed = stored
        if self.native is None or vnni is None or (rows > self.native_rows and packed is not None):
            return None
        return MatrixFormat.W8A8, [vnni, wsum, scales]

    def matmul(self, rows: torch.Tensor, stored: W8A8Weight) -> torch.Tensor:
        q, vnni, wsum, scales, packed = stored
        m, n = rows.shape[0], scales.shape[0]
        out = torch.empty((m, n), dtype=rows.dtype, device=rows.device)
        native = self.native
        if native is not None and vnni is not None and (m <= self.native_rows or packed is None):
            native.gemm(rows, vnni, wsum, scales, out)
            return out
        if native is not None:
            xu = torch.empty(rows.shape, dtype=torch.uint8)
            sx = torch.empty(m)
            native.quantize(rows, xu, sx)
        else:
            qx, sx = quantize_activations(rows)
            xu = (qx.to(torch.int32) + 128).to(torch.uint8)
        if packed is not None:
            if n not in self._units:
                self._units[n] = _unit_scales(n)
            acc = _onednn_int8(xu, packed, *self._units[n])
        else:
            assert q is not None
            acc = torch._int_mm((xu.to(torch.int32) - 128).to(torch.int8), q.t()).float()
        if native is not None:
            native.rescale(acc, sx, scales, out)
            return out
        return out.copy_(acc * sx[:, None] * scales[None, :])
