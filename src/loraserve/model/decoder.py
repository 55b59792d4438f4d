"""The decoder forward every family runs, beside the weights it reads: ``ModelArgs`` says how a
family differs (biases, QK-norm, sandwich norms, GeGLU, windows, soft-caps, RoPE per layer) and
this one loop does the rest over a flat, variable-length ``StepBatch``.

Every step runs the tokens of all scheduled sequences — one per decoding sequence, a prompt (or
a chunk of one) per prefilling one — as one ``(T, hidden)`` matrix through the linear layers, so
base weights and LoRA stacks are read once per step for the whole batch. Only attention is
per-sequence: decodes are batched over their KV-cache blocks, and so, with the native kernels, are
short prompts' tokens, as rows of the same paged kernel; longer prompts take SDPA, one by one or,
whole prompts of one length side by side, in one batched call (``prefill_attention.py``).
"""

from __future__ import annotations

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.batch import StepBatch
from loraserve.model.layer_ops import AttentionSpec, NativeOps, StepTables, TorchOps
from loraserve.model.lora import LoraBackend
from loraserve.model.native_layers import NativeLayers, PrefillAttention, StackRows
from loraserve.model.packed import LinearOps
from loraserve.model.prefill_attention import (
    PagedAttention,
    PagedRows,
    PrefillGroup,
    attend_prefills,
    group_prefills,
    pad_tables,
    row_limit,
)
from loraserve.model.rope import RopeTables
from loraserve.model.weights import LayerWeights, ModelWeights


