"""LoRA applied to a built model from outside. Unmerged, every resident adapter sits in a slot of
per-fused-weight stacks and each token of a mixed batch reads its own slot's delta; one backend
class per way of computing that delta (``native``: the compiled BGMV kernel; ``pytorch``: batched
matmuls, every device), each owning its weight layout and building its own step plan. Merged,
one adapter is folded into the base weights (``merged``)."""

from __future__ import annotations

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.layer_ops import TorchOps
from loraserve.model.lora.base import LoraBackend, LoraPlan
from loraserve.model.lora.merged import MergedLora
from loraserve.model.lora.native import NativeLora
from loraserve.model.lora.pytorch import GroupedPlan, TorchLora
from loraserve.model.weights import ModelWeights

__all__ = ["GroupedPlan", "LoraBackend", "LoraPlan", "MergedLora", "NativeLora", "TorchLora", "lora_backend"]


def lora_backend(
    ops: TorchOps,
    args: ModelArgs,
    slots: int,
    rank: int,
    dtype: torch.dtype,
    device: torch.device,
    weights: ModelWeights | None = None,
) -> LoraBackend:
    """The native backend where the runner's ops carry a BGMV kernel, else the PyTorch one."""
    if ops.bgmv is not None:
        return NativeLora(args, slots, rank, dtype, device, ops.bgmv, weights, ops.lora_image)
    return TorchLora(args, slots, rank, dtype, device, weights)
