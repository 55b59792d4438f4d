"""Adapters that trained the base model's biases (PEFT ``bias="all"`` / ``"lora_only"``, saved
as ``<module>.bias`` or ``<module>.base_layer.bias``): each such adapter brings new bias vectors,
served per row of the mixed batch as ``new - base`` added to its tokens' outputs (rows of other
adapters and of the base model add exact zeros), and merged by swapping the bias values."""

from __future__ import annotations

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.slot_tables import SlotTables
from loraserve.model.weights import ModelWeights


class BiasDeltas:
    """Bias deltas per slot (``SlotTables``, neutral 0): zeros for base tokens and other slots."""

    def __init__(self, args: ModelArgs, weights: ModelWeights, slots: int) -> None:
        self.args, self.weights = args, weights
        self.deltas = SlotTables(args, weights, slots, neutral=0.0)

    def load(self, slot: int, biases: dict[tuple[int, str], torch.Tensor]) -> None:
        for (layer, module), new in biases.items():
            group, rows = self.args.module_slice(module)
            base = self.weights.layers[layer].bias(group)
            assert base is not None  # the adapter reader checked the model has this bias
            self.deltas.put(group, layer, slot, rows, new.to(base.device).float() - base[rows].float())

    def clear(self, slot: int) -> None:
        self.deltas.clear(slot)

    def apply(self, out: torch.Tensor, layer: int, group: str, token_slots: torch.Tensor) -> None:
        """out (T, fused out) += each token's adapter's bias delta, in place."""
        if self.deltas.users[group]:
            out.add_(self.deltas.rows_for(group, layer, token_slots))


def bias_problem(biases: dict[tuple[int, str], torch.Tensor], args: ModelArgs) -> str | None:
    """Why these trained biases (of the right shapes) cannot be served: the model lacks them."""
    has = {"qkv": args.qkv_bias, "o": args.o_bias, "gate_up": args.mlp_bias, "down": args.mlp_bias}
    for layer, module in biases:
        group, _ = args.module_slice(module)
        if not has[group]:
            return f"layer {layer} {module}: the adapter trained a bias the base model does not have"
    return None
