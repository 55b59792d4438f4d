"""Activated LoRA (PEFT's ``alora_invocation_tokens``): the adapter applies from the start of
the last occurrence of its invocation tokens in the prompt on, and to every generated token; a
prompt without them runs on the base model throughout, as PEFT's ``generate`` does. The tokens
before the activation point see base-model weights, so their KV differs from a plain adapter's:
the activation point is part of the sequence's prefix-cache namespace."""

from __future__ import annotations

NEVER = 2**62  # the activation position of a prompt without the invocation tokens


def activation_start(prompt: list[int], invocation: tuple[int, ...]) -> int:
    """Where the adapter starts applying: the start of the last occurrence of ``invocation`` in
    ``prompt``, or ``NEVER``."""
    n = len(invocation)
    for start in range(len(prompt) - n, -1, -1):
        if tuple(prompt[start : start + n]) == invocation:
            return start
    return NEVER


def lora_spans(first: int, count: int, lora_from: int) -> list[tuple[int, int, bool]]:
    """Positions [first, first + count) of a sequence split into (offset, length, with LoRA)
    runs, LoRA from ``lora_from`` on."""
    split = min(max(lora_from - first, 0), count)
    return [run for run in ((0, split, False), (split, count - split, True)) if run[1] > 0]
