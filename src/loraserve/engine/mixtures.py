"""Per-request adapter scales and mixtures: a request may name several adapters with a scale
each, and get ``sum_i scale_i * scaling_i * B_i A_i`` on every targeted module — PEFT's
``add_weighted_adapter(combination_type="cat")``, the exact sum of scaled deltas.

A mixture is served as one more adapter of the engine: its A rows and scaled B columns are the
members' concatenated (rank = the sum of the members' ranks), so it runs unmerged in a slot of
the same mixed batch as every other request — the base weights are never copied or changed.
Its name hashes the members' names, versions and scales, so identical mixtures share their
slot and prefix-cache namespace, and a cache hit never crosses two different mixtures (or a
mixture and a plain adapter, or a member re-registered with other weights).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from loraserve.engine.adapter_cache import AdapterCache, AdapterKey
from loraserve.errors import BadRequestError
from loraserve.model.peft_adapter import LoraWeights

Mixture = tuple[tuple[str, float], ...]  # (adapter name, scale), as a request names them
PREFIX = "mix:"  # names of mixture entries; user adapter names cannot contain ":"


def check_mixture(mixture: Sequence[tuple[str, float]], limit: int) -> Mixture:
    """A request's mixture, validated: 1 to ``limit`` distinct names, finite scales."""
    if not 1 <= len(mixture) <= limit:
        raise BadRequestError(
            f"a request may combine 1 to {limit} adapters "
            f"(option.max_adapters_per_request), got {len(mixture)}"
        )
    names = [name for name, _ in mixture]
    if len(set(names)) != len(names):
        raise BadRequestError(f"adapters are named more than once in one request: {names}")
    for name, scale in mixture:
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise BadRequestError(f"adapter {name}: scale must be a finite number, got {scale!r}")
    return tuple((name, float(scale)) for name, scale in mixture)


def mixture_name(members: Sequence[tuple[AdapterKey, float]]) -> str:
    """The same name for the same members, versions and scales, in any order."""
    canonical = repr(sorted((name, version, scale.hex()) for (name, version), scale in members))
    return PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:20]


def combine(members: Sequence[tuple[LoraWeights, float]], max_rank: int) -> LoraWeights:
    """The members concatenated along the rank: A (sum r, in), B (out, sum r) with each
    member's scale and scaling folded into its B columns."""
    if any(weights.vocab is not None for weights, _ in members):
        raise BadRequestError(
            "adapters with their own embed_tokens / lm_head (modules_to_save, or LoRA on "
            "them) cannot be scaled or mixed per request; call them alone"
        )
    if any(weights.invocation for weights, _ in members):
        raise BadRequestError(
            "activated LoRA adapters (alora_invocation_tokens) cannot be scaled or mixed "
            "per request; call them alone"
        )
    if any(weights.biases for weights, _ in members):
        raise BadRequestError(
            "adapters that trained biases cannot be scaled or mixed per request; call them alone"
        )
    if any(weights.magnitudes for weights, _ in members):
        raise BadRequestError(
            "DoRA adapters cannot be scaled or mixed per request (DoRA's row scale "
            "is not linear in the adapter); call them alone"
        )
    modules = sorted({key for weights, _ in members for key in weights.weights})
    combined: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for key in modules:
        parts = [(w.weights[key], scale * w.scalings[key]) for w, scale in members if key in w.weights]
        a = torch.cat([pa for (pa, _), _ in parts])
        b = torch.cat([(pb.float() * factor).to(pb.dtype) for (_, pb), factor in parts], dim=1)
        if a.shape[0] > max_rank:
            raise BadRequestError(
                f"the mixture's rank on layer {key[0]} {key[1]} is {a.shape[0]} (the sum of "
                f"its adapters' ranks), above option.max_lora_rank={max_rank}"
            )
        combined[key] = (a, b)
    rank = max(a.shape[0] for a, _ in combined.values())
    return LoraWeights(rank=rank, scalings=dict.fromkeys(combined, 1.0), weights=combined)


class Mixtures:
    """The mixture entries of an engine's adapter cache: combined on first use, shared by
    identical mixtures, and forgotten (beyond ``keep_idle`` unused ones) when no request holds
    them. Calls come under the engine's lock."""

    def __init__(self, adapters: AdapterCache, max_rank: int, limit: int, keep_idle: int) -> None:
        self.adapters, self.max_rank, self.limit, self.keep_idle = adapters, max_rank, limit, keep_idle
        self.combined: dict[str, LoraWeights] = {}  # by entry name, oldest first

    def weights(self, name: str) -> LoraWeights:
        return self.combined[name]

    def hold(self, adapter: str | Sequence[tuple[str, float]] | None) -> AdapterKey | None:
        """The adapter version a new request runs with, held until it ends: a name, or a
        mixture (one adapter with a scale other than 1 is a mixture of one)."""
        if not adapter:
            return None
        if isinstance(adapter, str):
            return self.adapters.hold(adapter)
        mixture = check_mixture(adapter, self.limit)
        if len(mixture) == 1 and mixture[0][1] == 1.0:
            return self.adapters.hold(mixture[0][0])
        members: list[tuple[AdapterKey, float]] = []
        try:
            for name, scale in mixture:
                members.append((self.adapters.hold(name), scale))
            name = mixture_name(members)
            if name not in self.adapters.registered:
                weights = combine(
                    [(self.adapters.weights(key), scale) for key, scale in members], self.max_rank
                )
                self.combined[name] = weights
                self.adapters.register(name, name, weights, pinned=False, preload=True)
                self._forget_idle()
            return self.adapters.hold(name)
        finally:
            for key, _ in members:  # the mixture holds copies of their weights
                self.adapters.unhold(key)

    def _forget_idle(self) -> None:
        registered = self.adapters.registered
        idle = [
            name
            for name in self.combined
            if name in registered and not self.adapters.in_use(registered[name].key)
        ]
        for name in idle[: max(0, len(idle) - self.keep_idle)]:
            self.adapters.unregister(name)
            del self.combined[name]
