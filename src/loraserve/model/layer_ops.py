"""The per-layer small ops of a forward pass, behind one interface: a PyTorch class and a native
class (``native``), picked once at start-up by ``select_ops``. The runner and the LoRA stacks call
the interface and never ask again which backend runs (gpt-fast's "choose a feature once").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from loraserve.model.hardware import cpu_info
from loraserve.model.llama import RotaryEmbedding, StepBatch, rms_norm
from loraserve.model.native import cpu_kernels

Bgmv = Callable[..., None]  # the native BGMV: (x, token_slots, A, B, out, k, rank, starts, lengths, info)


@dataclass(slots=True)
class StepTables:
    """What every layer of one step shares: the RoPE tables and, for the PyTorch path, the mask."""

    cos: torch.Tensor  # native: (P, d) fp32 table; PyTorch: (T, 1, d) rows of the step's positions
    sin: torch.Tensor
    decode_mask: torch.Tensor | None = None  # (B, 1, 1, M*bs) keys each decode token may attend


class TorchOps:
    """Plain PyTorch: runs on every device and dtype."""

    name = "torch"
    bgmv: Bgmv | None = None  # LoRA then groups tokens by slot into batched matmuls

    def __init__(self, dtype: torch.dtype, eps: float) -> None:
        self.dtype, self.eps = dtype, eps

    def prepare(self, batch: StepBatch, rope: RotaryEmbedding) -> StepTables:
        cos, sin = rope.tables(batch.positions, self.dtype)
        mask = None
        if batch.decode_count:
            width = batch.decode_tables.shape[1] * batch.block_size
            keys = torch.arange(width, device=batch.decode_lengths.device)
            mask = (keys[None, :] < batch.decode_lengths[:, None])[:, None, None, :]
        return StepTables(cos, sin, mask)

    def add_norm(self, h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + delta, RMSNorm of it): the residual stream (T, D) and the next sub-layer's input
        (written into ``out`` where the backend can)."""
        if delta is not None:
            h = h + delta
        return h, rms_norm(h, weight, self.eps)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """(T, 2I) → (T, I)."""
        inter = gate_up.shape[1] // 2
        return F.silu(gate_up[:, :inter]) * gate_up[:, inter:]

    def rope_and_cache(self, qkv: torch.Tensor, tables: StepTables, batch: StepBatch,
                       k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int) -> torch.Tensor:
        """Rotate q and k of qkv (T, (H + 2 kvh) d), write k, v into the layer's paged cache
        (N, kvh, bs, d) at each token's slot; returns q (T, H, d)."""
        tokens, kv_heads, block_size, dim = qkv.shape[0], k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
        q_dim, kv_dim = heads * dim, kv_heads * dim
        # q and k rotated together: (T, H + kvh, d), one pass instead of two
        qk = RotaryEmbedding.apply(qkv[:, :q_dim + kv_dim].view(tokens, heads + kv_heads, dim),
                                   tables.cos, tables.sin)
        blocks, offsets = batch.slot_mapping // block_size, batch.slot_mapping % block_size
        k_cache[blocks, :, offsets] = qk[:, heads:]
        v_cache[blocks, :, offsets] = qkv[:, q_dim + kv_dim:].view(tokens, kv_heads, dim)
        return qk[:, :heads]

    def decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         batch: StepBatch, tables: StepTables, out: torch.Tensor) -> None:
        """out (B, H, d) = one query per sequence over its cached keys, as two batched matmuls
        (at q length 1 this beats the fused SDPA kernel on CPU by far); GQA by grouping query
        heads per KV head."""
        count, heads, dim = q.shape
        kv_heads, mask = k_cache.shape[1], tables.decode_mask
        assert mask is not None
        # (B, M, kvh, bs, d) → (B, kvh, M*bs, d): each sequence's blocks in token order
        keys = k_cache[batch.decode_tables].transpose(1, 2).flatten(2, 3)
        values = v_cache[batch.decode_tables].transpose(1, 2).flatten(2, 3)
        grouped = q.view(count, kv_heads, heads // kv_heads, dim)  # (B, kvh, g, d)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).float()  # (B, kvh, g, L)
        scores = scores * (dim ** -0.5)
        scores.masked_fill_(~mask, float("-inf"))  # mask: (B, 1, 1, M*bs)
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out.copy_(torch.matmul(probs, values).view(count, heads, dim))  # (B, kvh, g, d) → (B, H, d)


class NativeOps(TorchOps):
    """The compiled kernels of one ISA build (fp32 or bf16 CPU tensors)."""

    def __init__(self, dtype: torch.dtype, eps: float, module: ModuleType, level: str) -> None:
        super().__init__(dtype, eps)
        self.module, self.name = module, f"native-{level}"
        self.bgmv = module.bgmv

    def prepare(self, batch: StepBatch, rope: RotaryEmbedding) -> StepTables:
        return StepTables(rope.cos, rope.sin)  # the kernel indexes the fp32 tables by position

    def add_norm(self, h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty_like(h) if out is None else out
        self.module.add_rms_norm(h, delta, weight, self.eps, out)  # h += delta in place
        return h, out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        out = gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
        self.module.silu_mul(gate_up, out)
        return out

    def rope_and_cache(self, qkv: torch.Tensor, tables: StepTables, batch: StepBatch,
                       k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int) -> torch.Tensor:
        kv_heads, dim = k_cache.shape[1], k_cache.shape[3]
        self.module.rope_write_kv(qkv, tables.cos, tables.sin, batch.positions, batch.slot_mapping,
                                  k_cache, v_cache, heads, kv_heads)
        return qkv[:, :heads * dim].view(qkv.shape[0], heads, dim)

    def decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         batch: StepBatch, tables: StepTables, out: torch.Tensor) -> None:
        self.module.decode_attention(q, k_cache, v_cache, batch.decode_tables, batch.decode_lengths,
                                     out, q.shape[-1] ** -0.5)


def select_ops(dtype: torch.dtype, device: torch.device, eps: float, level: str | None = None) -> TorchOps:
    """The native kernels for fp32/bf16 CPU tensors where they build (the widest ISA this CPU
    runs, or ``level``), else PyTorch."""
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        level = level or cpu_info().isa
        module = cpu_kernels(level)
        if module is not None:
            return NativeOps(dtype, eps, module, level)
    return TorchOps(dtype, eps)
