"""Merged LoRA: one adapter folded into the base weights (its DoRA row scales, trained biases
and vocabulary matrices too); unmerge restores the saved originals bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from loraserve.model.args import ModelArgs
from loraserve.model.dora import dora_row_scale
from loraserve.model.peft_adapter import LoraWeights
from loraserve.model.vocab_adapter import merged_vocab
from loraserve.model.weights import ModelWeights


class MergedLora:
    """Fold one adapter into the weights; unmerge restores the saved originals bit for bit."""

    def __init__(
        self,
        args: ModelArgs,
        weights: ModelWeights,
        on_change: Callable[[int], None] | None = None,
        on_head_change: Callable[[], None] | None = None,
    ) -> None:
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
                scale = dora_row_scale(
                    self.originals[(layer, fused)][rows], a, b, scaling, adapter.magnitudes[(layer, module)]
                )
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
