"""Per-request sampling parameters (LMI/vLLM names) and the batched sampler."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraserve.errors import BadRequestError


@dataclass(slots=True)
class SamplingParams:
    max_new_tokens: int = 30
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    details: bool = False
    logprobs: bool = False  # compute each token's log-probability (details and streams need it)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise BadRequestError("max_new_tokens must be >= 1")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise BadRequestError("temperature >= 0, top_k >= 0 and 0 < top_p <= 1 are required")
        if self.repetition_penalty <= 0:
            raise BadRequestError("repetition_penalty must be > 0")
        if self.temperature == 0:
            self.do_sample = False

    @classmethod
    def from_lmi(cls, parameters: dict) -> SamplingParams:
        """LMI ``parameters``: greedy unless ``do_sample`` (or a temperature > 0 is given)."""
        if not isinstance(parameters, dict):
            raise BadRequestError('"parameters" must be an object')
        p = dict(parameters)
        stop = p.pop("stop_sequences", None) or p.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequestError("stop sequences must be a string or a list of strings")
        do_sample = p.get("do_sample")
        if do_sample is None:
            do_sample = float(p.get("temperature") or 0) > 0
        try:
            return cls(
                max_new_tokens=int(p.get("max_new_tokens", p.get("max_tokens", 30))),
                do_sample=bool(do_sample),
                temperature=float(p.get("temperature") if p.get("temperature") is not None else 1.0),
                top_k=int(p.get("top_k") or 0) if int(p.get("top_k") or 0) > 0 else 0,
                top_p=float(p.get("top_p", 1.0)),
                repetition_penalty=float(p.get("repetition_penalty", 1.0)),
                seed=None if p.get("seed") is None else int(p["seed"]),
                stop=stop,
                ignore_eos=bool(p.get("ignore_eos", False)),
                details=bool(p.get("details", False)),
                logprobs=bool(p.get("details", False)),
            )
        except (TypeError, ValueError) as exc:
            raise BadRequestError(f"invalid generation parameter: {exc}") from None


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """CTRL-style, as transformers does it: shrink the logits of tokens already present."""
    scores = logits[seen]
    logits[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from a (vocab,) row after temperature, top-k and top-p."""
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
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)  # per-request seeded generators live on the CPU
    return int(torch.multinomial(probs, 1, generator=generator))
