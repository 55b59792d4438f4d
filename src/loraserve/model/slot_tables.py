"""Per-slot row vectors of the fused weights, for adapter kinds that act on a projection's output
after its LoRA delta (DoRA's row scale, trained biases' deltas): one (L, S + 1, fused out) table
per fused weight in the compute dtype, allocated on first use; row 0 serves base tokens (slot -1)
and, like the row of a slot without such an adapter, holds the neutral value."""

from __future__ import annotations

import torch

from loraserve.model.args import FUSED, ModelArgs
from loraserve.model.weights import ModelWeights


class SlotTables:
    def __init__(self, args: ModelArgs, weights: ModelWeights, slots: int, neutral: float) -> None:
        self.args, self.weights, self.slots, self.neutral = args, weights, slots, neutral
        self.tables: dict[str, torch.Tensor] = {}
        self.users: dict[str, set[int]] = {g: set() for g in FUSED}  # slots with values, per group

    def put(self, group: str, layer: int, slot: int, rows: slice, values: torch.Tensor) -> None:
        if group not in self.tables:
            embed = self.weights.embed  # the compute dtype and device
            self.tables[group] = torch.full(
                (self.args.num_layers, self.slots + 1, self.args.fused_shape(group)[1]),
                self.neutral,
                dtype=embed.dtype,
                device=embed.device,
            )
        table = self.tables[group]
        table[layer, slot + 1, rows] = values.to(device=table.device, dtype=table.dtype)
        self.users[group].add(slot)

    def clear(self, slot: int) -> None:
        for group, table in self.tables.items():
            if slot in self.users[group]:
                table[:, slot + 1] = self.neutral
                self.users[group].discard(slot)

    def rows_for(self, group: str, layer: int, token_slots: torch.Tensor) -> torch.Tensor:
        """(T, fused out): each token's row (the neutral one for base tokens)."""
        return self.tables[group][layer].index_select(0, token_slots + 1)
