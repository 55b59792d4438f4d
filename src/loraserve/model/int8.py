"""Weight-only int8 (``option.quantize=int8``): one scale per output channel, symmetric, round to
nearest; a single row's product reads the int8 weight (``torch.ops.aten._weight_int8pack_mm``,
gpt-fast's int8 path): half the bytes of bf16 per decode step, a quarter of fp32's."""

from __future__ import annotations

import torch


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


class Int8Format:
    name = "int8-weight-only"
    # Rows up to which the int8 kernel beats oneDNN's packed bf16 GEMM. Measured on the
    # AVX512-BF16 EPYC (2 threads, SmolLM2's shapes): at 1 row int8 0.026 vs 0.036 ms
    # (1536x576), 1.45 vs 1.81 ms (the 576x49152 head); at 2 rows the head is already slower in
    # int8 (2.11 vs 1.87 ms).
    max_rows = 1

    def quantize(
        self, weight: torch.Tensor, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        q, scales = quantize_rows(weight)
        scales = scales.to(dtype)  # as the kernel reads them; the reference uses the same
        return (q, scales), q.float() * scales.float()[:, None]

    def matmul(self, rows: torch.Tensor, stored: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, scales = stored
        return torch.ops.aten._weight_int8pack_mm(rows, q, scales)
