"""Weight-only int8 base weights on CPU (``option.quantize=int8``): each base linear's weight is
stored as int8 with one scale per output channel (symmetric, round to nearest), and a matrix
product reads the int8 weight (``torch.ops.aten._weight_int8pack_mm``, gpt-fast's int8 path):
half the bytes of bf16 per decode step, a quarter of fp32's.

Exactness is stated against the dequantized model: the plain weights are replaced by
``int8 * scale`` in the compute dtype, so every other path (LoRA's shapes, the embedding of a
tied head, a reference ``F.linear``) sees the same base the int8 products compute; the int8 path
differs from it only by the order of the accumulation. LoRA stays unmerged in the compute dtype
on top; merged LoRA would edit the quantized weights and is refused (``EngineConfig``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from loraserve.errors import ConfigError
from loraserve.model.args import FUSED
from loraserve.model.packed import Linears, packing_available
from loraserve.model.weights import ModelWeights


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 (N, K), scales (N,) fp32): symmetric per output channel, |q| <= 127."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scales


def int8_available(device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    try:
        probe = torch.zeros(2, 4, dtype=torch.int8)
        torch.ops.aten._weight_int8pack_mm(torch.zeros(1, 4), probe, torch.ones(2))
    except (RuntimeError, AttributeError):
        return False
    return True


# Rows up to which the int8 kernel beats oneDNN's packed bf16 GEMM. Measured on the AVX512-BF16
# EPYC (2 threads, SmolLM2's shapes): at 1 row int8 0.026 vs 0.036 ms (1536x576), 1.45 vs 1.81 ms
# (the 576x49152 head); at 2 rows the head is already slower in int8 (2.11 vs 1.87 ms).
INT8_MAX_ROWS = 1


def int8_linears(
    weights: ModelWeights, dtype: torch.dtype, device: torch.device, batch_hint: int
) -> Int8Linears:
    if not int8_available(device):
        raise ConfigError(
            f"option.quantize=int8 needs torch's CPU int8 kernel (_weight_int8pack_mm), not available "
            f"on {device}; leave option.quantize unset"
        )
    return Int8Linears(weights, dtype, lambda: Linears(weights, batch_hint, packing_available(dtype, device)))


class Int8Linears:
    """``linear(x, layer, name)`` over int8 weights for up to ``INT8_MAX_ROWS`` rows (a single
    stream's decode: bound by the bytes read), over the dequantized weights (oneDNN-packed where
    available, as ``packed.Linears``) for more: ``_weight_int8pack_mm`` is a matrix-vector
    kernel, 3-4x slower than the packed bf16 GEMM at 32 rows. The cost: the int8 copies are
    held beside the dequantized weights (+50% of a bf16 model's weight memory)."""

    enabled = True

    def __init__(self, weights: ModelWeights, dtype: torch.dtype, dense: Callable[[], Linears]) -> None:
        self.weights, self.dtype = weights, dtype
        self.q: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        for layer in weights.layers:
            quantized = {}
            for name in FUSED:
                fused = layer.fused(name)
                q, scales = quantize_rows(fused)
                fused.copy_((q.float() * scales[:, None]).to(fused.dtype))  # the dequantized base
                quantized[name] = (q, scales.to(dtype))
            self.q.append(quantized)
        head_q, head_scales = quantize_rows(weights.lm_head)
        # dequantized in place: a tied embedding (the same tensor) reads the same values
        weights.lm_head.copy_((head_q.float() * head_scales[:, None]).to(weights.lm_head.dtype))
        self.head_q = (head_q, head_scales.to(dtype))
        self.dense = dense()  # built on the dequantized weights, for many rows

    def _rows(self, x: torch.Tensor) -> int:
        return x.numel() // x.shape[-1]

    def __call__(self, x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
        if self._rows(x) > INT8_MAX_ROWS:
            return self.dense(x, layer, name, bias)
        q, scales = self.q[layer][name]
        out = _int8_mm(x, q, scales)
        return out if bias is None else out + bias

    def head(self, x: torch.Tensor) -> torch.Tensor:
        if self._rows(x) > INT8_MAX_ROWS:
            return self.dense.head(x)
        return _int8_mm(x, *self.head_q)

    def repack(self, layer: int) -> None:
        raise RuntimeError("int8 base weights cannot be edited in place (merged LoRA is refused)")

    def repack_head(self) -> None:
        raise RuntimeError("int8 base weights cannot be edited in place (merged vocabulary adapters)")


def _int8_mm(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = torch.ops.aten._weight_int8pack_mm(rows, q, scales)  # (M, N) in x's dtype
    return out.view(*x.shape[:-1], q.shape[0])
