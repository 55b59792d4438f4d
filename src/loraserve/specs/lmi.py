"""LMI, DJL's schema for LLMs: ``{"inputs": str | [str], "parameters": {...}, "adapters": ...,
"stream": bool}`` or its chat form (``messages``) → ``GenerateRequest``; typed results →
``{"generated_text": ...}`` (a list for a list of inputs), ``details``, JSON-lines streams."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraserve.errors import BadRequestError
from loraserve.specs.base import (
    CLOSED,
    MAX_PROMPTS,
    AdapterMixture,
    AdapterScale,
    MaxTokens,
    Messages,
    MinP,
    OccurrencePenalty,
    RepetitionPenalty,
    Seed,
    Stop,
    Temperature,
    TopK,
    TopP,
    mixture_of,
)
from loraserve.wire.messages import (
    GenerateRequest,
    GenerateResult,
    SamplingSpec,
    SequenceOutput,
    TokenOutput,
)
from loraserve.wire.sampling import INT32

DEFAULT_MAX_NEW_TOKENS = 30
# SageMaker's adapter header: above the body's ``adapters``, as in DJL's LMI input parser.
ADAPTER_IDENTIFIER = "x-amzn-sagemaker-adapter-identifier"


class LmiParameters(BaseModel):
    """Generation parameters. One this engine does not implement is refused by name, never
    ignored; LMI's and TGI's output switches are accepted at their defaults only."""

    model_config = CLOSED
    max_new_tokens: MaxTokens | None = Field(None, description=f"default {DEFAULT_MAX_NEW_TOKENS}")
    max_tokens: MaxTokens | None = Field(None, description="alias of max_new_tokens")
    do_sample: bool | None = Field(None, description="default: true when a temperature > 0 is given")
    temperature: Temperature | None = None
    top_k: TopK | None = None
    top_p: TopP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    seed: Seed | None = None
    stop_sequences: Stop | None = None
    stop: Stop | None = Field(None, description="alias of stop_sequences")
    ignore_eos: bool = False
    details: bool = False
    presence_penalty: OccurrencePenalty = 0.0
    frequency_penalty: OccurrencePenalty = 0.0
    min_p: MinP = 0.0
    min_tokens: Annotated[int, Field(ge=0, le=INT32)] = 0
    return_full_text: Literal[False] | None = Field(None, description="true is not implemented")
    decoder_input_details: Literal[False] | None = Field(None, description="true is not implemented")
    top_n_tokens: Literal[0] | None = Field(
        None, description="not implemented (use the OpenAI API's top_logprobs)"
    )
    watermark: Literal[False] | None = Field(None, description="not implemented")

    def sampling(self) -> SamplingSpec:
        """Greedy unless ``do_sample`` (or a temperature > 0 is given), as LMI does."""
        do_sample = self.do_sample if self.do_sample is not None else (self.temperature or 0) > 0
        stop = self.stop_sequences or self.stop or ()
        return SamplingSpec(
            max_new_tokens=self.max_new_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS,
            do_sample=do_sample,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=max(self.top_k or 0, 0),
            top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            min_p=self.min_p,
            min_tokens=self.min_tokens,
        )


Prompts = Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
AdapterList = Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]


class LmiRequest(BaseModel):
    """An LMI request body: exactly one of ``inputs`` (or ``prompt``) and ``messages``."""

    model_config = ConfigDict(
        **CLOSED,
        json_schema_extra={
            "oneOf": [{"required": ["inputs"]}, {"required": ["prompt"]}, {"required": ["messages"]}]
        },
    )
    inputs: str | Prompts | None = None
    prompt: str | None = Field(None, description="alias of a single string inputs")
    messages: Messages | None = Field(None, description="chat form, templated by the model's tokenizer")
    parameters: LmiParameters = Field(default_factory=LmiParameters)  # type: ignore[arg-type]
    adapters: str | AdapterList | AdapterMixture | None = Field(
        None,
        description='adapter name(s), one per input; "" is the base model. Or a mixture for '
        'every input: [{"name": "a", "scale": 0.5}, {"name": "b"}] (scale default 1). '
        "The X-Amzn-SageMaker-Adapter-Identifier header or ?adapter= override it; "
        "without any, the custom attribute adapter=",
    )
    stream: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> LmiRequest:
        given = [name for name in ("inputs", "prompt", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError('give exactly one of "inputs" (a string or a list of strings) or "messages"')
        return self

    @property
    def prompts(self) -> list[str]:
        inputs = self.inputs if self.inputs is not None else self.prompt
        return [] if inputs is None else [inputs] if isinstance(inputs, str) else list(inputs)

    @property
    def is_list(self) -> bool:
        return isinstance(self.inputs, list)


def adapters_for(
    request: LmiRequest, fallback: str | None, override: str | None = None
) -> tuple[str | None, ...]:
    """One adapter per sequence, in DJL's LMI order: ``override`` (the SageMaker adapter
    header, else ``?adapter=``), else the body's ``adapters``, else ``fallback`` (the
    ``adapter`` custom attribute); "" means the base model."""
    count = 1 if request.messages is not None else len(request.prompts)
    field: str | list[str] | list[AdapterScale] | None = override
    if field is None:
        field = request.adapters if request.adapters is not None else fallback
    if _is_mixture(field):
        return (None,) * count  # the mixture applies to every sequence (``to_generate``)
    if isinstance(field, list):
        if len(field) != count:
            raise BadRequestError(
                f'"adapters" has {len(field)} entries for {count} inputs; give one per input'
            )
        return tuple(a or None for a in field)  # type: ignore[misc]
    return (field or None,) * count  # type: ignore[return-value]


def _mixture(request: LmiRequest, override: str | None) -> tuple[tuple[str, float], ...] | None:
    """The body's mixture, unless the header or ``?adapter=`` names an adapter instead."""
    if override is None and _is_mixture(request.adapters):
        return mixture_of(request.adapters)  # type: ignore[arg-type]
    return None


