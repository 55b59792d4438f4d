"""Runs the Llama forward pass over a ``StepBatch`` with a paged KV cache and LoRA."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from loraserve.model.hardware import cpu_info
from loraserve.model.layer_ops import StepTables, select_ops
from loraserve.model.llama import LlamaArgs, LlamaWeights, RotaryEmbedding, StepBatch
from loraserve.model.loader import load_config, load_state_dict
from loraserve.model.lora import LoraStacks, MergedLora
from loraserve.model.packed import Linears, packing_available


class LlamaRunner:
    """The model plus its paged KV cache: ``num_blocks`` blocks of ``block_size`` tokens."""

    def __init__(self, model_path: Path, dtype: torch.dtype, device: torch.device, batch_hint: int,
                 max_len: int, lora_slots: int, max_lora_rank: int) -> None:
        self.config = load_config(model_path)
        self.args = LlamaArgs.from_hf(self.config)
        self.dtype, self.device = dtype, device
        self.max_len = min(max_len or self.args.max_position, self.args.max_position)
        self.weights = LlamaWeights(self.args, load_state_dict(model_path), dtype, device)
        self.rope = RotaryEmbedding(self.args, device)
        self.k_cache = self.v_cache = torch.empty(0)  # allocate_kv_cache sizes them
        self.block_size = 0
        # The small per-layer ops: native kernels for this CPU's ISA where they build, else PyTorch.
        self.ops = select_ops(dtype, device, self.args.rms_eps)
        self.lora = LoraStacks(self.args, lora_slots, max_lora_rank, dtype, device, self.ops.bgmv)
        self.linears = Linears(self.weights, batch_hint, packing_available(dtype, device))
        self.merged = MergedLora(self.args, self.weights, on_change=self.linears.repack)

    def info(self) -> dict[str, str]:
        """The start-up choices: what the CPU offers and which dtype and kernels run here."""
        cpu = cpu_info()
        return {"device": str(self.device), "isa": cpu.isa, "torch_cpu_capability": cpu.torch_capability,
                "native_bf16": str(cpu.native_bf16).lower(), "dtype": str(self.dtype).removeprefix("torch."),
                "kernels": self.ops.name, "linear": "onednn-packed" if self.linears.enabled else "torch"}

    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token over all layers."""
        args = self.args
        return 2 * args.num_layers * args.num_kv_heads * args.head_dim * self.dtype.itemsize

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Zeroed: block 0 pads block tables, and masked reads must never meet NaN."""
        args = self.args
        shape = (args.num_layers, num_blocks, args.num_kv_heads, block_size, args.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)  # (L, N, kvh, bs, d)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.block_size = block_size

    def zero_blocks(self, block_ids: list[int]) -> None:
        """Scrub blocks a failed sequence wrote (NaN would reach later users via masked reads)."""
        if block_ids:
            index = torch.tensor(block_ids, device=self.device)
            self.k_cache[:, index] = 0
            self.v_cache[:, index] = 0

    def kv_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Logits (N, vocab) in fp32 for the last token of each sequence of the batch."""
        args, lora, ops = self.args, self.lora, self.ops
        plan = batch.lora_plan
        h = self.weights.embed[batch.input_ids]  # (T, hidden)
        tokens = h.shape[0]
        x = torch.empty_like(h)  # each sub-layer's normed input, reused where the backend can

        def project(x: torch.Tensor, layer: int, name: str, bias: torch.Tensor | None) -> torch.Tensor:
            out = self.linears(x, layer, name, bias)
            if plan is not None:
                lora.add_delta(out, x, layer, name, plan)
            return out

        tables = ops.prepare(batch, self.rope)
        delta: torch.Tensor | None = None  # the previous layer's MLP output, added to h lazily
        for i, layer in enumerate(self.weights.layers):
            h, x = ops.add_norm(h, delta, layer["input_norm"], x)  # type: ignore[arg-type]
            qkv = project(x, i, "qkv", layer["qkv_bias"])  # type: ignore[arg-type]
            q = ops.rope_and_cache(qkv, tables, batch, self.k_cache[i], self.v_cache[i], args.num_heads)
            attn = self._attention(i, q, batch, tables).view(tokens, -1)
            h, x = ops.add_norm(h, project(attn, i, "o", None), layer["post_norm"], x)  # type: ignore[arg-type]
            gate_up = project(x, i, "gate_up", None)  # type: ignore[arg-type]
            delta = project(ops.silu_mul(gate_up), i, "down", None)  # type: ignore[arg-type]
        index = batch.logits_index
        h_last = h[index]
        _, last = ops.add_norm(h_last, None if delta is None else delta[index], self.weights.norm)
        return self.linears.head(last).float()

    def _attention(self, layer: int, q: torch.Tensor, batch: StepBatch, tables: StepTables) -> torch.Tensor:
        """q (T, H, d) → (T, H, d): batched over decoding sequences, then each prefill causally."""
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]  # (N, kvh, bs, d)
        count = batch.decode_count
        if count:
            self.ops.decode_attention(q[:count], k_cache, v_cache, batch, tables, out[:count])
        for span in batch.prefills:
            start, length, past = span.start, span.length, span.past
            total = past + length
            query = q[start:start + length].transpose(0, 1).unsqueeze(0)  # (1, H, n, d)
            keys = gather_blocks(k_cache, span.blocks, total).unsqueeze(0)  # (1, kvh, past+n, d)
            values = gather_blocks(v_cache, span.blocks, total).unsqueeze(0)
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


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` positions of a sequence, contiguous: cache (N, kvh, bs, d) and its
    blocks (nb,) → (kvh, length, d)."""
    picked = cache[blocks]  # (nb, kvh, bs, d)
    kv_heads, dim = picked.shape[1], picked.shape[3]
    return picked.transpose(0, 1).reshape(kv_heads, -1, dim)[:, :length]
