"""Quantized base weights on CPU (``option.quantize=int8|q4|q8|w8a8``): every base linear of the
model and its LM head held in a compact format (``int8``: per row; ``q4``: GGUF Q4_1; ``q8``:
GGUF Q8_0; of a GGUF file, each matrix in the file's own Q4_1/Q8_0 blocks), read by a kernel for
a single stream's decode (bound by the bytes it reads), and dequantized in place for everything
else; ``w8a8`` (``model/w8a8.py``) also quantizes each product's input and runs every row count
on integer kernels.

Exactness is stated against the dequantized model: the plain weights are replaced by the
format's own dequantization in the compute dtype, so every other path (LoRA's shapes, the
embedding of a tied head, a reference ``F.linear``, batches through oneDNN) computes with the
same base the quantized kernel does; the two differ only by the order of the accumulation. LoRA
stays unmerged in the compute dtype on top; merged LoRA would edit the quantized weights and is
refused (``EngineConfig``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, TypeGuard

import torch

from loraserve.errors import ConfigError
from loraserve.model.args import FUSED
from loraserve.model.gguf_blocks import Matrix
from loraserve.model.huge_pages import move_to_huge_pages
from loraserve.model.layer_ops import TorchOps
from loraserve.model.matrix_formats import NativeMatrix
from loraserve.model.packed import Linears, packing_available
from loraserve.model.weights import ModelWeights


class WeightFormat(Protocol):
    """One quantized format: how a weight is stored and how a product reads it."""

    name: str  # what ``runner.info()["linear"]`` reports
    max_rows: int  # rows up to which its kernel beats oneDNN on the dequantized weights

    def quantize(self, weight: torch.Tensor, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """(what ``matmul`` reads, the dequantized weight in fp32); (None, the weight as it is)
        for a matrix the kernel cannot take, which then goes through the dense path."""
        ...

    def matmul(self, rows: torch.Tensor, stored: Any) -> torch.Tensor:
        """(M, K) contiguous rows times the stored (N, K) weight, transposed: (M, N)."""
        ...

    def native_matrix(self, stored: Any, rows: int) -> NativeMatrix | None:
        """How the native layer stack runs ``matmul`` on ``rows`` rows: the same kernel on the
        same tensors; None where ``matmul`` takes a path it has not (the stack leaves the step
        to the Python loop)."""
        ...


Stored: TypeAlias = tuple[WeightFormat, Any] | None  # a matrix's format and what it stores; None: dense


def quantized_linears(
    kind: str,
    weights: ModelWeights,
    dtype: torch.dtype,
    device: torch.device,
    batch_hint: int,
    file_blocks: dict[Matrix, str] | None = None,
    ops: TorchOps | None = None,
) -> QuantizedLinears:
    """``kind``: the option's format for every matrix; ``file_blocks``: a GGUF file's own block
    format per matrix instead (``gguf_blocks.block_targets``: Q4_1, Q8_0), the others dense;
    ``ops``: the native kernels, where built (their GEMVs)."""
    from loraserve.model.int4 import Q4Format, q4_available
    from loraserve.model.int8 import Int8Format, int8_available
    from loraserve.model.q8 import Q8Format
    from loraserve.model.w8a8 import W8A8Format, w8a8_available

    gemv, gemm, gemv_int8, gemv_q8, w8a8 = (
        (ops.gemv, ops.packed_gemm, ops.gemv_int8, ops.gemv_q8_0, ops.w8a8)
        if ops is not None
        else (None,) * 5
    )
    makers: dict[str, tuple[bool, Callable[[], WeightFormat], str]] = {
        "int8": (int8_available(device), lambda: Int8Format(gemv_int8), "torch's _weight_int8pack_mm"),
        "q4": (q4_available(device), Q4Format, "torch's _weight_int4pack_mm_for_cpu"),
        "q8": (gemv_q8 is not None, lambda: Q8Format(gemv_q8), "loraserve's native gemv_q8_0"),  # type: ignore[arg-type]
        "w8a8": (
            w8a8_available(device),
            lambda: W8A8Format(w8a8, batch_hint),
            "an int8 GEMM that sums in int32 (a CPU with AVX512-VNNI, AVX-VNNI or AMX-INT8)",
        ),
    }
    scheme = {"Q4_1": "q4", "Q8_0": "q8"}
    needed = {kind} if file_blocks is None else {scheme[b] for b in file_blocks.values()}
    for name in sorted(needed):
        available, _, kernel = makers[name]
        if not available:
            raise ConfigError(
                f"option.quantize={kind} needs {kernel} (for its {name} matrices), not available on "
                f"{device}; leave option.quantize unset"
            )
    formats = {name: makers[name][1]() for name in needed}

    def plan(matrix: Matrix) -> WeightFormat | None:
        if file_blocks is None:
            return formats[kind]
        block = file_blocks.get(matrix)
        return None if block is None else formats[scheme[block]]

    packed = packing_available(dtype, device)

    def dense(pack: bool) -> Linears:
        return Linears(weights, batch_hint, packed and pack, gemv, gemm if pack else None)

    return QuantizedLinears(weights, dtype, plan, dense)


class QuantizedLinears:
    """``linear(x, layer, name)`` through each matrix's format kernel for up to its ``max_rows``
    rows, through the dequantized weights (packed as ``packed.Linears`` packs them) for more: the
    weight-only kernels are matrix-vector kernels, several times slower than the packed bf16 GEMM
    at 32 rows. The cost: the quantized copies are held beside the dequantized
    weights."""

    enabled = True

    def __init__(
        self,
        weights: ModelWeights,
        dtype: torch.dtype,
        plan: Callable[[Matrix], WeightFormat | None],
        dense: Callable[[bool], Linears],
    ) -> None:
        self.weights, self.dtype = weights, dtype
        self.stored: list[dict[str, Stored]] = []
        for index, layer in enumerate(weights.layers):
            self.stored.append(
                {name: self._quantize(layer.fused(name), plan((index, name))) for name in FUSED}
            )
        # dequantized in place: a tied embedding (the same tensor) reads the same values
        self.head_stored = self._quantize(weights.lm_head, plan((None, "head")))
        every = [*(s for layer in self.stored for s in layer.values()), self.head_stored]
        move_to_huge_pages([t for stored in every if stored is not None for t in _tensors(stored[1])])
        self.name = "+".join(sorted({s[0].name for s in every if s is not None})) or "dense"
        # built on the dequantized weights, for many rows; oneDNN-packed copies only where a
        # product can reach it (w8a8 takes every row count of every matrix it holds)
        self.dense = dense(any(s is None or s[0].max_rows < sys.maxsize for s in every))
        self._native: dict[int, list[NativeMatrix] | None] = {}  # per row count: never repacked

    def _quantize(self, weight: torch.Tensor, fmt: WeightFormat | None) -> Stored:
        if fmt is None:
            return None  # kept as it is: the dense path
        stored, dequantized = fmt.quantize(weight, self.dtype)
        if stored is None:
            return None
        weight.copy_(dequantized.to(weight.dtype))
        return fmt, stored

    @staticmethod
    def _reads_format(stored: Stored, rows: int) -> TypeGuard[tuple[WeightFormat, Any]]:
        """Whether a product of ``rows`` rows reads the matrix's format (else its dense copy)."""
        return stored is not None and rows <= stored[0].max_rows

    def _few_rows(self, x: torch.Tensor, stored: Stored) -> torch.Tensor | None:
        rows = x.reshape(-1, x.shape[-1])
        if not self._reads_format(stored, rows.shape[0]):
            return None
        rows = rows if rows.is_contiguous() else rows.contiguous()
        out = stored[0].matmul(rows, stored[1])
        return out.view(*x.shape[:-1], out.shape[-1])

    def __call__(self, x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
        out = self._few_rows(x, self.stored[layer][name])
        if out is None:
            return self.dense(x, layer, name, bias)
        return out if bias is None else out + bias

    def head(self, x: torch.Tensor) -> torch.Tensor:
        out = self._few_rows(x, self.head_stored)
        return self.dense.head(x) if out is None else out

    def native_matrices(self, rows: int) -> list[NativeMatrix] | None:
        """Each matrix as ``__call__`` reads it at ``rows`` rows: its format's kernel up to its
        ``max_rows``, the dense packed copy past them (None if either has no native path)."""
        if rows not in self._native:
            if len(self._native) >= 64:  # a step's row count takes few values; bound it anyway
                self._native.clear()
            self._native[rows] = self._native_matrices(rows)
        return self._native[rows]

    def _native_matrices(self, rows: int) -> list[NativeMatrix] | None:
        dense, matrices = self.dense.native_matrices(rows), []
        for index, layer in enumerate(self.stored):
            for position, name in enumerate(FUSED):
                stored = layer[name]
                if self._reads_format(stored, rows):
                    matrix = stored[0].native_matrix(stored[1], rows)
                else:
                    matrix = None if dense is None else dense[len(FUSED) * index + position]
                if matrix is None:
                    return None
                matrices.append(matrix)
        return matrices

    def weight_bytes(self) -> int:
        """Bytes of base matrices a single stream's decode step reads: each quantized matrix's
        stored form, each dense one in its dtype (the roofline figure of the benchmarks)."""
        layers = self.weights.layers
        pairs = [(s, layers[i].fused(n)) for i, layer in enumerate(self.stored) for n, s in layer.items()]
        pairs.append((self.head_stored, self.weights.lm_head))
        return sum(
            weight.nbytes if stored is None else sum(t.nbytes for t in _tensors(stored[1]))
            for stored, weight in pairs
        )

    def repack(self, layer: int) -> None:
        raise RuntimeError("quantized base weights cannot be edited in place (merged LoRA is refused)")

    def repack_head(self) -> None:
        raise RuntimeError("quantized base weights cannot be edited in place (merged vocabulary adapters)")


def _tensors(stored: Any) -> list[torch.Tensor]:
    """The plain tensors of what a format stores (a tensor or a tuple of them); not oneDNN's
    packed copies, which only its GEMM reads."""
    if isinstance(stored, torch.Tensor):
        return [stored]
    return [t for t in stored if isinstance(t, torch.Tensor) and not t.is_mkldnn]
