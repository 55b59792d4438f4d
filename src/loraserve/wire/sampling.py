"""Sampling parameters and their bounds, decided once: the HTTP specs build their field
constraints from ``Bound``s here, and the engine's ``SamplingParams`` checks itself against the
same ones on construction. The engine checks even though the front did: one request with a NaN
temperature or a 1e-40 repetition penalty must be refused (400 naming the field), never reach
the batch where it could fail everyone's step. Torch-free: the front imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

from loraserve.constraints import OutputConstraint
from loraserve.errors import BadRequestError


@dataclass(frozen=True, slots=True)
class Bound:
    """A closed range, or half-open at ``low`` when ``low_open``."""

    low: float
    high: float
    low_open: bool = False

    def holds(self, value: float) -> bool:
        return (self.low < value if self.low_open else self.low <= value) and value <= self.high

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}]"


INT32 = 2**31 - 1
MAX_TOKENS = Bound(1, INT32)  # the model's context bounds it further, per request
TEMPERATURE = Bound(0, 100)
TOP_P = Bound(0, 1, low_open=True)
TOP_K = Bound(0, INT32)  # 0: off (the edge also takes vLLM's -1 for off)
REPETITION_PENALTY = Bound(0.01, 100)  # below 0.01 the CTRL penalty divides logits into infinities
SEED = Bound(0, 2**53 - 1)  # exact in a JSON number everywhere
OCCURRENCE_PENALTY = Bound(-2, 2)  # OpenAI's presence_penalty and frequency_penalty
MIN_P = Bound(0, 1)
LOGIT_BIAS = Bound(-100, 100)
TOKEN_ID = Bound(0, INT32)
TOP_LOGPROBS = Bound(0, 20)  # OpenAI's bound
MAX_LOGIT_BIAS = 300  # entries; OpenAI's own limit
MAX_STOP_TOKEN_IDS = 64


def sample_seed(seed: int, sample: int) -> int:
    """Sample ``i`` of a seeded request draws with ``seed + i``, wrapped into ``SEED``."""
    return (seed + sample) % (int(SEED.high) + 1)


@dataclass(slots=True)
class SamplingParams:
    """One sequence's sampling parameters (LMI/vLLM names), checked on construction."""

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
        _check_int("max_new_tokens", self.max_new_tokens, MAX_TOKENS)
        _check_real("temperature", self.temperature, TEMPERATURE)
        _check_int("top_k", self.top_k, TOP_K)
        _check_real("top_p", self.top_p, TOP_P)
        _check_real("repetition_penalty", self.repetition_penalty, REPETITION_PENALTY)
        if self.seed is not None:
            _check_int("seed", self.seed, SEED)
        for name in ("do_sample", "ignore_eos", "details", "logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "true or false", getattr(self, name))
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise _bad("stop", "a list of strings", self.stop)
        _check_int("top_logprobs", self.top_logprobs, TOP_LOGPROBS)
        if self.prompt_logprobs is not None:
            _check_int("prompt_logprobs", self.prompt_logprobs, TOP_LOGPROBS)
        _check_real("presence_penalty", self.presence_penalty, OCCURRENCE_PENALTY)
        _check_real("frequency_penalty", self.frequency_penalty, OCCURRENCE_PENALTY)
        _check_real("min_p", self.min_p, MIN_P)
        _check_int("min_tokens", self.min_tokens, Bound(0, self.max_new_tokens))
        if not isinstance(self.logit_bias, dict) or len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise _bad("logit_bias", f"an object of at most {MAX_LOGIT_BIAS} token ids", self.logit_bias)
        for token, bias in self.logit_bias.items():
            _check_int("logit_bias key", token, TOKEN_ID)
            _check_real(f"logit_bias[{token}]", bias, LOGIT_BIAS)
        if not isinstance(self.stop_token_ids, list) or len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            rule = f"a list of at most {MAX_STOP_TOKEN_IDS} token ids"
            raise _bad("stop_token_ids", rule, self.stop_token_ids)
        for token in self.stop_token_ids:
            _check_int("stop_token_ids", token, TOKEN_ID)
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
                raise BadRequestError(
                    f"{name} cannot be combined with structured output "
                    f"({self.constraint.describe()}): the constraint decides where it ends"
                )

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
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or bool(self.logit_bias)
        )


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bad(name: str, rule: str, value: object) -> BadRequestError:
    return BadRequestError(f"{name} must be {rule}, got {value!r}")


def _check_int(name: str, value: object, bound: Bound) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not bound.holds(value):
        raise _bad(name, f"an integer in {bound.describe()}", value)


def _check_real(name: str, value: object, bound: Bound) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not bound.holds(value):  # type: ignore[arg-type]
        raise _bad(name, f"a finite number in {bound.describe()}", value)
