"""The decoder forward every family runs, beside the weights it reads: ``ModelArgs`` says how a
family differs (biases, QK-norm, sandwich norms, GeGLU, windows, soft-caps, RoPE per layer) and
this one loop does the rest over a flat, variable-length ``StepBatch``.

Every step runs the tokens of all scheduled sequences — one per decoding sequence, a prompt (or
a chunk of one) per prefilling one — as one ``(T, hidden)`` matrix through the linear layers, so
base weights and LoRA stacks are read once per step for the whole batch. Only attention is
per-sequence: decodes are batched over their KV-cache blocks, prefills run one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loraserve.model.args import ModelArgs
from loraserve.model.batch import StepBatch
from loraserve.model.layer_ops import AttentionSpec, StepTables, TorchOps
from loraserve.model.lora import LoraBackend
from loraserve.model.native_layers import NativeLayers, PrefillAttention
from loraserve.model.packed import LinearOps
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
            prefill = None if not batch.prefills else self._prefill_callback(batch, k_cache, v_cache)
            delta: torch.Tensor | None = native.run(h, batch, matrices, k_cache, v_cache, prefill)
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
        delta: torch.Tensor | None = None  # the previous layer's MLP output, added to h lazily
        for i, layer in enumerate(self.weights.layers):
            h, x = ops.add_norm(h, delta, layer.attn_norm, x)
            qkv = self._project(x, i, "qkv", layer, batch)
            if layer.q_norm is not None and layer.k_norm is not None:
                ops.qk_norm(qkv, layer.q_norm, layer.k_norm, args.num_heads, args.num_kv_heads)
            q = ops.rope_and_cache(
                qkv, tables, args.layers[i].rope, batch, k_cache[i], v_cache[i], args.num_heads
            )
            attn = self._attend(q, batch, tables, self.attention[i], k_cache[i], v_cache[i]).view(tokens, -1)
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
        tables: StepTables,
        spec: AttentionSpec,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """q (T, H, d) → (T, H, d): batched over decoding sequences, then each prefill span over
        its cached past and itself; the layer's caches are (N, kvh, bs, d)."""
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        count = batch.decode_count
        if count:
            self.ops.decode_attention(q[:count], k_cache, v_cache, batch, tables, spec, out[:count])
        self._attend_prefills(q, batch, spec, k_cache, v_cache, out)
        return out

    def _attend_prefills(
        self,
        q: torch.Tensor,
        batch: StepBatch,
        spec: AttentionSpec,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """out's rows of each prefill span: its queries over its cached past and itself."""
        for span in batch.prefills:
            start, length, past = span.start, span.length, span.past
            query = q[start : start + length].transpose(0, 1).unsqueeze(0)  # (1, H, n, d)
            keys = gather_blocks(k_cache, span.blocks, past + length).unsqueeze(0)  # (1, kvh, past+n, d)
            values = gather_blocks(v_cache, span.blocks, past + length).unsqueeze(0)
            out[start : start + length] = prefill_attention(query, keys, values, past, spec)[0].transpose(
                0, 1
            )

    def _prefill_callback(
        self, batch: StepBatch, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> PrefillAttention:
        """What the native layer stack calls per layer for the step's prompt tokens."""

        def attend(layer: int, q: torch.Tensor, out: torch.Tensor) -> None:
            self._attend_prefills(q, batch, self.attention[layer], k_cache[layer], v_cache[layer], out)

        return attend


def prefill_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int, spec: AttentionSpec
) -> torch.Tensor:
    """query (1, H, n, d) at positions [past, past + n) over keys/values (1, kvh, past + n, d):
    causal, within the window where the layer has one, logits soft-capped where it caps them."""
    n, total = query.shape[2], keys.shape[2]
    if spec.window is None and spec.softcap is None and past == 0:
        return F.scaled_dot_product_attention(
            query, keys, values, is_causal=True, scale=spec.scale, enable_gqa=True
        )
    rows = torch.arange(past, total, device=query.device)[:, None]  # (n, 1) query positions
    cols = torch.arange(total, device=query.device)[None, :]
    visible = cols <= rows
    if spec.window is not None:
        visible &= cols > rows - spec.window
    if spec.softcap is None:
        return F.scaled_dot_product_attention(
            query, keys, values, attn_mask=visible, scale=spec.scale, enable_gqa=True
        )
    group = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    scores = torch.matmul(query, keys.transpose(-1, -2)).float() * spec.scale  # (1, H, n, total)
    scores = torch.tanh(scores / spec.softcap) * spec.softcap
    scores.masked_fill_(~visible, float("-inf"))
    assert n == visible.shape[0]
    return torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` positions of a sequence, contiguous: cache (N, kvh, bs, d) and its
    blocks (nb,) → (kvh, length, d)."""
    picked = cache[blocks]  # (nb, kvh, bs, d)
    kv_heads, dim = picked.shape[1], picked.shape[3]
    return picked.transpose(0, 1).reshape(kv_heads, -1, dim)[:, :length]
