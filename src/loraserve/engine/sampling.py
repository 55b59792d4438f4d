"""Per-request sampling parameters (LMI/vLLM names), checked on construction, and the sampler.

The engine validates its own inputs even though the HTTP front does too: one request with a
NaN temperature or a 1e-40 repetition penalty must be refused (400 naming the field), never
reach the batch where it could fail everyone's step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import TypeVar

import torch

from loraserve.constraints import OutputConstraint
from loraserve.errors import BadRequestError

MAX_NEW_TOKENS = 1 << 20  # the engine's max_model_len bounds it further per request
MAX_TOP_K = (1 << 31) - 1
MAX_SEED = (1 << 63) - 1
PENALTY_RANGE = (0.01, 100.0)  # outside it the CTRL penalty turns logits into inf or 0
Num = TypeVar("Num", int, float)
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_LOGIT_BIAS = 300  # entries; OpenAI's own limit
MAX_STOP_TOKEN_IDS = 64


def _bad(name: str, rule: str, value: object) -> BadRequestError:
    return BadRequestError(f"{name} must be {rule}, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(name, f"an integer in [{low}, {high}]", value)


def _check_real(name: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (low_open and value == low):  # type: ignore[operator]
        bracket = "(" if low_open else "["
        raise _bad(name, f"a finite number in {bracket}{low}, {high}]", value)


@dataclass(slots=True)
class SamplingParams:
    max_new_tokens: int = 30
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    details: bool = False
    logprobs: bool = False  # compute each token's log-probability (details and streams need it)
    top_logprobs: int = 0  # and this many most likely alternatives per generated token
    prompt_logprobs: int | None = None  # score the prompt: each token's log-prob (+ this many top)
    presence_penalty: float = 0.0  # OpenAI's: minus this once for every token already generated
    frequency_penalty: float = 0.0  # minus this times how often it was generated
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    min_tokens: int = 0  # no EOS, stop token or stop string before this many tokens
    stop_token_ids: list[int] = field(default_factory=list)  # end (like EOS) on any of these
    min_p: float = 0.0  # drop tokens below min_p times the most likely one's probability
    constraint: OutputConstraint | None = None  # structured output: a token mask per step

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        _check_real("temperature", self.temperature, 0.0, 1e6)
        _check_int("top_k", self.top_k, 0, MAX_TOP_K)
        _check_real("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_real("repetition_penalty", self.repetition_penalty, *PENALTY_RANGE)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        for name in ("do_sample", "ignore_eos", "details", "logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "true or false", getattr(self, name))
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise _bad("stop", "a list of strings", self.stop)
        _check_int("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)
        if self.prompt_logprobs is not None:
            _check_int("prompt_logprobs", self.prompt_logprobs, 0, MAX_TOP_LOGPROBS)
        _check_real("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_real("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_real("min_p", self.min_p, 0.0, 1.0)
        _check_int("min_tokens", self.min_tokens, 0, self.max_new_tokens)
        if not isinstance(self.logit_bias, dict) or len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise _bad("logit_bias", f"an object of at most {MAX_LOGIT_BIAS} token ids", self.logit_bias)
        for token, bias in self.logit_bias.items():
            _check_int("logit_bias key", token, 0, MAX_TOP_K)
            _check_real(f"logit_bias[{token}]", bias, -100.0, 100.0)
        if not isinstance(self.stop_token_ids, list) or len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            rule = f"a list of at most {MAX_STOP_TOKEN_IDS} token ids"
            raise _bad("stop_token_ids", rule, self.stop_token_ids)
        for token in self.stop_token_ids:
            _check_int("stop_token_ids", token, 0, MAX_TOP_K)
        self._check_constraint()
        if self.temperature == 0:
            self.do_sample = False

    def _check_constraint(self) -> None:
        """A constraint ends its sequence when complete and allows EOS only then: ``ignore_eos``
        and ``min_tokens`` would fight it (a row with no allowed token), so they are refused."""
        if self.constraint is None:
            return
        if not isinstance(self.constraint, OutputConstraint):
            raise _bad("constraint", "an OutputConstraint", self.constraint)
        for name in ("ignore_eos", "min_tokens"):
            if getattr(self, name):
                raise BadRequestError(f"{name} cannot be combined with structured output "
                                      f"({self.constraint.describe()}): the constraint decides where it ends")

    @property
    def shapes_logits(self) -> bool:
        """Whether the logits are changed before the choice (penalties, biases, a structured-output
        mask); these rows leave the batched greedy path. ``min_tokens`` is checked per step by the
        sampler."""
        return self.adjusts_logits or self.constraint is not None

    @property
    def adjusts_logits(self) -> bool:
        """Whether penalties or biases change its logits (a constrained greedy row without them
        is masked and chosen in one batch with the others like it)."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0 or bool(self.logit_bias))


def _number(name: str, value: object, kind: type[Num]) -> Num:
    """A JSON number or numeric string as ``kind``; an integral float passes as an int."""
    if isinstance(value, bool):
        raise _bad(name, "a number", value)
    try:
        number = float(value) if isinstance(value, str) else value
        if kind is int and isinstance(number, float):
            if not number.is_integer():
                raise ValueError
            number = int(number)
        if isinstance(number, str) or not isinstance(number, Real):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise _bad(name, "an integer" if kind is int else "a number", value) from None
    return kind(number)  # type: ignore[call-overload]  # a Real; range checks happen in SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """CTRL-style, as transformers does it: shrink the logits of tokens already present."""
    scores = logits[seen]
    logits[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)


def apply_occurrence_penalties(logits: torch.Tensor, output_ids: list[int], presence: float,
                               frequency: float) -> None:
    """OpenAI's presence and frequency penalties over the generated tokens (as vLLM applies
    them; the prompt does not count): logit -= frequency * count + presence * (count > 0)."""
    if not output_ids or (presence == 0.0 and frequency == 0.0):
        return
    counts = torch.bincount(torch.tensor(output_ids, device=logits.device), minlength=logits.numel())
    counts = counts[: logits.numel()].to(logits.dtype)
    logits -= frequency * counts + presence * (counts > 0).to(logits.dtype)


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least ``min_p`` times the most likely one's."""
    probs = torch.softmax(logits, -1)
    return logits.masked_fill(probs < min_p * probs.max(), float("-inf"))


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int | None:
    """One token from a (vocab,) row after temperature, min-p, top-k and top-p (vLLM's order);
    None when the row holds NaN/+inf (a broken adapter, an overflow): that sequence fails, the
    batch goes on. -inf entries are tokens masked out on purpose (biases, min_tokens)."""
    if bool(torch.isnan(logits).any() | torch.isposinf(logits).any() | torch.isneginf(logits).all()):
        return None
    if not params.do_sample:
        return int(torch.argmax(logits))
    logits = logits / max(params.temperature, 1e-5)
    if params.min_p > 0.0:
        logits = apply_min_p(logits, params.min_p)
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, -1) > params.top_p
        logits = logits.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, -1)
    if not bool(torch.isfinite(probs).all()):
        return None  # e.g. a tiny temperature overflowing the scaled logits
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)  # per-request seeded generators live on the CPU
    return int(torch.multinomial(probs, 1, generator=generator))