def _is_mixture(field: object) -> bool:
    return isinstance(field, list) and bool(field) and isinstance(field[0], AdapterScale)


def to_generate(
    request: LmiRequest, fallback_adapter: str | None = None, override: str | None = None
) -> GenerateRequest:
    if request.stream and len(request.prompts) > 1:
        raise BadRequestError("streaming takes one input at a time")
    return GenerateRequest(
        sampling=request.parameters.sampling(),
        prompts=tuple(request.prompts),
        messages=None if request.messages is None else tuple(m.to_dict() for m in request.messages),
        adapters=adapters_for(request, fallback_adapter, override),
        mixture=_mixture(request, override),
        details=request.parameters.details,
        logprobs=request.parameters.details or request.stream,  # stream lines carry log_prob
        stream=request.stream,
    )


# -- responses ----------------------------------------------------------------------------
def details_json(seq: SequenceOutput) -> dict[str, Any]:
    return {
        "finish_reason": seq.finish_reason.value,
        "generated_tokens": seq.generated_tokens,
        "inputs": None,
        "prompt_tokens": seq.prompt_tokens,
        "tokens": [{"id": t.token_id, "text": t.text, "log_prob": t.logprob} for t in seq.tokens],
    }


def response_json(request: LmiRequest, result: GenerateResult) -> Any:
    """``{"generated_text"}`` per input (a list for a list), or LMI's chat completion."""
    if request.messages is not None:
        return chat_json(result.sequences[0])
    answers = []
    for seq in result.sequences:
        answer: dict[str, Any] = {"generated_text": seq.text}
        if request.parameters.details:
            answer["details"] = details_json(seq)
        answers.append(answer)
    return answers if request.is_list else answers[0]


def chat_json(seq: SequenceOutput) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": seq.finish_reason.openai,
                "message": {"role": "assistant", "content": seq.text},
            }
        ],
        "usage": {
            "prompt_tokens": seq.prompt_tokens,
            "completion_tokens": seq.generated_tokens,
            "total_tokens": seq.prompt_tokens + seq.generated_tokens,
        },
    }


def stream_line(event: TokenOutput, details: bool) -> bytes:
    """One JSON line per token; the last one also has the whole text (and details)."""
    line: dict[str, Any] = {
        "token": {"id": event.token_id, "text": event.text, "log_prob": event.logprob},
        "generated_text": None,
    }
    if event.summary is not None:
        line["generated_text"] = event.summary.text
        if details:
            line["details"] = details_json(event.summary)
    return json.dumps(line, allow_nan=False).encode() + b"\n"


def error_line(message: str) -> bytes:
    """A stream that fails after its headers went out ends with a line naming the error."""
    return json.dumps({"error": message}).encode() + b"\n"
