"""Weight-only 8-bit in GGUF's Q8_0 scheme (``option.quantize=q8``, and a GGUF file's Q8_0
matrices): blocks of 32 weights along the input dimension, each with one scale (``w = d * q``,
``|q| <= 127``, ``d`` = the block's largest magnitude / 127), read by loraserve's native
``gemv_q8_0`` (it needs the native kernels: torch has no block-scaled int8 kernel). Per block,
not per row as ``int8``: the quantization error follows each block's own range."""

from __future__ import annotations

from collections.abc import Callable

import torch

from loraserve.model.matrix_formats import MatrixFormat, NativeMatrix

BLOCK = 32
GemvQ8 = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], None]


def quantize_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), d (N, K/32) fp32): Q8_0 per block of 32."""
    n, k = weight.shape
    blocks = weight.float().reshape(n, k // BLOCK, BLOCK)
    d = blocks.abs().amax(dim=2) / 127
    safe = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.round(blocks / safe[..., None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(n, k).contiguous(), d.contiguous()


def dequantize_blocks(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    return (q.float().reshape(n, k // BLOCK, BLOCK) * d[..., None]).reshape(n, k)


class Q8Format:
    name = "q8_0-weight-only"
    max_rows = 4  # the native GEMV streams each row once for up to 4 rows of x

    def __init__(self, native: GemvQ8) -> None:
        self.native = native

    def quantize(
        self, weight: torch.Tensor, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        if weight.shape[1] % BLOCK:
            return None, weight
        q, d = quantize_blocks(weight)
        return (q, d), dequantize_blocks(q, d)

    def matmul(self, rows: torch.Tensor, stored: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, d = stored
        out = torch.empty((rows.shape[0], q.shape[0]), dtype=rows.dtype, device=rows.device)
        self.native(rows, q, d, None, out)
        return out

    def native_matrix(self, stored: tuple[torch.Tensor, torch.Tensor], rows: int) -> NativeMatrix:
        return MatrixFormat.Q8_0, list(stored)
