"""Runs the Llama forward pass over a ``StepBatch`` with a slot-based KV cache and LoRA."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from loraserve.model.llama import LlamaArgs, LlamaWeights, RotaryEmbedding, StepBatch, rms_norm
from loraserve.model.loader import load_config, load_state_dict
from loraserve.model.lora import LoraStacks, MergedLora
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

    def kv_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Logits (N, vocab) in fp32 for the last token of each sequence of the batch."""
        args, lora = self.args, self.lora
        plan = batch.lora_plan
        decode_mask = self._decode_mask(batch)
        h = self.weights.embed[batch.input_ids]  # (T, hidden)
        tokens = h.shape[0]
        q_dim, kv_dim = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim

        def project(x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
            out = self.linears(x, layer, name, bias)
            if plan is not None:
                lora.add_delta(out, x, layer, name, plan)
            return out

        inter = args.intermediate_size
        heads_qk = args.num_heads + args.num_kv_heads
        cos, sin = self.rope.tables(batch.positions, self.dtype)
        for i, layer in enumerate(self.weights.layers):
            x = rms_norm(h, layer["input_norm"], args.rms_eps)  # type: ignore[arg-type]
            qkv = project(x, i, "qkv", layer["qkv_bias"])  # type: ignore[arg-type]
            # q and k rotated together: (T, H + kvh, d), one pass instead of two
            qk = self.rope.apply(qkv[:, :q_dim + kv_dim].view(tokens, heads_qk, args.head_dim), cos, sin)
            q, k = qk[:, :args.num_heads], qk[:, args.num_heads:]
            v = qkv[:, q_dim + kv_dim:].view(tokens, args.num_kv_heads, args.head_dim)
            self.k_cache[i][batch.slots, :, batch.positions] = k
            self.v_cache[i][batch.slots, :, batch.positions] = v
            attn = self._attention(i, q, batch, decode_mask).reshape(tokens, q_dim)
            h = h + project(attn, i, "o", None)  # type: ignore[arg-type]
            x = rms_norm(h, layer["post_norm"], args.rms_eps)  # type: ignore[arg-type]
            gate_up = project(x, i, "gate_up", None)  # type: ignore[arg-type]
            act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
            h = h + project(act, i, "down", None)  # type: ignore[arg-type]
        last = rms_norm(h[batch.logits_index], self.weights.norm, args.rms_eps)
        return self.linears.head(last).float()

    def _decode_mask(self, batch: StepBatch) -> torch.Tensor | None:
        if batch.decode_slots.numel() == 0:
            return None
        keys = torch.arange(batch.decode_max_len, device=self.device)
        return (keys[None, :] < batch.decode_lengths[:, None])[:, None, None, :]  # (B, 1, 1, Lmax)

    def _attention(self, layer: int, q: torch.Tensor, batch: StepBatch,
                   decode_mask: torch.Tensor | None) -> torch.Tensor:
        """q (T, H, d) → (T, H, d): batched over decode slots, then each prefill causally."""
        out = torch.empty_like(q)
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
        count = batch.decode_slots.numel()
        if count:
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
