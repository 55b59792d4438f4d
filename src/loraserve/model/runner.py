"""Runs the Llama forward pass over a ``StepBatch`` with a slot-based KV cache and LoRA."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from loraserve.model.llama import LlamaArgs, LlamaWeights, RotaryEmbedding, StepBatch, rms_norm
from loraserve.model.loader import load_config, load_state_dict
from loraserve.model.lora import LoraStacks, MergedLora
from loraserve.model.native import kernels_for
from loraserve.model.packed import Linears, packing_available


class LlamaRunner:
    """The model plus its KV cache: ``slots`` sequences of up to ``max_len`` tokens each."""

    def __init__(self, model_path: Path, dtype: torch.dtype, device: torch.device, slots: int,
                 max_len: int, lora_slots: int, max_lora_rank: int) -> None:
        self.config = load_config(model_path)
        self.args = LlamaArgs.from_hf(self.config)
        self.dtype, self.device = dtype, device
        self.max_len = min(max_len, self.args.max_position)
        self.weights = LlamaWeights(self.args, load_state_dict(model_path), dtype, device)
        self.rope = RotaryEmbedding(self.args, device)
        shape = (self.args.num_layers, slots, self.args.num_kv_heads, self.max_len, self.args.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)  # (L, S, kvh, len, d)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.lora = LoraStacks(self.args, lora_slots, max_lora_rank, dtype, device)
        self.linears = Linears(self.weights, slots, packing_available(dtype, device))
        self.merged = MergedLora(self.args, self.weights, on_change=self.linears.repack)
        # Native kernels for the small per-layer ops (bf16 on CPU only; else the PyTorch path).
        self.kernels = kernels_for(dtype, device)

    def kv_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Logits (N, vocab) in fp32 for the last token of each sequence of the batch."""
        args, lora = self.args, self.lora
        plan = batch.lora_plan
        h = self.weights.embed[batch.input_ids]  # (T, hidden)
        tokens = h.shape[0]
        x = torch.empty_like(h) if self.kernels is not None else h  # the kernels' norm output

        def project(x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
            out = self.linears(x, layer, name, bias)
            if plan is not None:
                lora.add_delta(out, x, layer, name, plan)
            return out

        inter = args.intermediate_size
        rope = self._rope_tables(batch)
        decode_mask = None if self.kernels is not None else self._decode_mask(batch)
        delta: torch.Tensor | None = None  # the previous layer's MLP output, added to h lazily
        for i, layer in enumerate(self.weights.layers):
            h, x = self._add_norm(h, delta, layer["input_norm"], x)  # type: ignore[arg-type]
            qkv = project(x, i, "qkv", layer["qkv_bias"])  # type: ignore[arg-type]
            q = self._rope_and_cache(i, qkv, batch, rope)
            attn = self._attention(i, q, batch, decode_mask).view(tokens, -1)
            h, x = self._add_norm(h, project(attn, i, "o", None), layer["post_norm"], x)  # type: ignore[arg-type]
            gate_up = project(x, i, "gate_up", None)  # type: ignore[arg-type]
            delta = project(self._silu_mul(gate_up, inter), i, "down", None)  # type: ignore[arg-type]
        index = batch.logits_index
        h_last = h[index]
        _, last = self._add_norm(h_last, None if delta is None else delta[index], self.weights.norm,
                                 torch.empty_like(h_last))
        return self.linears.head(last).float()

    def _add_norm(self, h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                  out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + delta, RMSNorm of it): the residual stream and the next sub-layer's input."""
        if self.kernels is not None:
            self.kernels.add_rms_norm(h, delta, weight, self.args.rms_eps, out)
            return h, out
        if delta is not None:
            h = h + delta
        return h, rms_norm(h, weight, self.args.rms_eps)

    def _silu_mul(self, gate_up: torch.Tensor, inter: int) -> torch.Tensor:
        if self.kernels is not None:
            out = gate_up.new_empty(gate_up.shape[0], inter)
            self.kernels.silu_mul(gate_up, out)
            return out
        return F.silu(gate_up[:, :inter]) * gate_up[:, inter:]

    def _rope_tables(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kernels is not None:  # the kernel indexes the fp32 tables by position itself
            return self.rope.cos, self.rope.sin
        return self.rope.tables(batch.positions, self.dtype)

    def _rope_and_cache(self, layer: int, qkv: torch.Tensor, batch: StepBatch,
                        rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate q and k, write k and v into the layer's KV cache; returns q (T, H, d)."""
        args = self.args
        tokens, heads, kv_heads, dim = qkv.shape[0], args.num_heads, args.num_kv_heads, args.head_dim
        q_dim, kv_dim = heads * dim, kv_heads * dim
        if self.kernels is not None:
            self.kernels.rope_write_kv(qkv, rope[0], rope[1], batch.positions, batch.slots,
                                       self.k_cache[layer], self.v_cache[layer], heads, kv_heads)
            return qkv[:, :q_dim].view(tokens, heads, dim)
        # q and k rotated together: (T, H + kvh, d), one pass instead of two
        qk = self.rope.apply(qkv[:, :q_dim + kv_dim].view(tokens, heads + kv_heads, dim), *rope)
        self.k_cache[layer][batch.slots, :, batch.positions] = qk[:, heads:]
        self.v_cache[layer][batch.slots, :, batch.positions] = \
            qkv[:, q_dim + kv_dim:].view(tokens, kv_heads, dim)
        return qk[:, :heads]

    def _decode_mask(self, batch: StepBatch) -> torch.Tensor | None:
        if batch.decode_slots.numel() == 0:
            return None
        keys = torch.arange(batch.decode_max_len, device=self.device)
        return (keys[None, :] < batch.decode_lengths[:, None])[:, None, None, :]  # (B, 1, 1, Lmax)

    def _attention(self, layer: int, q: torch.Tensor, batch: StepBatch,
                   decode_mask: torch.Tensor | None) -> torch.Tensor:
        """q (T, H, d) → (T, H, d): batched over decode slots, then each prefill causally."""
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
        count = batch.decode_slots.numel()
        if count and self.kernels is not None:
            self.kernels.decode_attention(q[:count], k_cache, v_cache, batch.decode_slots,
                                          batch.decode_lengths, out[:count], self.args.head_dim ** -0.5)
        elif count:
            out[:count] = self._decode_attention(q[:count], k_cache, v_cache, batch, decode_mask)
        for start, length, slot, past in batch.prefills:
            total = past + length
            query = q[start:start + length].transpose(0, 1).unsqueeze(0)  # (1, H, n, d)
            keys = k_cache[slot, :, :total].unsqueeze(0)  # (1, kvh, past+n, d)
            values = v_cache[slot, :, :total].unsqueeze(0)
            if past == 0:
                attended = F.scaled_dot_product_attention(query, keys, values, is_causal=True,
                                                          enable_gqa=True)
            else:
                rows = torch.arange(past, total, device=self.device)[:, None]
                causal = torch.arange(total, device=self.device)[None, :] <= rows
                attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=causal,
                                                          enable_gqa=True)
            out[start:start + length] = attended[0].transpose(0, 1)
        return out

    def _decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          batch: StepBatch, mask: torch.Tensor | None) -> torch.Tensor:
        """One query per sequence over its cached keys, as two batched matmuls: at q length 1
        this beats the fused SDPA kernel on CPU by far. GQA by grouping query heads per KV head."""
        count, heads, dim = q.shape
        kv_heads = self.args.num_kv_heads
        assert mask is not None
        longest = mask.shape[-1]
        if batch.decode_contiguous:
            first = batch.decode_first_slot
            keys = k_cache[first:first + count, :, :longest]  # (B, kvh, L, d), a view
            values = v_cache[first:first + count, :, :longest]
        else:
            keys, values = k_cache[batch.decode_slots, :, :longest], v_cache[batch.decode_slots, :, :longest]
        grouped = q.view(count, kv_heads, heads // kv_heads, dim)  # (B, kvh, g, d)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).float()  # (B, kvh, g, L)
        scores = scores * (dim ** -0.5)
        scores.masked_fill_(~mask, float("-inf"))  # mask: (B, 1, 1, L)
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        attended = torch.matmul(probs, values)  # (B, kvh, g, d)
        return attended.reshape(count, heads, dim)
