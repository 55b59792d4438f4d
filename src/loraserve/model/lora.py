"""LoRA applied to a built model from outside: unmerged stacks for mixed-adapter batches, and
merge/unmerge that folds one adapter into the base weights.

Unmerged layout, per layer and module: ``A`` is (in, S*r) and ``B`` is (S*r, out), S resident
slots of rank ``r = max_lora_rank`` each, scaling folded into B, unused rank rows zero. A step
computes ``((x @ A) * mask) @ B`` where ``mask`` (T, S*r) keeps each token's own slot block:
two GEMMs for the whole batch however many adapters it mixes (a dense cousin of Punica's
BGMV). Only the first ``n`` slots in use are touched (slots are handed out lowest first).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from loraserve.model.llama import LORA_MODULES, LlamaArgs, LlamaWeights, module_slice
from loraserve.model.peft_adapter import LoraWeights


class LoraStacks:
    def __init__(self, args: LlamaArgs, slots: int, rank: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.args, self.slots, self.rank = args, slots, rank
        self.dtype, self.device = dtype, device
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.users: dict[str, set[int]] = {m: set() for m in LORA_MODULES}

    def _stack(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        if module not in self.a:  # allocated on first use: q,v-only adapters never pay for MLP
            fan_in, fan_out = self.args.module_shape(module)
            n, sr = self.args.num_layers, self.slots * self.rank
            self.a[module] = torch.zeros(n, fan_in, sr, dtype=self.dtype, device=self.device)
            self.b[module] = torch.zeros(n, sr, fan_out, dtype=self.dtype, device=self.device)
        return self.a[module], self.b[module]

    def load(self, slot: int, adapter: LoraWeights) -> None:
        self.clear(slot)
        cols = slice(slot * self.rank, slot * self.rank + adapter.rank)
        for (layer, module), (a, b) in adapter.weights.items():
            stack_a, stack_b = self._stack(module)
            stack_a[layer, :, cols] = a.t().to(self.device, self.dtype)
            stack_b[layer, cols, :] = (b.float().t() * adapter.scaling).to(self.device, self.dtype)
            self.users[module].add(slot)

    def clear(self, slot: int) -> None:
        cols = slice(slot * self.rank, (slot + 1) * self.rank)
        for module in LORA_MODULES:
            if slot in self.users[module]:
                self.a[module][:, :, cols] = 0
                self.b[module][:, cols, :] = 0
                self.users[module].discard(slot)

    def build_mask(self, token_slots: list[int]) -> tuple[torch.Tensor | None, int]:
        """(T, n*r) mask and n, the number of leading slots the step needs; None: no LoRA."""
        used = [s for s in token_slots if s >= 0]
        if not used:
            return None, 0
        n = max(used) + 1
        mask = torch.zeros(len(token_slots), n, self.rank, dtype=self.dtype, device=self.device)
        rows = torch.tensor([i for i, s in enumerate(token_slots) if s >= 0], device=self.device)
        mask[rows, torch.tensor(used, device=self.device)] = 1
        return mask.view(len(token_slots), n * self.rank), n

    def delta(self, x: torch.Tensor, layer: int, module: str, mask: torch.Tensor,
              n: int) -> torch.Tensor | None:
        """LoRA output (T, out) of ``module`` for x (T, in), or None if no active slot uses it."""
        users = self.users[module]
        if not users or min(users) >= n:
            return None
        width = n * self.rank
        a = self.a[module][layer, :, :width]  # (in, n*r)
        b = self.b[module][layer, :width]  # (n*r, out)
        return ((x @ a) * mask) @ b

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.a.values(), *self.b.values()])


class MergedLora:
    """Fold one adapter into the weights; unmerge restores the saved originals bit for bit."""

    def __init__(self, args: LlamaArgs, weights: LlamaWeights,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.args, self.weights = args, weights
        self.on_change = on_change or (lambda _layer: None)
        self.originals: dict[tuple[int, str], torch.Tensor] = {}
        self.current: str | None = None

    def merge(self, key: str, adapter: LoraWeights) -> None:
        self.unmerge()
        for (layer, module), (a, b) in adapter.weights.items():
            fused, rows = module_slice(self.args, module)
            target = self.weights.layers[layer][fused]
            assert target is not None
            if (layer, fused) not in self.originals:
                self.originals[(layer, fused)] = target.clone()
            delta = (b.float() @ a.float()) * adapter.scaling  # (out, in)
            target[rows] = (target[rows].float() + delta).to(target.dtype)
        for layer in {layer for layer, _ in adapter.weights}:
            self.on_change(layer)
        self.current = key

    def unmerge(self) -> None:
        for (layer, fused), original in self.originals.items():
            self.weights.layers[layer][fused].copy_(original)  # type: ignore[union-attr]
        for layer in {layer for layer, _ in self.originals}:
            self.on_change(layer)
        self.originals.clear()
        self.current = None
