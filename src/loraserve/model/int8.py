"""Weight-only int8 (``option.quantize=int8``): one scale per output channel, symmetric, round to
nearest; a single row's product reads the int8 weight (``torch.ops.aten._weight_int8pack_mm``,
gpt-fast's int8 path): half the bytes of bf16 per decode step, a quarter of fp32's."""

from __future__ import annotations

from collections.abc import Callable

import torch

from loraserve.model.matrix_formats import MatrixFormat, NativeMatrix


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


GemvInt8 = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], None]


class Int8Format:
    """Read by the native kernel (``csrc/gemv.cpp``'s ``gemv_int8``: each thread streams its rows
    of int8 once for up to 4 rows of x) where it is built, else by torch's ``_weight_int8pack_mm``.
    Torch's kernel beats oneDNN's packed bf16 GEMM only at 1 row (AVX512-BF16 EPYC, SmolLM2's
    head: 1.45 vs 1.81 ms; 2.11 vs 1.87 ms at 2 rows); the native one reads all of SmolLM2's
    int8 matrices in 4.4 ms against torch's 9.5 and the native bf16 GEMV's 5.4."""

    name = "int8-weight-only"

    def __init__(self, native: GemvInt8 | None = None) -> None:
        self.native = native
        self.max_rows = 4 if native is not None else 1

    def quantize(
        self, weight: torch.Tensor, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The scales rounded to ``dtype`` either way (torch's kernel reads them so; the native
        one reads the same values in fp32), and the reference uses them."""
        q, scales = quantize_rows(weight)
        scales = scales.to(dtype)
        dequantized = q.float() * scales.float()[:, None]
        return (q, scales if self.native is None else scales.float()), dequantized

    def matmul(self, rows: torch.Tensor, stored: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, scales = stored
        if self.native is None:
            return torch.ops.aten._weight_int8pack_mm(rows, q, scales)
        out = torch.empty((rows.shape[0], q.shape[0]), dtype=rows.dtype, device=rows.device)
        self.native(rows, q, scales, None, out)
        return out

    def native_matrix(self, stored: tuple[torch.Tensor, torch.Tensor], rows: int) -> NativeMatrix | None:
        """The native GEMV's (fp32 scales); torch's kernel is not reachable from the stack."""
        return None if self.native is None else (MatrixFormat.INT8, list(stored))
