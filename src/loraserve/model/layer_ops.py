"""The per-layer small ops of a forward pass, behind one interface: a PyTorch class and a native
class (``native``), picked once at start-up by ``select_ops``. The decoder and the LoRA stacks call
the interface and never ask again which backend runs (gpt-fast's "choose a feature once").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from loraserve.model.batch import StepBatch
from loraserve.model.hardware import cpu_info
from loraserve.model.int8 import GemvInt8
from loraserve.model.native import cpu_kernels
from loraserve.model.packed import Gemv, PackedGemm, packed_gemm_preferred
from loraserve.model.q8 import GemvQ8
from loraserve.model.rope import RopeTables, apply_rope
from loraserve.model.w8a8 import W8A8Kernels

Bgmv = Callable[..., None]  # the native BGMV: (x, token_slots, A, B, out, k, rank, starts, lengths, info)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass(slots=True)
class StepTables:
    """What every layer of one step shares: RoPE per kind (native: the whole fp32 (P, r) tables,
    indexed by the kernel; PyTorch: (T, 1, r) rows of the step's tokens) and the decode keys."""

    cos: dict[str, torch.Tensor]
    sin: dict[str, torch.Tensor]
    decode_keys: torch.Tensor | None = None  # (M*bs,) key positions of the decode block tables


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """What differs between layers' attention: the window, the logit cap, the query scale."""

    scale: float
    window: int | None = None
    softcap: float | None = None


class TorchOps:
    """Plain PyTorch: runs on every device and dtype."""

    name = "torch"
    bgmv: Bgmv | None = None  # LoRA then groups tokens by slot into batched matmuls
    gemv: Gemv | None = None  # the base linears then run oneDNN (or F.linear) at every size
    packed_gemm: PackedGemm | None = None  # set where the build runs it in register tiles
    gemv_int8: GemvInt8 | None = None  # int8 bases then run torch's int8 kernel
    gemv_q8_0: GemvQ8 | None = None  # Q8_0 bases need it
    w8a8: W8A8Kernels | None = None  # W8A8 bases then quantize and rescale in PyTorch
    lora_image: Callable[..., None] | None = None  # native LoRA slot images then built in PyTorch

    def __init__(self, dtype: torch.dtype, eps: float) -> None:
        self.dtype, self.eps = dtype, eps

    def prepare(self, batch: StepBatch, rope: RopeTables) -> StepTables:
        rows = {kind: rope.rows(kind, batch.rope_rows, self.dtype) for kind in rope.cos}
        keys = None
        if batch.decode_count:
            width = batch.decode_tables.shape[1] * batch.block_size
            keys = torch.arange(width, device=batch.decode_lengths.device)
        return StepTables({k: c for k, (c, _) in rows.items()}, {k: s for k, (_, s) in rows.items()}, keys)

    def add_norm(
        self,
        h: torch.Tensor,
        delta: torch.Tensor | None,
        weight: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + delta, RMSNorm of it): the residual stream (T, D) and the next sub-layer's input
        (written into ``out`` where the backend can)."""
        if delta is not None:
            h = h + delta
        return h, rms_norm(h, weight, self.eps)

    def qk_norm(
        self, qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, heads: int, kv_heads: int
    ) -> None:
        """RMSNorm over each q and k head of qkv (T, (H + 2 kvh) d), in place (Qwen3, Gemma 3)."""
        tokens, d = qkv.shape[0], q_weight.shape[0]
        q, k = qkv[:, : heads * d], qkv[:, heads * d : (heads + kv_heads) * d]
        q.copy_(rms_norm(q.view(tokens, heads, d), q_weight, self.eps).view(tokens, heads * d))
        k.copy_(rms_norm(k.view(tokens, kv_heads, d), k_weight, self.eps).view(tokens, kv_heads * d))

    def act_mul(self, gate_up: torch.Tensor, activation: str) -> torch.Tensor:
        """The gated MLP's activation: (T, 2I) = [gate | up] → act(gate) * up (T, I)."""
        inter = gate_up.shape[1] // 2
        gate = gate_up[:, :inter]
        act = F.silu(gate) if activation == "silu" else F.gelu(gate, approximate="tanh")
        return act * gate_up[:, inter:]

    def rope_and_cache(
        self,
        qkv: torch.Tensor,
        tables: StepTables,
        kind: str,
        batch: StepBatch,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        heads: int,
    ) -> torch.Tensor:
        """Rotate q and k of qkv (T, (H + 2 kvh) d), write k, v into the layer's paged cache
        (N, kvh, bs, d) at each token's slot; returns q (T, H, d)."""
        tokens, kv_heads, block_size, dim = qkv.shape[0], k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
        q_dim, kv_dim = heads * dim, kv_heads * dim
        # q and k rotated together: (T, H + kvh, d), one pass instead of two
        qk = apply_rope(
            qkv[:, : q_dim + kv_dim].view(tokens, heads + kv_heads, dim), tables.cos[kind], tables.sin[kind]
        )
        blocks, offsets = batch.slot_mapping // block_size, batch.slot_mapping % block_size
        k_cache[blocks, :, offsets] = qk[:, heads:]
        v_cache[blocks, :, offsets] = qkv[:, q_dim + kv_dim :].view(tokens, kv_heads, dim)
        return qk[:, :heads]

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: StepBatch,
        tables: StepTables,
        spec: AttentionSpec,
        out: torch.Tensor,
    ) -> None:
        """out (B, H, d) = one query per sequence over its cached keys, as two batched matmuls
        (at q length 1 this beats the fused SDPA kernel on CPU by far); GQA by grouping query
        heads per KV head."""
        count, heads, dim = q.shape
        kv_heads, keys_at = k_cache.shape[1], tables.decode_keys
        assert keys_at is not None
        lengths = batch.decode_lengths[:, None]
        visible = keys_at[None, :] < lengths  # (B, M*bs)
        if spec.window is not None:
            visible &= keys_at[None, :] > lengths - 1 - spec.window
        # (B, M, kvh, bs, d) → (B, kvh, M*bs, d): each sequence's blocks in token order
        keys = k_cache[batch.decode_tables].transpose(1, 2).flatten(2, 3)
        values = v_cache[batch.decode_tables].transpose(1, 2).flatten(2, 3)
        grouped = q.view(count, kv_heads, heads // kv_heads, dim)  # (B, kvh, g, d)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() * spec.scale  # (B, kvh, g, L)
        if spec.softcap is not None:
            scores = torch.tanh(scores / spec.softcap) * spec.softcap
        scores.masked_fill_(~visible[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out.copy_(torch.matmul(probs, values).view(count, heads, dim))  # (B, kvh, g, d) → (B, H, d)


class NativeOps(TorchOps):
    """The compiled kernels of one ISA build (fp32 or bf16 CPU tensors)."""

    def __init__(self, dtype: torch.dtype, eps: float, module: ModuleType, level: str) -> None:
        super().__init__(dtype, eps)
        self.module, self.name = module, f"native-{level}"
        self.bgmv = module.bgmv
        self.gemv, self.gemv_int8, self.gemv_q8_0 = module.gemv, module.gemv_int8, module.gemv_q8_0
        tiled = module.packed_gemm_tiled(dtype == torch.bfloat16)
        if tiled and packed_gemm_preferred(dtype, cpu_info().flags):
            self.packed_gemm = module.packed_gemm
        self.w8a8 = W8A8Kernels(module.w8a8_gemm, module.w8a8_quantize, module.w8a8_rescale)
        self.lora_image = module.lora_image

    def prepare(self, batch: StepBatch, rope: RopeTables) -> StepTables:
        return StepTables(rope.cos, rope.sin)  # the kernel indexes the fp32 tables by position

    def add_norm(
        self,
        h: torch.Tensor,
        delta: torch.Tensor | None,
        weight: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty_like(h) if out is None else out
        self.module.add_rms_norm(h, delta, weight, self.eps, out)  # h += delta in place
        return h, out

    def qk_norm(
        self, qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, heads: int, kv_heads: int
    ) -> None:
        self.module.qk_norm(qkv, q_weight, k_weight, heads, kv_heads, self.eps)

    def act_mul(self, gate_up: torch.Tensor, activation: str) -> torch.Tensor:
        kernel = {"silu": self.module.silu_mul, "gelu_tanh": self.module.gelu_tanh_mul}.get(activation)
        if kernel is None:
            return super().act_mul(gate_up, activation)
        out = gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
        kernel(gate_up, out)
        return out

    def rope_and_cache(
        self,
        qkv: torch.Tensor,
        tables: StepTables,
        kind: str,
        batch: StepBatch,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        heads: int,
    ) -> torch.Tensor:
        kv_heads, dim = k_cache.shape[1], k_cache.shape[3]
        self.module.rope_write_kv(
            qkv,
            tables.cos[kind],
            tables.sin[kind],
            batch.rope_rows,
            batch.slot_mapping,
            k_cache,
            v_cache,
            heads,
            kv_heads,
        )
        return qkv[:, : heads * dim].view(qkv.shape[0], heads, dim)

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: StepBatch,
        tables: StepTables,
        spec: AttentionSpec,
        out: torch.Tensor,
    ) -> None:
        self.paged_attention(q, k_cache, v_cache, batch.decode_tables, batch.decode_lengths, spec, out)

    def paged_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        tables: torch.Tensor,
        lengths: torch.Tensor,
        spec: AttentionSpec,
        out: torch.Tensor,
        table_of: torch.Tensor | None = None,
    ) -> None:
        """out (R, H, d): row r's query over the first lengths[r] keys of its blocks, read in
        place: a decode, or a prompt token over its past and the tokens before it
        (``prefill_attention.PagedRows``). Its blocks: tables[table_of[r]] ((S, M) tables), or
        tables[r] without table_of."""
        window, softcap = spec.window or 0, spec.softcap or 0.0
        self.module.decode_attention(
            q, k_cache, v_cache, tables, lengths, out, spec.scale, window, softcap, table_of
        )


def select_ops(dtype: torch.dtype, device: torch.device, eps: float, level: str | None = None) -> TorchOps:
    """The native kernels for fp32/bf16 CPU tensors where they build (the widest ISA this CPU
    runs, or ``level``), else PyTorch."""
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        level = level or cpu_info().isa
        module = cpu_kernels(level)
        if module is not None:
            return NativeOps(dtype, eps, module, level)
    return TorchOps(dtype, eps)
