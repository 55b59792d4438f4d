"""Incremental detokenization: each new token costs a decode of a few recent tokens, not of the
whole output (re-decoding everything made a long answer O(n^2) in its length).

vLLM's method: keep two offsets into the output ids. ``prefix`` starts the window decoded for
context (so tokenizers that treat a leading space or a merge differently at the start of a decode
still agree), ``read`` ends what is already in the text. The new text is what decoding the window
to the end adds beyond decoding it up to ``read``; a trailing partial UTF-8 character ("\ufffd")
is held back until the bytes that complete it arrive.
"""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    """The text of one sequence's output ids, extended token by token."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.text = ""
        self.prefix = 0  # first id of the context window
        self.read = 0  # ids before this one are in ``text``

    def update(self, ids: list[int], final: bool = False) -> str:
        """The full text of ``ids`` (which extend the ids of earlier calls) as far as it is
        complete; ``final`` flushes a held-back partial character too."""
        if len(ids) < self.read:  # not an extension (ids were cut): start over
            self.__init__(self.tokenizer)  # type: ignore[misc]
        decode = self.tokenizer.decode
        before = decode(ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(ids)
        return self.text