class Decoder:
    def __init__(
        self,
        args: ModelArgs,
        weights: ModelWeights,
        rope: RopeTables,
        ops: TorchOps,
        lora: LoraBackend,
        linears: LinearOps,
    ) -> None:
        self.args, self.weights, self.rope, self.ops, self.lora, self.linears = (
            args,
            weights,
            rope,
            ops,
            lora,
            linears,
        )
        self.attention = [
            AttentionSpec(args.attn_scale, spec.window, args.attn_softcap) for spec in args.layers
        ]
        # the whole layer stack as one native call for the steps its plan takes (native kernels)
        self.native_layers = NativeLayers.build(args, weights, rope, ops, lora)
        # prompt spans of at most this many (query, key) pairs attend as rows of the paged kernel
        self.rows_up_to = row_limit(args.head_dim)

    @property
    def paged(self) -> PagedAttention | None:
        """The ops' paged attention kernel, which short prompt spans attend through as rows."""
        return self.ops.paged_attention if isinstance(self.ops, NativeOps) else None

    @property
    def row_limit(self) -> int:
        """The most (query, key) pairs of a prompt span that attends as rows (0: the ops have no
        paged kernel, every span takes SDPA)."""
        return self.rows_up_to if isinstance(self.ops, NativeOps) else 0

    @torch.inference_mode()
    def forward(self, batch: StepBatch, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """Logits (N, vocab) in fp32 for the last token of each sequence of the batch; the caches
        are (L, N, kvh, bs, d)."""
        args, ops = self.args, self.ops
        plan = batch.lora_plan
        h = self.weights.embed[batch.input_ids]  # (T, hidden)
        if plan is not None:  # adapters with their own embeddings (or LoRA on them)
            self.lora.vocab.embed(h, batch.input_ids, plan.token_slots)
        if args.embed_scale is not None:  # in the model dtype, as transformers rounds it
            h = h * torch.tensor(args.embed_scale, dtype=h.dtype)
        native = self.native_layers
        matrices = None if native is None else native.plan(batch, self.linears)
        if native is not None and matrices is not None:
            rows, rest = stack_rows(batch, group_prefills(batch.prefills, self.row_limit))
            prefill = self._prefill_callback(rest, k_cache, v_cache) if rest else None
            delta: torch.Tensor | None = native.run(h, batch, matrices, k_cache, v_cache, rows, prefill)
        else:
            h, delta = self._layers(h, batch, k_cache, v_cache)
        index = batch.logits_index
        _, last = ops.add_norm(h[index], None if delta is None else delta[index], self.weights.norm)
        logits = self.linears.head(last)
        if plan is not None:
            self.lora.vocab.head(logits, last, plan.token_slots.index_select(0, index))
        if args.final_softcap is not None:
            logits = torch.tanh(logits / args.final_softcap) * args.final_softcap
        return logits.float()

    def _layers(
        self, h: torch.Tensor, batch: StepBatch, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every layer over h (T, hidden), one kernel call at a time: the residual stream before
        the last layer's MLP output, and that output (added in the final norm)."""
        args, ops, tokens = self.args, self.ops, h.shape[0]
        x = torch.empty_like(h)  # each sub-layer's normed input, reused where the backend can
        tables = ops.prepare(batch, self.rope)
        groups = group_prefills(batch.prefills, self.row_limit)
        delta: torch.Tensor | None = None  # the previous layer's MLP output, added to h lazily
        for i, layer in enumerate(self.weights.layers):
            h, x = ops.add_norm(h, delta, layer.attn_norm, x)
            qkv = self._project(x, i, "qkv", layer, batch)
            if layer.q_norm is not None and layer.k_norm is not None:
                ops.qk_norm(qkv, layer.q_norm, layer.k_norm, args.num_heads, args.num_kv_heads)
            q = ops.rope_and_cache(
                qkv, tables, args.layers[i].rope, batch, k_cache[i], v_cache[i], args.num_heads
            )
            attn = self._attend(q, batch, groups, tables, self.attention[i], k_cache[i], v_cache[i])
            attn = attn.view(tokens, -1)
            out = self._project(attn, i, "o", layer, batch)
            if layer.attn_out_norm is not None:
                _, out = ops.add_norm(out, None, layer.attn_out_norm)
            h, x = ops.add_norm(h, out, layer.mlp_norm, x)
            gate_up = self._project(x, i, "gate_up", layer, batch)
            delta = self._project(ops.act_mul(gate_up, args.activation), i, "down", layer, batch)
            if layer.mlp_out_norm is not None:
                _, delta = ops.add_norm(delta, None, layer.mlp_out_norm)
        return h, delta

    def _project(
        self, x: torch.Tensor, index: int, name: str, layer: LayerWeights, batch: StepBatch
    ) -> torch.Tensor:
        """A fused linear (x (T, in) → (T, out)) plus every adapter's LoRA delta on its tokens."""
        out = self.linears(x, index, name, layer.bias(name))
        if batch.lora_plan is not None:
            self.lora.add_delta(out, x, index, name, batch.lora_plan, layer.bias(name))
        return out

    def _attend(
        self,
        q: torch.Tensor,
        batch: StepBatch,
        groups: list[PrefillGroup | PagedRows],
        tables: StepTables,
        spec: AttentionSpec,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """q (T, H, d) → (T, H, d): batched over decoding sequences, then each group of prefill
        spans (``group_prefills``) over its cached past and itself; the layer's caches are
        (N, kvh, bs, d)."""
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        count = batch.decode_count
        if count:
            self.ops.decode_attention(q[:count], k_cache, v_cache, batch, tables, spec, out[:count])
        attend_prefills(q, groups, spec, k_cache, v_cache, out, self.paged)
        return out

    def _prefill_callback(
        self, groups: list[PrefillGroup | PagedRows], k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> PrefillAttention:
        """What the native layer stack calls per layer for the prompt tokens it does not attend."""
        paged = self.paged

        def attend(layer: int, q: torch.Tensor, out: torch.Tensor) -> None:
            attend_prefills(q, groups, self.attention[layer], k_cache[layer], v_cache[layer], out, paged)

        return attend


def stack_rows(
    batch: StepBatch, groups: list[PrefillGroup | PagedRows]
) -> tuple[StackRows, list[PrefillGroup | PagedRows]]:
    """The rows the native stack attends itself (the decodes, then the prompt tokens of a run of
    ``PagedRows`` right after them), and the groups left to its per-layer callback."""
    tables, lengths = batch.decode_tables, batch.decode_lengths
    first = groups[0] if groups else None
    if not isinstance(first, PagedRows) or first.start != batch.decode_count:
        return StackRows(tables, lengths, None), groups
    width, decodes = max(tables.shape[1], first.tables.shape[1]), tables.shape[0]
    joined = torch.cat([pad_tables(tables, width), pad_tables(first.tables, width)])
    table_of = torch.cat([torch.arange(decodes, device=tables.device), first.table_of + decodes])
    return StackRows(joined, torch.cat([lengths, first.lengths]), table_of), groups[1:]
