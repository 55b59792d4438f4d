"""Weight-only 4-bit (``option.quantize=q4``): GGUF's Q4_1 scheme — groups of 32 weights along
the input dimension, each with a scale and a minimum (``w = d * q + m``, ``q`` in 0..15, ``d`` =
(max - min) / 15) — read by torch's CPU int4 kernel (``_weight_int4pack_mm_for_cpu``, the kernel
gpt-fast and torchao use), whose dequantization is ``(q - 8) * scale + zero``: the same values
with ``scale = d`` and ``zero = m + 8 d``. A quarter of the bytes of bf16 per decode step.

The kernel wants N a multiple of 16 and K of the group: a matrix that is not (only tiny test
models have one) stays in the compute dtype and goes through the dense path.
"""

from __future__ import annotations

import torch

from loraserve.model.matrix_formats import MatrixFormat, NativeMatrix

GROUP = 32  # Q4_1's block
INNER_K_TILES = 2  # the packing the CPU kernel reads (2, 4 or 8; K must divide by 16 * this)


def quantize_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int32 (N, K) in 0..15, d (N, K/32) fp32, m (N, K/32) fp32): Q4_1 per block of 32."""
    n, k = weight.shape
    blocks = weight.float().reshape(n, k // GROUP, GROUP)
    low, high = blocks.amin(dim=2), blocks.amax(dim=2)
    d = (high - low) / 15
    safe = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.round((blocks - low[..., None]) / safe[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), d, low


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The kernel's own dequantization, in fp32: ``(q - 8) * scale + zero`` per group."""
    n, k = q.shape
    blocks = q.float().reshape(n, k // GROUP, GROUP) - 8
    blocks = blocks * scale.float()[..., None] + zero.float()[..., None]
    return blocks.reshape(n, k)


def q4_available(device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            torch.zeros(16, GROUP, dtype=torch.int32), INNER_K_TILES
        )
        torch.ops.aten._weight_int4pack_mm_for_cpu(torch.zeros(1, GROUP), packed, GROUP, torch.ones(1, 16, 2))
    except (RuntimeError, AttributeError):
        return False
    return True


def fits(weight: torch.Tensor) -> bool:
    return weight.shape[0] % 16 == 0 and weight.shape[1] % GROUP == 0


class Q4Format:
    name = "q4-weight-only"
    # Rows up to which the int4 kernel beats oneDNN on the dequantized weights (measured in
    # benchmarks/bench_quantized.py; the kernel is a matrix-vector kernel).
    max_rows = 1

    def quantize(
        self, weight: torch.Tensor, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        if not fits(weight):
            return None, weight
        q, d, m = quantize_groups(weight)
        # scale and zero in the compute dtype, as the kernel reads them; the reference uses the same
        scale, zero = d.to(dtype), (m + 8 * d).to(dtype)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, INNER_K_TILES)
        scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()  # (K/32, N, 2)
        return (packed, scales_and_zeros), dequantize_groups(q, scale, zero)

    def matmul(self, rows: torch.Tensor, stored: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        packed, scales_and_zeros = stored
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, GROUP, scales_and_zeros)

    def native_matrix(self, stored: tuple[torch.Tensor, torch.Tensor], rows: int) -> NativeMatrix:
        return MatrixFormat.Q4_1, list(stored)
