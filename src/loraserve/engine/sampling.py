"""Per-request sampling parameters (LMI/vLLM names), checked on construction, and the sampler.

The engine validates its own inputs even though the HTTP front does too: one request with a
NaN temperature or a 1e-40 repetition penalty must be refused (400 naming the field), never
reach the batch where it could fail everyone's step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import torch

from loraserve.errors import BadRequestError

MAX_NEW_TOKENS = 1 << 20  # the engine's max_model_len bounds it further per request
MAX_TOP_K = (1 << 31) - 1
MAX_SEED = (1 << 63) - 1
PENALTY_RANGE = (0.01, 100.0)  # outside it the CTRL penalty turns logits into inf or 0


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
        if self.temperature == 0:
            self.do_sample = False

    @classmethod
    def from_lmi(cls, parameters: dict) -> SamplingParams:
        """LMI ``parameters``: greedy unless ``do_sample`` (or a temperature > 0 is given).
        Numbers may come as JSON numbers or numeric strings; booleans only as JSON booleans."""
        if not isinstance(parameters, dict):
            raise BadRequestError('"parameters" must be an object')
        p = {key: value for key, value in parameters.items() if value is not None}  # null: default
        stop = p.pop("stop_sequences", None) or p.pop("stop", None) or []
        temperature = _number("temperature", p.get("temperature", 1.0), float)
        do_sample = p.get("do_sample", "temperature" in p and temperature > 0)
        top_k = _number("top_k", p.get("top_k") or 0, int)
        return cls(
            max_new_tokens=_number("max_new_tokens", p.get("max_new_tokens", p.get("max_tokens", 30)), int),
            do_sample=do_sample,
            temperature=temperature,
            top_k=max(top_k, 0),  # vLLM's -1 (and LMI's 0) mean "off"
            top_p=_number("top_p", p.get("top_p", 1.0), float),
            repetition_penalty=_number("repetition_penalty", p.get("repetition_penalty", 1.0), float),
            seed=_number("seed", p["seed"], int) if "seed" in p else None,
            stop=[stop] if isinstance(stop, str) else stop,
            ignore_eos=p.get("ignore_eos", False),
            details=p.get("details", False),
            logprobs=p.get("details", False),
        )


def _number(name: str, value: object, kind: type) -> float | int:
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
    return number  # range checks happen in SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """CTRL-style, as transformers does it: shrink the logits of tokens already present."""
    scores = logits[seen]
    logits[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int | None:
    """One token from a (vocab,) row after temperature, top-k and top-p; None when the row
    holds NaN/inf (a broken adapter, an overflow): that sequence fails, the batch goes on."""
    if not bool(torch.isfinite(logits).all()):
        return None
    if not params.do_sample:
        return int(torch.argmax(logits))
    logits = logits / max(params.temperature, 1e-5)
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
