"""DoRA (weight-decomposed LoRA), as PEFT computes it: a module's output is
``s * (W x + scaling * B A x) + bias`` with the per-output-row scale ``s = m / ||W + scaling B A||``
(``m`` the adapter's magnitude vector, the norm over each row, taken on the base weight).

Unmerged, ``s`` is computed once per adapter and slot at load and applied to the rows of a step
that use a DoRA adapter, after the LoRA delta — the native and PyTorch backends both add the
delta, so one post-step serves both. Merged, ``s`` scales the merged rows.
"""

from __future__ import annotations

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.slot_tables import SlotTables
from loraserve.model.weights import ModelWeights


def dora_row_scale(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, magnitude: torch.Tensor
) -> torch.Tensor:
    """s (out,) fp32 for base rows ``weight`` (out, in), A (r, in), B (out, r), magnitude (out,)."""
    combined = weight.float() + scaling * (b.float() @ a.float())
    return magnitude.float() / torch.linalg.norm(combined, dim=1)


class DoraScales:
    """Row scales per slot (``SlotTables``, neutral 1): ones for base tokens and slots without DoRA."""

    def __init__(self, args: ModelArgs, weights: ModelWeights, slots: int) -> None:
        self.args, self.weights = args, weights
        self.scales = SlotTables(args, weights, slots, neutral=1.0)

    def load(self, slot: int, adapter) -> None:  # type: ignore[no-untyped-def]  # a LoraWeights
        for (layer, module), magnitude in adapter.magnitudes.items():
            group, rows = self.args.module_slice(module)
            a, b = adapter.weights[(layer, module)]
            base = self.weights.layers[layer].fused(group)[rows]
            scale = dora_row_scale(base, a, b, adapter.scalings[(layer, module)], magnitude)
            self.scales.put(group, layer, slot, rows, scale)

    def clear(self, slot: int) -> None:
        self.scales.clear(slot)

    def rows_of(self, group: str, token_slots: torch.Tensor) -> torch.Tensor:
        """The indices of the tokens whose slot holds a DoRA adapter on ``group``."""
        in_use = torch.zeros(self.scales.slots + 1, dtype=torch.bool, device=token_slots.device)
        in_use[[s + 1 for s in self.scales.users[group]]] = True
        return in_use[token_slots + 1].nonzero().squeeze(1)

    def apply(
        self, out: torch.Tensor, layer: int, group: str, token_slots: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """out (T, fused out) of ``group``, base output plus LoRA delta: the rows whose slot holds
        a DoRA adapter become ``s * (out - bias) + bias``, in place."""
        users = self.scales.users[group]
        if not users:
            return
        if bias is None:  # every row at once: x * 1.0 leaves base and plain-LoRA rows exact
            out.mul_(self.scales.rows_for(group, layer, token_slots))
            return
        rows = self.rows_of(group, token_slots)
        if rows.numel() == 0:
            return
        scale = self.scales.rows_for(group, layer, token_slots[rows])  # (n, out)
        out.index_copy_(0, rows, (out.index_select(0, rows) - bias) * scale + bias)
