"""The OpenAI API (``/v1/completions``, ``/v1/chat/completions``): request models, the
translation into ``GenerateRequest``, and the response, chunk and error shapes."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from loraserve.errors import LoraserveError
from loraserve.handlers.messages import GenerateRequest, GenerateResult, SamplingSpec, TokenOutput
from loraserve.specs.base import (
    STRICT,
    AdapterMixture,
    MaxTokens,
    Messages,
    RepetitionPenalty,
    Seed,
    Stop,
    Temperature,
    TopK,
    TopP,
)

DEFAULT_MAX_TOKENS = 16


class _Sampling(BaseModel):
    """Fields both endpoints share; vLLM's extras (top_k, repetition_penalty, ignore_eos) too."""

    model_config = STRICT
    model: str = Field(min_length=1, description="the base model's name or one of its adapters'")
    max_tokens: MaxTokens | None = Field(None, description=f"default {DEFAULT_MAX_TOKENS}")
    temperature: Temperature | None = Field(None, description="default 1; 0 is greedy")
    top_p: TopP | None = None
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    stop: Stop | None = None
    seed: Seed | None = None
    top_k: TopK | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool = False
    lora: AdapterMixture | None = Field(
        None, description='adapters with scales, mixed per request: [{"name": "a", "scale": 0.5}] '
                          "(llama.cpp's field, by name); an adapter named by model joins at scale 1")

    def mixture(self, adapter: str | None) -> tuple[tuple[str, float], ...] | None:
        """``lora``'s adapters, plus the one ``model`` names (scale 1) unless ``lora`` lists it."""
        if not self.lora:
            return None
        listed = [(entry.name, entry.scale) for entry in self.lora]
        if adapter and adapter not in {name for name, _ in listed}:
            listed.insert(0, (adapter, 1.0))
        return tuple(listed)

    def sampling(self, max_tokens: int | None) -> SamplingSpec:
        temperature = 1.0 if self.temperature is None else self.temperature
        stop = self.stop or ()
        return SamplingSpec(
            max_new_tokens=max_tokens or DEFAULT_MAX_TOKENS, do_sample=temperature > 0,
            temperature=temperature, top_k=max(self.top_k or 0, 0),
            top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed, stop=(stop,) if isinstance(stop, str) else tuple(stop),
            ignore_eos=self.ignore_eos)


class CompletionRequest(_Sampling):
    prompt: str

    def to_generate(self, adapter: str | None) -> GenerateRequest:
        return GenerateRequest(sampling=self.sampling(self.max_tokens), prompts=(self.prompt,),
                               adapters=(adapter,), mixture=self.mixture(adapter), stream=self.stream)


class ChatCompletionRequest(_Sampling):
    messages: Messages
    max_completion_tokens: MaxTokens | None = Field(None, description="alias of max_tokens")

    def to_generate(self, adapter: str | None) -> GenerateRequest:
        return GenerateRequest(sampling=self.sampling(self.max_tokens or self.max_completion_tokens),
                               messages=tuple(m.to_dict() for m in self.messages),
                               adapters=(adapter,), mixture=self.mixture(adapter), stream=self.stream)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response_json(result: GenerateResult, meta: dict[str, Any], chat: bool) -> dict[str, Any]:
    seq = result.sequences[0]
    if chat:
        choice: dict[str, Any] = {"index": 0, "finish_reason": seq.finish_reason.openai,
                                  "message": {"role": "assistant", "content": seq.text}}
    else:
        choice = {"index": 0, "text": seq.text, "logprobs": None, "finish_reason": seq.finish_reason.openai}
    return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
            "usage": _usage(seq.prompt_tokens, seq.generated_tokens)}


def chunk_event(event: TokenOutput, meta: dict[str, Any], chat: bool, first: bool) -> bytes:
    """One server-sent event per token."""
    finish = None if event.finish_reason is None else event.finish_reason.openai
    if chat:
        delta = {"content": event.text, **({"role": "assistant"} if first else {})}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": event.text, "logprobs": None, "finish_reason": finish}
    kind = "chat.completion.chunk" if chat else "text_completion"
    return sse({**meta, "object": kind, "choices": [choice]})


def sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, allow_nan=False)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def error_json(exc: LoraserveError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.error_type, "code": exc.status_code}}
