"""One generation request as the engine tracks it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from loraserve.engine.adapter_cache import AdapterKey
from loraserve.wire.messages import FinishReason
from loraserve.wire.sampling import SamplingParams

_ids = itertools.count(1)


class SequenceStatus(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """A token's log-probability under the model, and the most likely tokens with theirs."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(slots=True)
class TokenEvent:
    """What the engine reports per generated token; ``finish_reason`` set on the last one."""

    request_id: int
    token_id: int
    text: str  # new text since the previous event
    logprob: float | None
    finish_reason: FinishReason | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()  # when the request asked for top_logprobs


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: AdapterKey | None
    on_event: Callable[[TokenEvent], Any] | None = None
    rope_variant: int = 0  # LongRoPE: which table its keys were rotated with (0: the usual one)
    lora_from: int = 0  # activated LoRA: the first position its adapter applies to (activation.py)
    request_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs] = field(default_factory=list)  # tokens 1.. of the prompt, when asked
    status: SequenceStatus = SequenceStatus.WAITING
    lora_slot: int = -1
    cached: int = 0  # tokens already in the KV cache
    new_tokens: int = 0  # tokens scheduled for the running step
    block_table: list[int] = field(default_factory=list)  # KV-cache blocks, in token order
    block_hashes: list[bytes] = field(default_factory=list)  # prefix-cache keys of its full blocks
    preemptions: int = 0
    text: str = ""
    emitted: int = 0  # characters of ``text`` already sent
    finish_reason: FinishReason | None = None
    error: str | None = None  # why, when finish_reason is ERROR
    generator: torch.Generator | None = None
    peak_batch: int = 0  # largest step batch this sequence ran in (observability)
    abort_requested: bool = False  # aborted while its step ran: the engine finishes it at step end
    matcher: Any = None  # structured output: its llguidance matcher (engine/structured.py) until it ends

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def scores_prompt(self) -> bool:
        """Whether its prompt still has tokens to score: those must be computed, not read from
        the prefix cache (cached blocks hold KV, not logits)."""
        wanted = self.params.prompt_logprobs is not None
        return wanted and len(self.prompt_logprobs) < len(self.prompt_ids) - 1

    @property
    def client(self) -> str | None:
        """Who is served, for fairness: the adapter's name (None: the base model)."""
        return None if self.adapter is None else self.adapter[0]

    def block_namespace(self, index: int, block_size: int) -> Hashable:
        """Whose weights (and which RoPE table) computed the KV of its block ``index``: prefix-
        cache blocks are shared only within it. Activated LoRA's blocks before its activation
        point hold base-model KV, so they share the base model's namespace (a base request and an
        activated one reuse each other's prefix); the later ones depend on where it activated."""
        namespace: Any = self.adapter
        if self.adapter is not None and self.lora_from:
            before = (index + 1) * block_size <= self.lora_from
            namespace = None if before else (namespace, "activated", self.lora_from)
        return namespace if not self.rope_variant else (namespace, "rope", self.rope_variant)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def total_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)
