"""Typed messages between the HTTP front and the built-in engine's worker.

vLLM v1's ``EngineCoreRequest`` / ``EngineCoreOutput`` / ABORT is the pattern: the front parses
a wire protocol (LMI, OpenAI) once into a ``GenerateRequest``; the worker answers with
``TokenOutput`` events (streaming) or one ``GenerateResult``; a client that goes away makes the
front send a cancel for the call, and the worker aborts its sequences. No torch here: the front
imports this module. DJL ``Input``/``Output`` stays where a user's own ``model.py`` is called.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from loraserve.constraints import OutputConstraint


class FinishReason(str, Enum):
    """Why a sequence stopped (LMI's names; ``openai`` maps them to OpenAI's)."""

    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"
    ABORT = "abort"
    ERROR = "error"

    @property
    def openai(self) -> str:
        return "length" if self is FinishReason.LENGTH else "stop"  # "tool_calls": set by the spec


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters already validated at the edge (finite, in range, strict types);
    the worker turns them into the engine's ``SamplingParams``."""

    max_new_tokens: int | None = 30  # None: what the context leaves; 0: score the prompt only
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    min_p: float = 0.0
    constraint: OutputConstraint | None = None  # structured output; compiled by the worker


@dataclass(frozen=True)
class GenerateRequest:
    """One client request: several prompts (text or token ids; ``n`` sequences each) or one chat
    conversation."""

    sampling: SamplingSpec
    prompts: tuple[str | tuple[int, ...], ...] = ()
    messages: tuple[dict[str, Any], ...] | None = None  # templated in the worker
    adapters: tuple[str | None, ...] = (None,)  # one per sequence; None = base model
    mixture: tuple[tuple[str, float], ...] | None = None  # adapters with scales, for every sequence
    details: bool = False  # per-token ids, texts and log-probs in the result
    logprobs: bool = False  # compute each token's log-prob (LMI details and streams show them)
    stream: bool = False
    n: int = 1  # answers per prompt
    best_of: int | None = None  # sample this many per prompt, answer the n most likely
    top_logprobs: int | None = None  # each token's log-prob as text, and this many alternatives
    echo: bool = False  # the prompt's text (and, with top_logprobs, its tokens' log-probs) first
    tools: tuple[dict[str, Any], ...] | None = None  # OpenAI tool definitions: templated, calls parsed
    required_tool: str | None = None  # "*": some call must be made (tool_choice required); else this one

    @property
    def samples(self) -> int:
        """Sequences run per prompt."""
        return max(self.n, self.best_of or 0)

    @property
    def sequences(self) -> int:
        return (1 if self.messages is not None else len(self.prompts)) * self.samples

    @property
    def adapter_names(self) -> list[str]:
        """Every adapter the request names, once each, in order (the base model is none)."""
        return list(dict.fromkeys([*(n for n in self.adapters if n), *(n for n, _ in self.mixture or ())]))


@dataclass(frozen=True)
class ToolCall:
    """One function call the model wrote, in OpenAI's terms: ``arguments`` is a JSON string."""

    id: str
    name: str
    arguments: str

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return call if index is None else {"index": index, **call}


@dataclass(frozen=True)
class TokenLogprob:
    """One token as OpenAI's log-probs show it: its text, log-prob (None: the prompt's first
    token, which nothing predicts) and the most likely tokens at its position."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class SequenceOutput:
    """A finished sequence."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    tokens: tuple[TokenOutput, ...] = ()  # filled when the request asked for details or log-probs
    prompt_text: str | None = None  # when the request asked for echo
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # echo with log-probs: every prompt token
    cumulative_logprob: float | None = None  # of the generated tokens, when computed
    tool_calls: tuple[ToolCall, ...] = ()  # the calls its text held (then ``text`` is the rest)


@dataclass(frozen=True)
class TokenOutput:
    """One generated token of sequence ``index``; the last one carries the sequence's summary."""

    index: int
    token_id: int
    text: str  # new text since the previous token
    logprob: float | None  # None when not asked for, or not finite
    finish_reason: FinishReason | None = None
    summary: SequenceOutput | None = None
    logprobs: TokenLogprob | None = None  # when the request asked for top_logprobs
    tool_calls: tuple[ToolCall, ...] = ()  # on the last event, when the request had tools


@dataclass(frozen=True)
class GenerateResult:
    """The answer to a non-streaming request, one ``SequenceOutput`` per prompt."""

    sequences: tuple[SequenceOutput, ...]
    peak_batch: int = 0  # largest engine step batch these sequences ran in

    @property
    def generated_tokens(self) -> int:
        return sum(s.generated_tokens for s in self.sequences)


@dataclass(slots=True)
class TokenStream:
    """What the worker-side handler returns for a streaming request; never pickled: the worker
    runtime sends each ``TokenOutput`` as one chunk."""

    events: AsyncIterator[TokenOutput] = field(repr=False)


def finite_or_none(value: float | None) -> float | None:
    """NaN/Inf log-probs would be bare ``NaN`` in JSON, which no client parses: send null."""
    return value if value is not None and math.isfinite(value) else None
