"""Append a sampled token to its sequence: the finish reason (EOS, a complete structured-output
constraint, length, stop string) and the new text, as the event its consumer receives. Per
sequence, no engine state: the engine finishes the sequence in the scheduler and emits the event."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from loraserve.engine.detokenizer import IncrementalDetokenizer
from loraserve.engine.sequence import Sequence, TokenEvent, TokenLogprobs
from loraserve.engine.structured import complete


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int], max_len: int) -> None:
        self.tokenizer, self.eos_ids, self.max_len = tokenizer, eos_ids, max_len
        self._detokenizers: WeakKeyDictionary[Sequence, IncrementalDetokenizer] = WeakKeyDictionary()

    def append(self, seq: Sequence, token: int, scored: TokenLogprobs | None, batch_size: int) -> TokenEvent:
        """Add ``token`` to ``seq``; the event carries ``finish_reason`` when it ends here (the
        caller then finishes it). A stop string is looked for in every token's text, the one
        that also reaches the length limit included; none before ``min_tokens``."""
        seq.peak_batch = max(seq.peak_batch, batch_size)
        seq.output_ids.append(token)
        logprob = None if scored is None else scored.logprob
        seq.logprobs.append(logprob)
        reason = self._finish_reason(seq, token)
        text = self._new_text(seq, reason is not None)
        may_stop = reason in (None, "length") and len(seq.output_ids) >= seq.params.min_tokens
        if may_stop and _hit_stop(seq):
            reason = "stop_sequence"
            text = seq.text[seq.emitted:]
        seq.finish_reason = reason
        seq.emitted = len(seq.text)
        top = () if scored is None else scored.top
        return TokenEvent(seq.request_id, token, text, logprob, reason, top)

    def _ends(self, seq: Sequence, token: int) -> str | None:
        """Whether ``token`` ends ``seq`` by itself (EOS or a stop token): it has no text."""
        if token in self.eos_ids and not seq.params.ignore_eos:
            return "eos_token"
        if token in seq.params.stop_token_ids:
            return "stop_sequence"
        return None

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        if len(seq.output_ids) >= seq.params.min_tokens and (reason := self._ends(seq, token)):
            return reason
        if seq.matcher is not None and complete(seq.matcher):
            return "eos_token"  # the constraint is satisfied and allows nothing but EOS: end here
        if len(seq.output_ids) >= seq.params.max_new_tokens or seq.total_len >= self.max_len:
            return "length"
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
        return seq.text[seq.emitted:]


def _hit_stop(seq: Sequence) -> bool:
    """Cut the text at the first stop sequence, if one appeared."""
    for stop in seq.params.stop:
        index = seq.text.find(stop, max(0, seq.emitted - len(stop)))
        if index >= 0:
            seq.text = seq.text[:index]
            return True
    return False
