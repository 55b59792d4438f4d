"""DoRA (weight-decomposed LoRA), as PEFT computes it: a module's output is
``s * (W x + scaling * B A x) + bias`` with the per-output-row scale ``s = m / ||W + scaling B A||``
(``m`` the adapter's magnitude vector, the norm over each row, taken on the base weight).

Unmerged, ``s`` is computed once per adapter and slot at load and applied to the rows of a step
that use a DoRA adapter, after the LoRA delta — the native and PyTorch backends both add the
delta, so one post-step serves both. Merged, ``s`` scales the merged rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraserve.model.args import FUSED, ModelArgs
from loraserve.model.weights import ModelWeights


def dora_row_scale(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, magnitude: torch.Tensor
) -> torch.Tensor:
    """s (out,) fp32 for base rows ``weight`` (out, in), A (r, in), B (out, r), magnitude (out,)."""
    combined = weight.float() + scaling * (b.float() @ a.float())
    return magnitude.float() / torch.linalg.norm(combined, dim=1)


@dataclass
class DoraScales:
    """Per fused weight: (L, S + 1, fused out) row scales in the compute dtype, row 0 (all ones)
    for base tokens, row s + 1 for slot s (ones for a slot without DoRA); and which slots hold a
    DoRA adapter."""

    args: ModelArgs
    weights: ModelWeights
    slots: int
    tables: dict[str, torch.Tensor] = field(default_factory=dict)
    users: dict[str, set[int]] = field(default_factory=lambda: {g: set() for g in FUSED})

    def load(self, slot: int, adapter) -> None:  # type: ignore[no-untyped-def]  # a LoraWeights
        for (layer, module), magnitude in adapter.magnitudes.items():
            group, rows = self.args.module_slice(module)
            if group not in self.tables:
                fan_out = self.args.fused_shape(group)[1]
                embed = self.weights.embed  # the compute dtype and device
                self.tables[group] = torch.ones(
                    self.args.num_layers, self.slots + 1, fan_out, dtype=embed.dtype, device=embed.device
                )
            a, b = adapter.weights[(layer, module)]
            base = self.weights.layers[layer].fused(group)[rows]
            scale = dora_row_scale(base, a, b, adapter.scalings[(layer, module)], magnitude)
            table = self.tables[group]
            table[layer, slot + 1, rows] = scale.to(device=table.device, dtype=table.dtype)
            self.users[group].add(slot)

    def clear(self, slot: int) -> None:
        for group, table in self.tables.items():
            if slot in self.users[group]:
                table[:, slot + 1] = 1.0
                self.users[group].discard(slot)

    def apply(
        self, out: torch.Tensor, layer: int, group: str, token_slots: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """out (T, fused out) of ``group``, base output plus LoRA delta: the rows whose slot holds
        a DoRA adapter become ``s * (out - bias) + bias``, in place."""
        if not self.users[group]:
            return
        table = self.tables[group][layer]  # (S + 1, out)
        if bias is None:  # every row at once: x * 1.0 leaves base and plain-LoRA rows exact
            out.mul_(table.index_select(0, token_slots + 1))
            return
        in_use = torch.zeros(self.slots + 1, dtype=torch.bool, device=token_slots.device)
        in_use[[s + 1 for s in self.users[group]]] = True
        rows = in_use[token_slots + 1].nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        scale = table.index_select(0, token_slots[rows] + 1)  # (n, out)
        picked = out.index_select(0, rows)
        if bias is None:
            out.index_copy_(0, rows, picked * scale)
        else:
            out.index_copy_(0, rows, (picked - bias) * scale + bias)
