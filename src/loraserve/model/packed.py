"""Packed copies of the fp32 and bf16 base weights for CPU inference: loraserve's own layout for
its packed GEMM where the build runs it fast, else oneDNN's.

On CPU, a GEMM against a weight pre-reordered into oneDNN's blocked layout is faster at decode
batch sizes than ``F.linear`` on the plain tensor: bf16 15-30% (AVX512-BF16 machine, measured in
``benchmarks/bench_engine.py``); fp32 on an AVX2 EPYC Zen 3, M=32, one thread, best of 30:
+10% on the layers' weights (66-78 vs 60-71 GFLOP/s) and +46% on the LM head (57 vs 39 GFLOP/s)
(``benchmarks/profile_step.py`` prints the comparison). The plain weights stay: merged LoRA edits
them and repacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from loraserve.model.args import FUSED
from loraserve.model.huge_pages import move_to_huge_pages
from loraserve.model.matrix_formats import MatrixFormat, NativeMatrix
from loraserve.model.weights import ModelWeights


def packing_available(dtype: torch.dtype, device: torch.device) -> bool:
    if (
        device.type != "cpu"
        or dtype not in (torch.float32, torch.bfloat16)
        or not torch.backends.mkldnn.is_available()
    ):
        return False
    try:
        probe = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 1)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 8, dtype=dtype), probe, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


def packed_gemm_preferred(dtype: torch.dtype, flags: frozenset[str]) -> bool:
    """Whether loraserve's packed GEMM (where its build tiles ``dtype``) should replace oneDNN on
    a CPU with these flags: not bf16 with AMX-BF16, where oneDNN multiplies on the matrix tiles at
    many times VDPBF16PS's rate (not measured against it here: no AMX machine), so oneDNN's packed
    GEMM and the GEMV keep the base matrices there."""
    return not (dtype == torch.bfloat16 and "amx_bf16" in flags)


class LinearOps(Protocol):
    """What the decoder calls for the base model's matrix products (``Linears``, ``QuantizedLinears``)."""

    def __call__(self, x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor: ...

    def head(self, x: torch.Tensor) -> torch.Tensor: ...

    def native_matrices(self, rows: int) -> list[NativeMatrix] | None:
        """How the native layer stack reads each layer's matrices (4 per layer, ``FUSED``'s
        order) for a step of ``rows`` tokens, as ``__call__`` would; None: it cannot."""
        ...


# Rows up to which the native GEMV (csrc/gemv.cpp) runs instead of oneDNN: it reads the plain
# weights as one sequential stream per thread. SmolLM2's 121 matrices in bf16 on the AVX512-BF16
# EPYC, weights cold: 9.7 vs 13.5 ms at 1 row, 9.7 vs 14.4 at 2, 11.2 vs 12.2 at 4.
GEMV_MAX_ROWS = 4
Gemv = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], None]
PackedGemm = Gemv  # (x, pack_for_gemm(w), bias, out), csrc/gemm.cpp


