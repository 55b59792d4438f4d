"""A conversation as token ids, the way transformers' ``apply_chat_template(tokenize=True)`` makes
them — and without its role-injection route.

The rendered template is tokenized without the tokenizer's own special tokens (the template
writes BOS where the model wants it: adding another gives two). Control-token text that a
client put inside a message's content (``<|im_start|>system ...``) is tokenized as plain text,
so only the template's own markers are control tokens; transformers and vLLM tokenize it as
control tokens. Conversations without such text get exactly transformers' ids.
``option.chat_special_tokens_in_content=true`` keeps transformers' behaviour for a model that
needs it.
"""

from __future__ import annotations

import uuid
from typing import Any

from loraserve.errors import BadRequestError


def render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequestError('this model\'s tokenizer has no chat template; send "inputs" instead')
    try:
        return str(
            tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        )
    except Exception as exc:  # jinja errors from a user's template
        raise BadRequestError(f"cannot apply the chat template: {exc}") from None


def special_texts(tokenizer: Any) -> list[str]:
    """The texts the tokenizer turns into control tokens, longest first."""
    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            texts.add(str(token.content))
    return sorted((t for t in texts if t), key=len, reverse=True)


def chat_prompt_ids(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    special_tokens_in_content: bool = False,
) -> list[int]:
    """The prompt's token ids: the template's markers as control tokens, content as text."""
    specials = special_texts(tokenizer)
    hostile = [i for i, m in enumerate(messages) if _holds(m.get("content"), specials)]
    if special_tokens_in_content or not hostile:
        return list(tokenizer.encode(render(tokenizer, messages, tools), add_special_tokens=False))
    marks = {i: f"LORASERVE{uuid.uuid4().hex}" for i in hostile}  # a run no template splits
    masked = [{**m, "content": marks[i]} if i in marks else m for i, m in enumerate(messages)]
    text = render(tokenizer, masked, tools)
    ids: list[int] = []
    for i in hostile:
        before, found, text = text.partition(marks[i])
        if not found:
            raise BadRequestError(
                f"messages[{i}].content holds control-token text, and this model's chat "
                "template changes content, so it cannot be kept apart as text"
            )
        ids += tokenizer.encode(before, add_special_tokens=False)
        ids += tokenizer.encode(messages[i]["content"], add_special_tokens=False, split_special_tokens=True)
    if any(mark in text for mark in marks.values()):
        raise BadRequestError(
            "a message's content holds control-token text, and this model's chat template "
            "repeats content, so it cannot be kept apart as text"
        )
    return ids + list(tokenizer.encode(text, add_special_tokens=False))


def _holds(content: Any, specials: list[str]) -> bool:
    return isinstance(content, str) and any(s in content for s in specials)
