"""Weight-only quantized base weights on CPU (``option.quantize=int8|q4``): every base linear of
the model and its LM head held in a compact format, read by a kernel for a single stream's
decode (bound by the bytes it reads), and dequantized in place for everything else.

Exactness is stated against the dequantized model: the plain weights are replaced by the
format's own dequantization in the compute dtype, so every other path (LoRA's shapes, the
embedding of a tied head, a reference ``F.linear``, batches through oneDNN) computes with the
same base the quantized kernel does; the two differ only by the order of the accumulation. LoRA
stays unmerged in the compute dtype on top; merged LoRA would edit the quantized weights and is
refused (``EngineConfig``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from loraserve.errors import ConfigError
from loraserve.model.args import FUSED
from loraserve.model.huge_pages import move_to_huge_pages
from loraserve.model.layer_ops import TorchOps
from loraserve.model.packed import Linears, packing_available
from loraserve.model.weights import ModelWeights


class WeightFormat(Protocol):
    """One quantized format: how a weight is stored and how a product reads it."""

    name: str  # what ``runner.info()["linear"]`` reports
    max_rows: int  # rows up to which its kernel beats oneDNN on the dequantized weights

    def quantize(self, weight: torch.Tensor, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """(what ``matmul`` reads, the dequantized weight in fp32); (None, the weight) for a
        matrix the kernel cannot take, which then goes through the dense path."""
        ...

    def matmul(self, rows: torch.Tensor, stored: Any) -> torch.Tensor:
        """(M, K) contiguous rows times the stored (N, K) weight, transposed: (M, N)."""
        ...


def quantized_linears(
    kind: str,
    weights: ModelWeights,
    dtype: torch.dtype,
    device: torch.device,
    batch_hint: int,
    only: set[tuple[int | None, str]] | None = None,
    ops: TorchOps | None = None,
) -> QuantizedLinears:
    """``only``: the (layer, group) matrices to quantize ((None, "head") for the LM head); all
    of them when None (a GGUF file's own choice, ``gguf_blocks.matrices_in``); ``ops``: the
    native kernels, where built (their GEMVs)."""
    gemv, gemv_int8 = (ops.gemv, ops.gemv_int8) if ops is not None else (None, None)
    from loraserve.model.int4 import Q4Format, q4_available
    from loraserve.model.int8 import Int8Format, int8_available

    formats: dict[str, tuple[Callable[[torch.device], bool], Callable[[], WeightFormat], str]] = {
        "int8": (int8_available, lambda: Int8Format(gemv_int8), "_weight_int8pack_mm"),
        "q4": (q4_available, Q4Format, "_weight_int4pack_mm_for_cpu"),
    }
    available, make, kernel = formats[kind]
    if not available(device):
        raise ConfigError(
            f"option.quantize={kind} needs torch's CPU kernel {kernel}, not available on {device}; "
            "leave option.quantize unset"
        )
    packed = packing_available(dtype, device)
    return QuantizedLinears(weights, dtype, make(), lambda: Linears(weights, batch_hint, packed, gemv), only)


class QuantizedLinears:
    """``linear(x, layer, name)`` through the format's kernel for up to ``max_rows`` rows, through
    the dequantized weights (oneDNN-packed where available, as ``packed.Linears``) for more: the
    weight-only kernels are matrix-vector kernels, several times slower than the packed bf16 GEMM
    at 32 rows. The cost: the quantized copies are held beside the dequantized weights."""

    enabled = True

    def __init__(
        self,
        weights: ModelWeights,
        dtype: torch.dtype,
        fmt: WeightFormat,
        dense: Callable[[], Linears],
        only: set[tuple[int | None, str]] | None = None,
    ) -> None:
        self.weights, self.dtype, self.format = weights, dtype, fmt
        self.only = only
        self.stored: list[dict[str, Any]] = []
        for index, layer in enumerate(weights.layers):
            quantize = self._quantize_in_place
            self.stored.append({name: quantize(layer.fused(name), index, name) for name in FUSED})
        # dequantized in place: a tied embedding (the same tensor) reads the same values
        self.head_stored = self._quantize_in_place(weights.lm_head, None, "head")
        kept = [*self.stored, {"head": self.head_stored}]
        move_to_huge_pages([t for group in kept for stored in group.values() for t in _tensors(stored)])
        self.dense = dense()  # built on the dequantized weights, for many rows

    def _quantize_in_place(self, weight: torch.Tensor, layer: int | None, name: str) -> Any:
        if self.only is not None and (layer, name) not in self.only:
            return None  # kept as it is: the dense path
        stored, dequantized = self.format.quantize(weight, self.dtype)
        weight.copy_(dequantized.to(weight.dtype))
        return stored

    def _few_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > self.format.max_rows:
            return None
        return rows if rows.is_contiguous() else rows.contiguous()

    def __call__(self, x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
        stored = self.stored[layer][name]
        rows = None if stored is None else self._few_rows(x)
        if rows is None:
            return self.dense(x, layer, name, bias)
        out = self.format.matmul(rows, stored)
        out = out.view(*x.shape[:-1], out.shape[-1])
        return out if bias is None else out + bias

    def head(self, x: torch.Tensor) -> torch.Tensor:
        rows = None if self.head_stored is None else self._few_rows(x)
        if rows is None:
            return self.dense.head(x)
        out = self.format.matmul(rows, self.head_stored)
        return out.view(*x.shape[:-1], out.shape[-1])

    def repack(self, layer: int) -> None:
        raise RuntimeError("quantized base weights cannot be edited in place (merged LoRA is refused)")

    def repack_head(self) -> None:
        raise RuntimeError("quantized base weights cannot be edited in place (merged vocabulary adapters)")


def _tensors(stored: Any) -> list[torch.Tensor]:
    """The tensors of what a format stores (a tensor or a tuple of them; None: kept dense)."""
    if stored is None:
        return []
    if isinstance(stored, torch.Tensor):
        return [stored]
    return [t for t in stored if isinstance(t, torch.Tensor)]
