"""Turn a step's logits into one token (and its log-probability) per sampling sequence.

A row whose logits are not finite, or whose sampling raises, gives ``None``: the engine fails
that sequence only.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from loraserve.engine.sampling import apply_repetition_penalty, sample_row
from loraserve.engine.sequence import Sequence

log = logging.getLogger("loraserve.engine")


def sample_tokens(seqs: list[Sequence], logits: torch.Tensor) -> tuple[list[int | None], list[float | None]]:
    """``logits`` (N, vocab) fp32, row i for ``seqs[i]``: (tokens, log-probabilities)."""
    if all(not s.params.do_sample and s.params.repetition_penalty == 1.0 for s in seqs):
        tokens = greedy_tokens(logits)  # all greedy: one argmax for the batch
    else:
        tokens = [_sample(seq, logits[row]) for row, seq in enumerate(seqs)]
    return tokens, _logprobs(seqs, logits, tokens)


def greedy_tokens(logits: torch.Tensor) -> list[int | None]:
    """Row-wise argmax (first maximum on ties, as torch's); None for a row that holds NaN or
    +inf: both argmaxes pick those, so checking the chosen logit alone finds them (a -inf
    logit is harmless: it is never chosen). On CPU NumPy's vectorised argmax is ~10x faster
    than torch's over a (32, 49152) batch: over 1 ms a step otherwise."""
    if logits.device.type == "cpu":
        array = logits.numpy()
        index = array.argmax(axis=1)
        chosen = array[np.arange(len(index)), index]
        tokens, finite = index.tolist(), np.isfinite(chosen).tolist()
    else:
        values, index = logits.max(dim=-1)
        tokens, finite = index.tolist(), torch.isfinite(values).tolist()
    return [token if ok else None for token, ok in zip(tokens, finite)]


def _logprobs(seqs: list[Sequence], logits: torch.Tensor, tokens: list[int | None]) -> list[float | None]:
    """Log-probabilities of the chosen tokens, only for sequences that asked (a full-vocabulary
    logsumexp per row is a visible share of a CPU decode step)."""
    wanted = [row for row, seq in enumerate(seqs) if seq.params.logprobs and tokens[row] is not None]
    result: list[float | None] = [None] * len(seqs)
    if wanted:
        index = torch.tensor(wanted, device=logits.device)
        chosen = logits[index, torch.tensor([tokens[r] for r in wanted], device=logits.device)]
        values = (chosen - torch.logsumexp(logits[index], dim=-1)).tolist()
        for row, value in zip(wanted, values):
            result[row] = value
    return result


def _sample(seq: Sequence, scores: torch.Tensor) -> int | None:
    try:
        if seq.params.repetition_penalty != 1.0:
            scores = scores.clone()
            seen = torch.tensor(sorted(set(seq.all_ids)), device=scores.device)
            apply_repetition_penalty(scores, seen, seq.params.repetition_penalty)
        return sample_row(scores, seq.params, seq.generator)
    except Exception:  # a bug or device error in one row's sampling: that row fails
        log.exception("sampling failed for request %d", seq.request_id)
        return None