class Linears:
    """``linear(x, layer, name)`` over packed copies of the base weights, the plain ones kept
    (merged LoRA edits them and repacks; a tied embedding reads them): loraserve's packed GEMM
    at every row count where this build runs it in register tiles (``gemm``: bf16 on AVX512-BF16,
    fp32 on AVX-512; SmolLM2's matrices 1.1-2x oneDNN's packed linear from 1 to 256 rows,
    ``benchmarks/bench_gemm.py``); else oneDNN's packed linear (``enabled``), the native GEMV
    (``gemv``) taking up to ``GEMV_MAX_ROWS`` rows; else ``F.linear``."""

    def __init__(
        self,
        weights: ModelWeights,
        batch_hint: int,
        enabled: bool,
        gemv: Gemv | None = None,
        gemm: PackedGemm | None = None,
    ) -> None:
        self.weights = weights
        self.batch_hint = batch_hint
        self.gemm = gemm
        self.enabled = enabled or gemm is not None
        self.gemv = gemv if gemm is None else None
        self.packed: list[dict[str, torch.Tensor]] = []
        self.out_features = [{name: layer.fused(name).shape[0] for name in FUSED} for layer in weights.layers]
        self.lm_head: torch.Tensor | None = None
        if self.enabled:
            self.packed = [{} for _ in weights.layers]
            for index in range(len(weights.layers)):
                self.repack(index)
            self.lm_head = self._pack(weights.lm_head)
            if gemm is not None:  # what every decode step streams
                move_to_huge_pages([self.lm_head, *(t for layer in self.packed for t in layer.values())])

    @property
    def name(self) -> str:
        if self.gemm is not None:
            return "native-packed-gemm"
        name = "onednn-packed" if self.enabled else "torch"
        return f"{name}, native-gemv (<= {GEMV_MAX_ROWS} rows)" if self.gemv is not None else name

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        if self.gemm is not None:
            return pack_for_gemm(weight)
        return torch.ops.mkldnn._reorder_linear_weight(weight, self.batch_hint)

    def repack(self, layer: int) -> None:
        """Refresh a layer's packed copies after its plain weights changed (merge/unmerge)."""
        if self.enabled:
            for name in FUSED:
                self.packed[layer][name] = self._pack(self.weights.layers[layer].fused(name))

    def _gemm(
        self, x: torch.Tensor, packed: torch.Tensor, n: int, bias: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The packed GEMM on x (..., in) at any row count, or None where the dtypes differ."""
        if x.dtype != packed.dtype or (bias is not None and bias.dtype != x.dtype):
            return None
        rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # a step's (T, in): no reshape
        rows = rows if rows.stride(-1) == 1 else rows.contiguous()
        out = torch.empty((rows.shape[0], n), dtype=x.dtype, device=x.device)
        assert self.gemm is not None
        self.gemm(rows, packed, bias, out)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], n)

    def _few_rows(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor | None:
        if (
            self.gemv is None
            or x.dim() != 2
            or x.shape[0] > GEMV_MAX_ROWS
            or x.stride(-1) != 1
            or not weight.is_contiguous()
            or weight.dtype != x.dtype
        ):
            return None
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
        self.gemv(x, weight, bias, out)
        return out

    def __call__(self, x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
        if self.gemm is not None:  # the hot path: ~3 us of Python a call, not ~10 (x 121 a step)
            out = self._gemm(x, self.packed[layer][name], self.out_features[layer][name], bias)
            return F.linear(x, self.weights.layers[layer].fused(name), bias) if out is None else out
        weight = self.weights.layers[layer].fused(name)
        few = self._few_rows(x, weight, bias)
        if few is not None:
            return few
        if not self.enabled:
            return F.linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed[layer][name], bias, "none", [], "")

    def native_matrices(self, rows: int) -> list[NativeMatrix] | None:
        """The packed copies (read each step: merges repack them), where the native GEMM runs."""
        if self.gemm is None:
            return None
        return [(MatrixFormat.PACKED, [layer[name]]) for layer in self.packed for name in FUSED]

    def repack_head(self) -> None:
        """Refresh the packed LM head after the plain one was swapped (merged vocabulary adapters)."""
        if self.enabled:
            self.lm_head = self._pack(self.weights.lm_head)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        head = self.weights.lm_head
        if self.gemm is not None and self.lm_head is not None:
            out = self._gemm(x, self.lm_head, head.shape[0], None)
            return F.linear(x, head) if out is None else out
        few = self._few_rows(x, head, None)
        if few is not None:
            return few
        if self.lm_head is None:
            return F.linear(x, head)
        return torch.ops.mkldnn._linear_pointwise(x, self.lm_head, None, "none", [], "")


def pack_for_gemm(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (N, K) as the native packed GEMM reads it (``csrc/gemm.cpp``): (ceil(N/16),
    ceil(K/P), 16P), P = 4 / element size — groups of 16 output channels, each 64-byte row one
    32-bit word of k (a bf16 pair, one fp32) for all 16, zero padded."""
    per_word = 4 // weight.element_size()
    n, k = weight.shape
    groups, words = -(-n // 16), -(-k // per_word)
    padded = weight.new_zeros(groups * 16, words * per_word)
    padded[:n, :k] = weight
    grouped = padded.view(groups, 16, words, per_word).transpose(1, 2)
    return grouped.contiguous().view(groups, words, 16 * per_word)
