"""Adapters that trained the base model's biases (PEFT ``bias="all"`` / ``"lora_only"``, saved
as ``<module>.bias`` or ``<module>.base_layer.bias``): each such adapter brings new bias vectors,
served per row of the mixed batch as ``new - base`` added to its tokens' outputs (rows of other
adapters and of the base model add exact zeros), and merged by swapping the bias values."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraserve.model.args import FUSED, ModelArgs
from loraserve.model.weights import ModelWeights


@dataclass
class BiasDeltas:
    """Per fused weight: (L, S + 1, fused out) bias deltas in the compute dtype, row 0 (zeros)
    for base tokens, row s + 1 for slot s."""

    args: ModelArgs
    weights: ModelWeights
    slots: int
    tables: dict[str, torch.Tensor] = field(default_factory=dict)
    users: dict[str, set[int]] = field(default_factory=lambda: {g: set() for g in FUSED})

    def load(self, slot: int, biases: dict[tuple[int, str], torch.Tensor]) -> None:
        for (layer, module), new in biases.items():
            group, rows = self.args.module_slice(module)
            base = self.weights.layers[layer].bias(group)
            assert base is not None  # the adapter reader checked the model has this bias
            if group not in self.tables:
                self.tables[group] = torch.zeros(
                    self.args.num_layers, self.slots + 1, base.shape[0], dtype=base.dtype, device=base.device
                )
            delta = new.to(device=base.device).float() - base[rows].float()
            self.tables[group][layer, slot + 1, rows] = delta.to(base.dtype)
            self.users[group].add(slot)

    def clear(self, slot: int) -> None:
        for group, table in self.tables.items():
            if slot in self.users[group]:
                table[:, slot + 1] = 0
                self.users[group].discard(slot)

    def apply(self, out: torch.Tensor, layer: int, group: str, token_slots: torch.Tensor) -> None:
        """out (T, fused out) += each token's adapter's bias delta, in place."""
        if self.users[group]:
            out.add_(self.tables[group][layer].index_select(0, token_slots + 1))


def bias_problem(biases: dict[tuple[int, str], torch.Tensor], args: ModelArgs) -> str | None:
    """Why these trained biases cannot be served (the model lacks that bias, a wrong shape)."""
    has = {"qkv": args.qkv_bias, "o": args.o_bias, "gate_up": args.mlp_bias, "down": args.mlp_bias}
    for (layer, module), tensor in biases.items():
        group, _ = args.module_slice(module)
        if not has[group]:
            return f"layer {layer} {module}: the adapter trained a bias the base model does not have"
        if tensor.shape != (args.module_shape(module)[1],):
            return f"layer {layer} {module} bias: shape {tuple(tensor.shape)} does not fit the model"
    return None
