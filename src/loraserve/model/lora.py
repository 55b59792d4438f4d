"""LoRA applied to a built model from outside: unmerged stacks for mixed-adapter batches, and
merge/unmerge that folds one adapter into the base weights.

Unmerged: each fused weight (qkv, o, gate_up, down) has slot stacks A and B holding every
resident adapter (scaling folded into B, unused rank rows zero). Where the runner's ops have a
native BGMV kernel (fp32/bf16 on CPU, ``layer_ops``) it computes each token's
``x @ A[slot] @ B[slot]`` directly. Otherwise
decode tokens are grouped by slot into a padded (n, m, in) block — n slots, at most m tokens
each — so a step costs two batched matmuls per fused weight against the stacks themselves (the
work of Punica's BGMV), and prefill tokens use one pair of matmuls per sequence. Slots are
handed out lowest first, so n stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from loraserve.model.args import FUSED, ModelArgs
from loraserve.model.bias_adapter import BiasDeltas
from loraserve.model.dora import DoraScales, dora_row_scale
from loraserve.model.layer_ops import Bgmv
from loraserve.model.peft_adapter import LoraWeights
from loraserve.model.vocab_adapter import VocabSlots, merged_vocab
from loraserve.model.weights import ModelWeights


@dataclass(slots=True)
class LoraPlan:
    """Per-step grouping of tokens by LoRA slot, built once and shared by every layer."""

    token_slots: torch.Tensor  # (T,) every token's slot, -1 = base (all the native kernel needs)
    n: int = 0  # decode groups span slots [0, n)
    m: int = 0  # tokens per group, padded
    gather: torch.Tensor | None = None  # (n*m,) token row per padded position; T = the zero row
    valid: torch.Tensor | None = None  # (k,) padded positions that hold a real token
    rows: torch.Tensor | None = None  # (k,) the token rows of those positions
    prefills: tuple[tuple[int, int, int], ...] = ()  # (flat start, length, slot) with an adapter


def build_plan(decode_slots: list[int], prefills: list[tuple[int, int, int]],
               device: torch.device, grouped: bool = True) -> LoraPlan | None:
    """``decode_slots[i]`` is the LoRA slot of decode token i (-1: base model); ``prefills``
    lists every prefill span of the step, decode tokens first in the flat batch. ``grouped``
    adds the slot grouping the PyTorch path needs."""
    all_prefills = prefills
    prefills = [p for p in prefills if p[2] >= 0]
    if not prefills and all(slot < 0 for slot in decode_slots):
        return None

    def tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    token_slots = list(decode_slots) + [-1] * sum(length for _, length, _ in all_prefills)
    for start, length, slot in prefills:
        token_slots[start:start + length] = [slot] * length
    if not grouped:
        return LoraPlan(tensor(token_slots))
    groups: dict[int, list[int]] = {}
    for row, slot in enumerate(decode_slots):
        if slot >= 0:
            groups.setdefault(slot, []).append(row)
    n = max(groups, default=-1) + 1
    m = max((len(rows) for rows in groups.values()), default=0)
    tokens = len(decode_slots)
    gather = [tokens] * (n * m)
    valid, rows = [], []
    for slot, members in groups.items():
        for j, row in enumerate(members):
            gather[slot * m + j] = row
            valid.append(slot * m + j)
            rows.append(row)
    return LoraPlan(tensor(token_slots), n, m, tensor(gather), tensor(valid), tensor(rows), tuple(prefills))


class LoraStacks:
    """Stacks per fused weight (qkv, o, gate_up, down), so q, k and v (or gate and up) cost one
    pair of batched matmuls together. Columns of A are rank-major: rank index i of module j of a
    k-module group is column ``i*k + j``. For the PyTorch path B is block-diagonal to match:
    row ``i*k + j`` holds module j's B row in that module's output columns. The native kernel
    reads B compactly instead: row i holds rank i of every module, each in its own columns, so a
    token's B is one contiguous stream. A step uses only the largest loaded rank, so rank-8
    adapters do not pay for ``max_lora_rank``."""

    def __init__(self, args: ModelArgs, slots: int, rank: int, dtype: torch.dtype,
                 device: torch.device, bgmv: Bgmv | None = None, weights: ModelWeights | None = None) -> None:
        self.args, self.slots, self.rank = args, slots, rank
        # The native kernel reads stacks in the compute dtype; without it, CPU stacks are fp32:
        # small batched matmuls run 3-4x faster in fp32 than in bf16 there (measured).
        self.kernel = bgmv  # native BGMV: A stored (S, k*r, in), B (S, r, out)
        self.dtype = torch.float32 if device.type == "cpu" and bgmv is None else dtype
        self.device = device
        self.groups = args.lora_groups  # fused weight → the PEFT modules it holds
        self.columns: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
            group: (torch.tensor([args.module_slice(m)[1].start or 0 for m in modules]),
                    torch.tensor([args.module_shape(m)[1] for m in modules]))
            for group, modules in self.groups.items()}
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.a_layers: dict[str, list[torch.Tensor]] = {}
        self.b_layers: dict[str, list[torch.Tensor]] = {}
        self.slot_info: dict[str, torch.Tensor] = {}  # for the native kernel: (S, 2) rank, module bits
        self.users: dict[str, set[int]] = {g: set() for g in FUSED}
        self.ranks: dict[int, int] = {}  # slot → rank of the adapter loaded there
        self.used_rank = rank  # the largest loaded rank: steps read only that many rank rows
        self.dora = DoraScales(args, weights, slots) if weights is not None else None
        self.vocab = VocabSlots(device)  # embed_tokens / lm_head parts, per slot
        self.biases = BiasDeltas(args, weights, slots) if weights is not None else None

    def _stack(self, group: str) -> tuple[torch.Tensor, torch.Tensor]:
        if group not in self.a:  # allocated on first use: q,v-only adapters never pay for MLP
            modules = self.groups[group]
            fan_in, fan_out = self.args.fused_shape(group)
            width, n = len(modules) * self.rank, self.args.num_layers
            shape = (n, self.slots, width, fan_in) if self.kernel else (n, self.slots, fan_in, width)
            self.a[group] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            rows = self.rank if self.kernel else width
            self.b[group] = torch.zeros(n, self.slots, rows, fan_out, dtype=self.dtype, device=self.device)
            self.a_layers[group] = list(self.a[group].unbind(0))  # per-layer views, indexed once
            self.b_layers[group] = list(self.b[group].unbind(0))
            # per slot: the adapter's rank and which of the group's modules it targets
            self.slot_info[group] = torch.zeros(self.slots, 2, dtype=torch.long)
        return self.a[group], self.b[group]

    def load(self, slot: int, adapter: LoraWeights) -> None:
        self.clear(slot)
        self.ranks[slot] = adapter.rank  # the slot's rank: modules of smaller rank leave zero rows
        self._update_used_rank()
        for (layer, module), (a, b) in adapter.weights.items():
            r = a.shape[0]  # this module's rank (rank_pattern)
            group, rows = self.args.module_slice(module)
            k = len(self.groups[group])
            cols = slice(self.groups[group].index(module), k * r, k)  # rank-major interleave
            stack_a, stack_b = self._stack(group)
            if self.kernel:
                stack_a[layer, slot, cols, :] = a.to(self.device, self.dtype)
            else:
                stack_a[layer, slot, :, cols] = a.t().to(self.device, self.dtype)
            scaled_b = (b.float().t() * adapter.scalings[(layer, module)]).to(self.device, self.dtype)
            stack_b[layer, slot, slice(0, r) if self.kernel else cols, rows] = scaled_b
            self.users[group].add(slot)
            self.slot_info[group][slot, 0] = adapter.rank
            self.slot_info[group][slot, 1] |= 1 << self.groups[group].index(module)
        self.vocab.load(slot, adapter.vocab)
        if adapter.biases:
            if self.biases is None:
                raise ValueError("trained biases need the base weights (LoraStacks(..., weights=...))")
            self.biases.load(slot, adapter.biases)
        if adapter.magnitudes:
            if self.dora is None:
                raise ValueError("DoRA adapters need the base weights (LoraStacks(..., weights=...))")
            self.dora.load(slot, adapter)

    def _update_used_rank(self) -> None:
        self.used_rank = max(self.ranks.values(), default=self.rank)

    def clear(self, slot: int) -> None:
        self.vocab.clear(slot)
        if self.biases is not None:
            self.biases.clear(slot)
        if self.dora is not None:
            self.dora.clear(slot)
        self.ranks.pop(slot, None)
        self._update_used_rank()
        for group in FUSED:
            if slot in self.users[group]:
                self.a[group][:, slot] = 0
                self.b[group][:, slot] = 0
                self.slot_info[group][slot] = 0
                self.users[group].discard(slot)

    def grouped_input(self, x: torch.Tensor, plan: LoraPlan) -> torch.Tensor | None:
        """Decode rows of x arranged (n, m, in) by slot, zero-padded."""
        if plan.n == 0 or plan.gather is None:
            return None
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])]).to(self.dtype)
        return padded.index_select(0, plan.gather).view(plan.n, plan.m, x.shape[1])

    def add_delta(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, plan: LoraPlan,
                  bias: torch.Tensor | None = None) -> None:
        """out (T, fused out) += the LoRA outputs of every module of ``group``; then DoRA's row
        scale on the tokens of DoRA adapters (``bias``: the one already in ``out``)."""
        if self.users[group]:
            self._add_lora(out, x, layer, group, plan)
        if self.dora is not None:
            self.dora.apply(out, layer, group, plan.token_slots, bias)
        if self.biases is not None:
            self.biases.apply(out, layer, group, plan.token_slots)

    def _add_lora(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, plan: LoraPlan) -> None:
        if self.kernel is not None:
            starts, lengths = self.columns[group]
            self.kernel(x.contiguous(), plan.token_slots, self.a_layers[group][layer],
                        self.b_layers[group][layer], out, len(self.groups[group]), self.used_rank,
                        starts, lengths, self.slot_info[group])
            return
        width = len(self.groups[group]) * self.used_rank
        a = self.a[group][layer, :, :, :width]  # (S, in, k*r_used)
        b = self.b[group][layer, :, :width]  # (S, k*r_used, out)
        grouped = self.grouped_input(x, plan)
        if grouped is not None and plan.valid is not None and plan.rows is not None:
            y = torch.bmm(torch.bmm(grouped, a[:plan.n]), b[:plan.n])  # (n, m, out)
            delta = y.view(plan.n * plan.m, -1).index_select(0, plan.valid).to(out.dtype)
            out.index_add_(0, plan.rows, delta)
        for start, length, slot in plan.prefills:
            if slot in self.users[group]:
                piece = x[start:start + length].to(self.dtype)
                out[start:start + length] += ((piece @ a[slot]) @ b[slot]).to(out.dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.a.values(), *self.b.values()])


class MergedLora:
    """Fold one adapter into the weights; unmerge restores the saved originals bit for bit."""

    def __init__(self, args: ModelArgs, weights: ModelWeights,
                 on_change: Callable[[int], None] | None = None,
                 on_head_change: Callable[[], None] | None = None) -> None:
        self.args, self.weights = args, weights
        self.on_change = on_change or (lambda _layer: None)
        self.on_head_change = on_head_change or (lambda: None)
        self.originals: dict[tuple[int, str], torch.Tensor] = {}
        self.bias_originals: dict[tuple[int, str], torch.Tensor] = {}  # (layer, fused) → bias
        self.vocab_originals: tuple[torch.Tensor, torch.Tensor] | None = None  # (embed, lm_head)
        self.current: str | None = None

    def merge(self, key: str, adapter: LoraWeights) -> None:
        self.unmerge()
        for (layer, module), (a, b) in adapter.weights.items():
            fused, rows = self.args.module_slice(module)
            target = self.weights.layers[layer].fused(fused)
            if (layer, fused) not in self.originals:
                self.originals[(layer, fused)] = target.clone()
            scaling = adapter.scalings[(layer, module)]
            merged = target[rows].float() + (b.float() @ a.float()) * scaling  # (out, in)
            if (layer, module) in adapter.magnitudes:  # DoRA: rows rescaled to the magnitude
                scale = dora_row_scale(self.originals[(layer, fused)][rows], a, b, scaling,
                                       adapter.magnitudes[(layer, module)])
                merged = merged * scale[:, None]
            target[rows] = merged.to(target.dtype)
        for (layer, module), new in adapter.biases.items():  # trained biases: swapped in
            fused, rows = self.args.module_slice(module)
            bias = self.weights.layers[layer].bias(fused)
            assert bias is not None
            if (layer, fused) not in self.bias_originals:
                self.bias_originals[(layer, fused)] = bias.clone()
            bias[rows] = new.to(bias.dtype)
        for layer in {layer for layer, _ in adapter.weights}:
            self.on_change(layer)
        if adapter.vocab is not None:  # new matrices: a tied head stays the base embedding
            self.vocab_originals = (self.weights.embed, self.weights.lm_head)
            self.weights.embed, self.weights.lm_head = merged_vocab(*self.vocab_originals, adapter.vocab)
            self.on_head_change()
        self.current = key

    def unmerge(self) -> None:
        for (layer, fused), original in self.originals.items():
            self.weights.layers[layer].fused(fused).copy_(original)
        for (layer, fused), original in self.bias_originals.items():
            self.weights.layers[layer].bias(fused).copy_(original)  # type: ignore[union-attr]
        self.bias_originals.clear()
        for layer in {layer for layer, _ in self.originals}:
            self.on_change(layer)
        self.originals.clear()
        if self.vocab_originals is not None:
            self.weights.embed, self.weights.lm_head = self.vocab_originals
            self.vocab_originals = None
            self.on_head_change()
        self.current = None
