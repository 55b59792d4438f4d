"""What every unmerged LoRA backend shares: the slots' bookkeeping (ranks, which fused weights a
slot uses) and the adapter kinds that act beside the LoRA delta, the same for every backend —
DoRA's row scale, trained biases, an adapter's own vocabulary matrices. A backend adds only its
stacks' layout, its step plan and the delta itself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from loraserve.model.args import FUSED, ModelArgs
from loraserve.model.bias_adapter import BiasDeltas
from loraserve.model.dora import DoraScales
from loraserve.model.peft_adapter import LoraWeights
from loraserve.model.vocab_adapter import VocabSlots
from loraserve.model.weights import ModelWeights

Span = tuple[int, int, int]  # a prefill span of the flat batch: (start, length, slot; -1 = base)


@dataclass(slots=True)
class LoraPlan:
    """A step's tokens by LoRA slot, built once per step by the backend and read by every layer."""

    token_slots: torch.Tensor  # (T,) every token's slot, -1 = base


def token_slots(decode_slots: list[int], prefills: list[Span]) -> list[int] | None:
    """Every token's slot (decode tokens first, then the prefill spans in order), or None when no
    token of the step uses an adapter."""
    if all(slot < 0 for slot in decode_slots) and all(slot < 0 for _, _, slot in prefills):
        return None
    slots = list(decode_slots) + [-1] * sum(length for _, length, _ in prefills)
    for start, length, slot in prefills:
        if slot >= 0:
            slots[start : start + length] = [slot] * length
    return slots


class LoraBackend(ABC):
    """Stacks A and B per fused weight (qkv, o, gate_up, down), so q, k and v (or gate and up)
    cost one delta together; B holds ``scaling * B`` and rank rows an adapter lacks stay zero. A
    step reads only the largest loaded rank, so rank-8 adapters do not pay for ``max_lora_rank``.
    Stacks are allocated on first use: q,v-only adapters never pay for the MLP's."""

    def __init__(
        self,
        args: ModelArgs,
        slots: int,
        rank: int,
        dtype: torch.dtype,
        device: torch.device,
        weights: ModelWeights | None = None,
    ) -> None:
        self.args, self.slots, self.rank = args, slots, rank
        self.device = device
        self.dtype = self.stack_dtype(dtype)
        self.groups = args.lora_groups  # fused weight → the PEFT modules it holds
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.a_layers: dict[str, list[torch.Tensor]] = {}  # per-layer views, indexed once
        self.b_layers: dict[str, list[torch.Tensor]] = {}
        self.users: dict[str, set[int]] = {g: set() for g in FUSED}
        self.ranks: dict[int, int] = {}  # slot → rank of the adapter loaded there
        self.used_rank = rank  # the largest loaded rank
        self.dora = DoraScales(args, weights, slots) if weights is not None else None
        self.vocab = VocabSlots(device)  # embed_tokens / lm_head parts, per slot
        self.biases = BiasDeltas(args, weights, slots) if weights is not None else None

    def stack_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The stacks' dtype for compute dtype ``dtype``."""
        return dtype

    @abstractmethod
    def stack_shapes(self, group: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of ``group``'s A and B stacks, (L, S, ...) each."""

    @abstractmethod
    def write(self, group: str, layer: int, slot: int, module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        """Put one module's A (r, in) and scaled B^T (r, module out) into the stacks."""

    @abstractmethod
    def plan(self, decode_slots: list[int], prefills: list[Span]) -> LoraPlan | None:
        """The step's plan: ``decode_slots[i]`` is decode token i's slot (-1: base); ``prefills``
        every prefill span of the step (decode tokens come first in the flat batch)."""

    @abstractmethod
    def add_lora(self, out: torch.Tensor, x: torch.Tensor, layer: int, group: str, plan: LoraPlan) -> None:
        """out (T, fused out) += each token's LoRA delta of ``group`` for input x (T, in)."""

    def stacks(self, group: str) -> tuple[torch.Tensor, torch.Tensor]:
        if group not in self.a:
            a_shape, b_shape = self.stack_shapes(group)
            self.a[group] = torch.zeros(a_shape, dtype=self.dtype, device=self.device)
            self.b[group] = torch.zeros(b_shape, dtype=self.dtype, device=self.device)
            self.a_layers[group] = list(self.a[group].unbind(0))
            self.b_layers[group] = list(self.b[group].unbind(0))
        return self.a[group], self.b[group]

    def prepare(self, adapter: LoraWeights) -> None:  # noqa: B027 (an optional hook)
        """Work for installing ``adapter`` that can be done ahead, off the engine thread (when
        it is read into memory); none by default."""

    def load(self, slot: int, adapter: LoraWeights) -> None:
        self.clear(slot)
        self.ranks[slot] = adapter.rank  # modules of smaller rank (rank_pattern) leave zero rows
        self.used_rank = max(self.ranks.values())
        self.load_lora(slot, adapter)
        self.vocab.load(slot, adapter.vocab)
        for extra, present in ((self.biases, adapter.biases), (self.dora, adapter.magnitudes)):
            if present and extra is None:
                raise ValueError("DoRA and trained biases need the base weights (weights=...)")
        if adapter.biases:
            self.biases.load(slot, adapter.biases)  # type: ignore[union-attr]
        if adapter.magnitudes:
            self.dora.load(slot, adapter)  # type: ignore[union-attr]

    def load_lora(self, slot: int, adapter: LoraWeights) -> None:
        """The LoRA matrices into the slot's rows of the stacks, module by module."""
        for (layer, module), (a, b) in adapter.weights.items():
            group, _ = self.args.module_slice(module)
            scaled_b = b.float().t() * adapter.scalings[(layer, module)]  # (r, module out)
            self.write(group, layer, slot, module, a.to(self.device), scaled_b.to(self.device))
            self.users[group].add(slot)

    def zero_slot(self, group: str, slot: int) -> None:
        """A freed slot's rows back to zero (a backend may read every slot's rows)."""
        self.a[group][:, slot] = 0
        self.b[group][:, slot] = 0

    def clear(self, slot: int) -> None:
        self.vocab.clear(slot)
        for extra in (self.biases, self.dora):
            if extra is not None:
                extra.clear(slot)
        self.ranks.pop(slot, None)
        self.used_rank = max(self.ranks.values(), default=self.rank)
        for group in FUSED:
            if slot in self.users[group]:
                self.zero_slot(group, slot)
                self.users[group].discard(slot)

    def add_delta(
        self,
        out: torch.Tensor,
        x: torch.Tensor,
        layer: int,
        group: str,
        plan: LoraPlan,
        bias: torch.Tensor | None = None,
    ) -> None:
        """out (T, fused out) += the LoRA outputs of every module of ``group``; then DoRA's row
        scale on the tokens of DoRA adapters (``bias``: the one already in ``out``) and trained
        biases' deltas."""
        if self.users[group]:
            self.add_lora(out, x, layer, group, plan)
        if self.dora is not None:
            self.dora.apply(out, layer, group, plan.token_slots, bias)
        if self.biases is not None:
            self.biases.apply(out, layer, group, plan.token_slots)

    def module_columns(self, group: str, module: str, rank: int) -> slice:
        """Module j of a k-module group holds the A rows (or columns) ``i*k + j``, rank-major."""
        modules = self.groups[group]
        return slice(modules.index(module), len(modules) * rank, len(modules))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.a.values(), *self.b.values()])
