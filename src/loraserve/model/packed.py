"""oneDNN-packed copies of the fp32 and bf16 weights for CPU inference.

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


class LinearOps(Protocol):
    """What the decoder calls for the base model's matrix products (``Linears``, ``Int8Linears``)."""

    def __call__(self, x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor: ...

    def head(self, x: torch.Tensor) -> torch.Tensor: ...


# Rows up to which the native GEMV (csrc/gemv.cpp) runs instead of oneDNN: it reads the plain
# weights as one sequential stream per thread. SmolLM2's 121 matrices in bf16 on the AVX512-BF16
# EPYC, weights cold: 9.7 vs 13.5 ms at 1 row, 9.7 vs 14.4 at 2, 11.2 vs 12.2 at 4.
GEMV_MAX_ROWS = 4
Gemv = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], None]


class Linears:
    """``linear(x, layer, name)`` over packed weights when available, else ``F.linear``; through
    the native GEMV (``gemv``, where it is built) for a few rows."""

    def __init__(
        self, weights: ModelWeights, batch_hint: int, enabled: bool, gemv: Gemv | None = None
    ) -> None:
        self.weights = weights
        self.batch_hint = batch_hint
        self.enabled = enabled
        self.gemv = gemv
        self.packed: list[dict[str, torch.Tensor]] = []
        self.lm_head: torch.Tensor | None = None
        if enabled:
            self.packed = [{} for _ in weights.layers]
            for index in range(len(weights.layers)):
                self.repack(index)
            self.lm_head = self._pack(weights.lm_head)

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight, self.batch_hint)

    def repack(self, layer: int) -> None:
        """Refresh a layer's packed copies after its plain weights changed (merge/unmerge)."""
        if self.enabled:
            for name in FUSED:
                self.packed[layer][name] = self._pack(self.weights.layers[layer].fused(name))

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
        few = self._few_rows(x, self.weights.layers[layer].fused(name), bias)
        if few is not None:
            return few
        if not self.enabled:
            return F.linear(x, self.weights.layers[layer].fused(name), bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed[layer][name], bias, "none", [], "")

    def repack_head(self) -> None:
        """Refresh the packed LM head after the plain one was swapped (merged vocabulary adapters)."""
        if self.enabled:
            self.lm_head = self._pack(self.weights.lm_head)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        few = self._few_rows(x, self.weights.lm_head, None)
        if few is not None:
            return few
        if self.lm_head is None:
            return F.linear(x, self.weights.lm_head)
        return torch.ops.mkldnn._linear_pointwise(x, self.lm_head, None, "none", [], "")
