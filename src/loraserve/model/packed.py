"""oneDNN-packed copies of the bf16 weights for CPU inference.

On CPU, a bf16 GEMM against a weight pre-reordered into oneDNN's blocked layout is 15-30%
faster at decode batch sizes than ``F.linear`` on the plain tensor (measured in
``benchmarks/bench_engine.py``). The plain weights stay: merged LoRA edits them and repacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loraserve.model.llama import LlamaWeights

PACKED_NAMES = ("qkv", "o", "gate_up", "down")


def packing_available(dtype: torch.dtype, device: torch.device) -> bool:
    if device.type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 1)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 8, dtype=dtype), probe, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


class Linears:
    """``linear(x, layer, name)`` over packed weights when available, else ``F.linear``."""

    def __init__(self, weights: LlamaWeights, batch_hint: int, enabled: bool) -> None:
        self.weights = weights
        self.batch_hint = batch_hint
        self.enabled = enabled
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
            for name in PACKED_NAMES:
                self.packed[layer][name] = self._pack(self.weights.layers[layer][name])  # type: ignore[arg-type]

    def __call__(self, x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.enabled:
            return F.linear(x, self.weights.layers[layer][name], bias)  # type: ignore[arg-type]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed[layer][name], bias, "none", [], "")

    def head(self, x: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return F.linear(x, self.weights.lm_head)
        return torch.ops.mkldnn._linear_pointwise(x, self.lm_head, None, "none", [], "")
