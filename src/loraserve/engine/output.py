"""Append a sampled token to its sequence: the finish reason (EOS, a complete structured-output
constraint, length, stop string) and the new text, as the event its consumer receives. Per
sequence, no engine state: the engine finishes the sequence in the scheduler and emits the event."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from loraserve.engine.detokenizer import IncrementalDetokenizer
from loraserve.engine.sequence import Sequence, TokenEvent, TokenLogprobs
from loraserve.engine.structured import complete
from loraserve.wire.messages import FinishReason


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int], max_len: int) -> None:
        self.tokenizer, self.eos_ids, self.max_len = tokenizer, eos_ids, max_len
        self._detokenizers: WeakKeyDictionary[Sequence, IncrementalDetokenizer] = WeakKeyDictionary()

    def append(self, seq: Sequence, token: int, scored: TokenLogprobs | None, batch_size: int) -> TokenEvent:
        """Add ``token`` to ``seq``; the event carries ``finish_reason`` when it ends here (the
        caller then finishes it). A stop string is looked for in every token's text, the one
        that also reaches the length limit included; none before ``min_tokens``. Text that may
        be the start of a stop string is held back until that is decided, so a stream never
        sends what the final text cuts: joined deltas always equal the whole text."""
        seq.peak_batch = max(seq.peak_batch, batch_size)
        seq.output_ids.append(token)
        logprob = None if scored is None else scored.logprob
        seq.logprobs.append(logprob)
        reason = self._finish_reason(seq, token)
        self._new_text(seq, reason is not None)
        may_stop = reason in (None, FinishReason.LENGTH) and len(seq.output_ids) >= seq.params.min_tokens
        if may_stop and _hit_stop(seq):
            reason = FinishReason.STOP_SEQUENCE
        visible = len(seq.text)
        if reason is None:
            visible -= _stop_prefix(seq.text, seq.params.stop, seq.emitted)
        text = seq.text[seq.emitted : visible]
        seq.finish_reason = reason
        seq.emitted = max(seq.emitted, visible)
        top = () if scored is None else scored.top
        return TokenEvent(seq.request_id, token, text, logprob, reason, top)

    def _ends(self, seq: Sequence, token: int) -> FinishReason | None:
        """Whether ``token`` ends ``seq`` by itself (EOS or a stop token): it has no text."""
        if token in self.eos_ids and not seq.params.ignore_eos:
            return FinishReason.EOS_TOKEN
        if token in seq.params.stop_token_ids:
            return FinishReason.STOP_SEQUENCE
        return None

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        if len(seq.output_ids) >= seq.params.min_tokens and (reason := self._ends(seq, token)):
            return reason
        if seq.matcher is not None and complete(seq.matcher):
            return FinishReason.EOS_TOKEN  # the constraint is complete and allows only EOS: end here
        if len(seq.output_ids) >= seq.params.max_new_tokens or seq.total_len >= self.max_len:
            return FinishReason.LENGTH
        return None

    def _new_text(self, seq: Sequence, final: bool) -> str:
        """The text the new token adds (decoding only a window of recent tokens); a trailing
        partial UTF-8 character is held back."""
        ids = seq.output_ids
        if ids and final and self._ends(seq, ids[-1]):  # EOS and stop tokens have no text
            ids = ids[:-1]
        detokenizer = self._detokenizers.get(seq)
        if detokenizer is None:
            detokenizer = self._detokenizers[seq] = IncrementalDetokenizer(self.tokenizer)
        seq.text = detokenizer.update(ids, final)
        return seq.text[seq.emitted :]


def _hit_stop(seq: Sequence) -> bool:
    """Cut the text where the earliest stop sequence begins, if one appeared (none can begin in
    text already sent: what could begin one is held back)."""
    found = [i for stop in seq.params.stop if (i := seq.text.find(stop, seq.emitted)) >= 0]
    if not found:
        return False
    seq.text = seq.text[: min(found)]
    return True


def _stop_prefix(text: str, stops: list[str], start: int) -> int:
    """Length of the longest end of ``text[start:]`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text) - start), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
