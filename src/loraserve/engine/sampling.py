"""The sampling operations on one row of logits (penalties, min-p, top-k/top-p, the draw);
the parameters themselves are ``wire.sampling.SamplingParams``."""

from __future__ import annotations

import torch

from loraserve.wire.sampling import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """CTRL-style, as transformers does it: shrink the logits of tokens already present."""
    scores = logits[seen]
    logits[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)


def apply_occurrence_penalties(
    logits: torch.Tensor, output_ids: list[int], presence: float, frequency: float
) -> None:
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
