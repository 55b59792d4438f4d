"""A step's layer stack as one native call (``csrc/decode_loop.cpp``), where the model and the
step allow it: the decoder's own kernels, chained in C++ instead of Python.

At batch 32 on SmolLM2 the Python between the ~270 kernel calls of a step cost ~1.9 ms of a
~31 ms step, and the second OpenMP thread idled while it ran (``benchmarks/profile_step.py``).
The call also releases the GIL, so the server's threads run while the engine steps. Short
prompts' tokens attend in the stack, as rows of the decodes' paged kernel; longer prompts'
attention is the decoder's own Python (SDPA), called back once per layer.

It takes every family's layer (pre-norms; SwiGLU or GeGLU; QK-norm and sandwich norms where the
family has them), each base matrix through the kernel the decoder's LinearOps would pick at the
step's row count (the native packed GEMM; a quantized format's GEMV or GEMM), and the adapters of
the native LoRA backend (BGMV, then DoRA's row scale and trained biases' deltas). The Python loop
runs the rest: other LoRA backends, matrices without a native kernel at that row count, the
PyTorch ops (CUDA). The same numbers from the same kernels either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from loraserve.model.args import FUSED, ModelArgs
from loraserve.model.batch import StepBatch
from loraserve.model.layer_ops import NativeOps, TorchOps
from loraserve.model.lora import LoraBackend, LoraPlan, NativeLora
from loraserve.model.matrix_formats import NativeMatrix
from loraserve.model.packed import LinearOps
from loraserve.model.rope import RopeTables
from loraserve.model.weights import ModelWeights

PrefillAttention = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True, slots=True)
class StackRows:
    """The rows a step's stack attends by the paged kernel, from row 0: row r over the first
    lengths[r] keys of its blocks, tables[table_of[r]] (tables[r] where table_of is None)."""

    tables: torch.Tensor  # (S, M)
    lengths: torch.Tensor  # (R,)
    table_of: torch.Tensor | None  # (R,)


Tensors = list[torch.Tensor | None]  # one entry per layer and group (A, B) or per group, None: unused


class NativeLayers:
    """``run(h, batch, matrices, caches)``: every layer of a step ``plan`` says it can take."""

    def __init__(
        self,
        args: ModelArgs,
        weights: ModelWeights,
        rope: RopeTables,
        module: ModuleType,
        lora: NativeLora | None,
    ) -> None:
        self.args, self.weights, self.module, self.lora = args, weights, module, lora
        self.cos = [rope.cos[spec.rope] for spec in args.layers]
        self.sin = [rope.sin[spec.rope] for spec in args.layers]
        self.windows = [spec.window or 0 for spec in args.layers]
        # six per layer, as the kernel reads them; None where the family has no such norm
        self.norms = [
            norm
            for layer in weights.layers
            for norm in (
                layer.attn_norm,
                layer.mlp_norm,
                layer.q_norm,
                layer.k_norm,
                layer.attn_out_norm,
                layer.mlp_out_norm,
            )
        ]

    @classmethod
    def build(
        cls,
        args: ModelArgs,
        weights: ModelWeights,
        rope: RopeTables,
        ops: TorchOps,
        lora: LoraBackend,
    ) -> NativeLayers | None:
        """The loop where this model's layers are the shape it runs, on the native kernels (with
        the native LoRA backend, it takes adapter steps too); else None (the decoder's Python
        loop serves every step)."""
        if not isinstance(ops, NativeOps) or not hasattr(ops.module, "decode_layers"):
            return None
        if args.activation not in ("silu", "gelu_tanh"):
            return None
        return cls(args, weights, rope, ops.module, lora if isinstance(lora, NativeLora) else None)

    def plan(self, batch: StepBatch, linears: LinearOps) -> list[NativeMatrix] | None:
        """How the stack reads each base matrix in this step, as ``linears`` would (the packed
        GEMM, or a quantized format's kernel at few rows); None where the Python loop takes the
        step: adapters on a backend other than the native one, or a matrix no native kernel
        reads."""
        if batch.lora_plan is not None and self.lora is None:
            return None
        return linears.native_matrices(batch.input_ids.shape[0])

    def run(
        self,
        h: torch.Tensor,
        batch: StepBatch,
        matrices: list[NativeMatrix],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        rows: StackRows,
        prefill: PrefillAttention | None,
    ) -> torch.Tensor:
        """Every layer over h (T, hidden): h becomes the residual stream before the last MLP's
        output, which is returned (the decoder adds it in its final norm, as its loop does).
        ``matrices``: ``plan``'s for this step. The first R rows attend in the stack, by the
        paged kernel (``rows``: the decodes, and prompt tokens as ``prefill_attention.PagedRows``).
        ``prefill(layer, q, out)`` writes the other rows of out (T, H, d) (None: R = T)."""
        args, layers = self.args, self.weights.layers
        plan = batch.lora_plan
        return self.module.decode_layers(  # type: ignore[no-any-return]
            h,
            self.norms,
            [int(fmt) for fmt, _ in matrices],
            [tensors for _, tensors in matrices],
            [layer.bias(name) for layer in layers for name in FUSED],
            self.cos,
            self.sin,
            self.windows,
            k_cache,
            v_cache,
            batch.rope_rows,
            batch.slot_mapping,
            rows.tables,
            rows.lengths,
            rows.table_of,
            args.num_heads,
            args.intermediate_size,
            args.activation == "gelu_tanh",
            args.attn_scale,
            args.attn_softcap or 0.0,
            args.rms_eps,
            None if plan is None else plan.token_slots,
            *self._lora_args(plan is not None),
            *self._extras_args(plan),
            rows.lengths.numel(),
            prefill,
        )

    def _lora_args(self, active: bool) -> tuple[Tensors, Tensors, Tensors, Tensors, Tensors, int]:
        """The kernel's LoRA arguments: A and B per layer and group (None where no slot uses the
        group), then each group's module columns, widths and slot_info, then the rank read."""
        layers, lora = len(self.weights.layers), self.lora
        if not active or lora is None:
            unused: Tensors = [None] * 4
            return unused * layers, unused * layers, unused, unused, unused, 0
        used = [group if lora.users[group] else None for group in FUSED]
        a = [None if g is None else lora.a_layers[g][i] for i in range(layers) for g in used]
        b = [None if g is None else lora.b_layers[g][i] for i in range(layers) for g in used]
        starts = [None if g is None else lora.columns[g][0] for g in used]
        widths = [None if g is None else lora.columns[g][1] for g in used]
        info = [None if g is None else lora.slot_info[g] for g in used]
        return a, b, starts, widths, info, lora.used_rank

    def _extras_args(self, plan: LoraPlan | None) -> tuple[Tensors, Tensors, Tensors]:
        """Per group: DoRA's row-scale table (None where no slot has DoRA there), the rows of the
        step's tokens on DoRA slots (what ``dora.py`` rescales where the layer has a bias), and
        the trained biases' delta table (None where no slot has one)."""
        none: Tensors = [None] * len(FUSED)
        lora = self.lora
        if plan is None or lora is None:
            return none, none, none
        dora, dora_rows, deltas = list(none), list(none), list(none)
        for index, group in enumerate(FUSED):
            if lora.dora is not None and lora.dora.scales.users[group]:
                dora[index] = lora.dora.scales.tables[group]
                dora_rows[index] = lora.dora.rows_of(group, plan.token_slots)
            if lora.biases is not None and lora.biases.deltas.users[group]:
                deltas[index] = lora.biases.deltas.tables[group]
        return dora, dora_rows, deltas
