"""The OpenAI API (``/v1/completions``, ``/v1/chat/completions``): request models, the
translation into ``GenerateRequest``, and the response, chunk and error shapes.

Every field of OpenAI's two requests is declared, with vLLM's sampling extensions: a field is
either honoured, or accepted because it has nothing to change here (``user``, ``metadata``,
``prompt_cache_key``: prefix caching is automatic), or refused with a 400 that names it
(``UNSUPPORTED``). A field that is in neither list is a 400 too (``extra="forbid"``): nothing a
client sends is silently dropped.

Structured output (``specs/structured.py``): ``response_format`` (``json_object``,
``json_schema``) on both routes, as vLLM accepts it, and vLLM's ``structured_outputs`` (``json``,
``regex``, ``grammar``, ``choice``); the engine masks each constrained row's tokens, so the
answer follows the constraint (unless ``max_tokens`` or a stop string cuts it first).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from loraserve.errors import BadRequestError, LoraserveError
from loraserve.specs.base import (
    CLOSED,
    MAX_PROMPTS,
    AdapterMixture,
    LogitBias,
    MaxTokens,
    Messages,
    MinP,
    OccurrencePenalty,
    RepetitionPenalty,
    Seed,
    Stop,
    Temperature,
    TokenId,
    TopK,
    TopLogprobs,
    TopP,
)
from loraserve.specs.structured import ResponseFormat, StructuredOutputs, request_constraint
from loraserve.wire.messages import (
    GenerateRequest,
    GenerateResult,
    SamplingSpec,
    SequenceOutput,
    TokenLogprob,
    TokenOutput,
)
from loraserve.wire.sampling import INT32

DEFAULT_MAX_TOKENS = 16  # legacy completions' default; chat's is what the context leaves
MAX_SAMPLES = 128  # n and best_of
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Samples = Annotated[int, Field(ge=1, le=MAX_SAMPLES)]


class StreamOptions(BaseModel):
    model_config = CLOSED
    include_usage: bool = False
    include_obfuscation: bool | None = None  # refused when true (see UNSUPPORTED)


class _Common(BaseModel):
    """Fields both endpoints share, and vLLM's extensions (top_k, min_p, repetition_penalty,
    ignore_eos, min_tokens, stop_token_ids, structured_outputs)."""

    model_config = CLOSED
    model: str = Field(min_length=1, description="the base model, one of its adapters, or <base>:<adapter>")
    temperature: Temperature | None = Field(None, description="default 1; 0 is greedy")
    top_p: TopP | None = None
    n: Samples = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: Seed | None = Field(None, description="sample i of a request uses seed + i (wrapped)")
    presence_penalty: OccurrencePenalty = 0.0
    frequency_penalty: OccurrencePenalty = 0.0
    logit_bias: dict[str, LogitBias] | None = Field(
        None, max_length=300, description="token id (as a string) -> bias added to its logit"
    )
    user: str | None = Field(None, description="accepted; recorded nowhere")
    top_k: TopK | None = None
    min_p: MinP = 0.0
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, le=INT32)] = 0
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = None
    lora: AdapterMixture | None = Field(
        None,
        description='adapters with scales, mixed per request: [{"name": "a", "scale": 0.5}] '
        "(llama.cpp's field, by name); an adapter named by model joins at scale 1",
    )
    response_format: ResponseFormat | None = Field(
        None, description='{"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}: enforced'
    )
    structured_outputs: StructuredOutputs | None = Field(
        None, description="vLLM's: exactly one of json (a schema), regex, grammar (Lark), choice, json_object"
    )

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
            max_new_tokens=max_tokens,
            do_sample=temperature > 0,
            temperature=temperature,
            top_k=max(self.top_k or 0, 0),
            top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self._logit_bias(),
            min_tokens=self.min_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            min_p=self.min_p,
            constraint=request_constraint(self.response_format, self.structured_outputs),
        )

    def _logit_bias(self) -> tuple[tuple[int, float], ...]:
        biases = []
        for key, bias in (self.logit_bias or {}).items():
            if not key.isdigit() or int(key) > INT32:
                raise BadRequestError(f"logit_bias: {key!r} is not a token id (an integer as a string)")
            biases.append((int(key), bias))
        return tuple(biases)

    def check(self) -> None:
        """What the field types cannot say: refused fields, and combinations."""
        for name, reason in UNSUPPORTED.items():
            if name in type(self).model_fields and _is_set(getattr(self, name)):
                raise BadRequestError(f"{name} is not supported by this server: {reason}")
        if self.stream_options is not None and not self.stream:
            raise BadRequestError("stream_options is only allowed with stream: true")
        if self.stream_options is not None and self.stream_options.include_obfuscation:
            raise BadRequestError("stream_options.include_obfuscation is not supported by this server")
        if self.min_tokens and self.max_tokens_asked is not None and self.min_tokens > self.max_tokens_asked:
            raise BadRequestError(
                f"min_tokens ({self.min_tokens}) is more than max_tokens ({self.max_tokens_asked})"
            )
        self._check_constraint()

    def _check_constraint(self) -> None:
        """A constraint decides where the answer ends: ``ignore_eos`` and ``min_tokens`` fight it."""
        if request_constraint(self.response_format, self.structured_outputs) is None:
            return
        named = "structured_outputs" if self.structured_outputs is not None else "response_format"
        for field in ("ignore_eos", "min_tokens"):
            if getattr(self, field):
                raise BadRequestError(f"{field} cannot be combined with {named}: the constraint ends it")

    @property
    def max_tokens_asked(self) -> int | None:
        raise NotImplementedError

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _is_set(value: Any) -> bool:
    """A refused field is fine at its neutral value (false, null, an empty list, "auto")."""
    return value not in (None, False, [], {}, "", "auto", "default", "none", "text", ["text"])


# Declared fields this server refuses when set (and why): honoured is better, and will come.
UNSUPPORTED: dict[str, str] = {
    "suffix": "insertion (fill-in-the-middle) is not implemented",
    "functions": "function calling is not implemented",
    "function_call": "function calling is not implemented",
    "audio": "this server generates text only",
    "modalities": "this server generates text only",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "this server has no web search",
    "reasoning_effort": "the served models take no reasoning effort",
    "verbosity": "the served models take no verbosity setting",
    "store": "this server stores no completions",
    "service_tier": "this server has one service tier",
}


class CompletionRequest(_Common):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    max_tokens: Annotated[int, Field(ge=0, le=INT32)] | None = Field(
        None, description=f"default {DEFAULT_MAX_TOKENS}; 0 with echo scores the prompt only"
    )
    best_of: Samples | None = Field(None, description="samples per prompt; the n most likely are answered")
    echo: bool = False
    logprobs: TopLogprobs | None = Field(
        None, description="log-probs of each token and of this many alternatives"
    )
    suffix: str | None = None

    @property
    def max_tokens_asked(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> tuple[str | tuple[int, ...], ...]:
        prompt: Any = self.prompt
        if isinstance(prompt, str):
            return (prompt,)
        if all(isinstance(p, int) for p in prompt):
            return (tuple(prompt),)
        return tuple(p if isinstance(p, str) else tuple(p) for p in prompt)

    def check(self) -> None:
        super().check()
        if self.best_of is not None and self.best_of < self.n:
            raise BadRequestError(f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.stream and self.best_of is not None and self.best_of > self.n:
            raise BadRequestError("best_of > n cannot stream: the best answers are known only at the end")
        if self.stream and self.echo:
            raise BadRequestError("echo with stream is not supported; send stream: false")
        if self.max_tokens == 0 and not self.echo:
            raise BadRequestError("max_tokens 0 asks for no tokens: it is only useful with echo")
        if len(self.prompts()) * max(self.n, self.best_of or 0) > MAX_PROMPTS:
            raise BadRequestError(f"prompts x n (or best_of) must be at most {MAX_PROMPTS}")

    def to_generate(self, adapter: str | None) -> GenerateRequest:
        self.check()
        max_tokens = DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens
        prompts = self.prompts()
        return GenerateRequest(
            sampling=self.sampling(max_tokens),
            prompts=prompts,
            adapters=(adapter,) * len(prompts),
            mixture=self.mixture(adapter),
            stream=self.stream,
            n=self.n,
            best_of=self.best_of,
            top_logprobs=self.logprobs,
            echo=self.echo,
        )


class FunctionDefinition(BaseModel):
    model_config = CLOSED
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of the arguments")
    strict: bool | None = None


class Tool(BaseModel):
    model_config = CLOSED
    type: Literal["function"]
    function: FunctionDefinition

    def to_template(self) -> dict[str, Any]:
        """As transformers' chat templates take tools (OpenAI's shape, nulls left out)."""
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class NamedFunction(BaseModel):
    model_config = CLOSED
    name: str


class NamedToolChoice(BaseModel):
    model_config = CLOSED
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Common):
    messages: Messages
    max_tokens: MaxTokens | None = Field(None, description="default: what the context leaves")
    max_completion_tokens: MaxTokens | None = Field(None, description="alias of max_tokens")
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = Field(None, description="accepted; recorded nowhere")
    service_tier: str | None = None
    prompt_cache_key: str | None = Field(None, description="accepted: prefix caching is automatic")
    safety_identifier: str | None = Field(None, description="accepted; recorded nowhere")

    @property
    def max_tokens_asked(self) -> int | None:
        return self.max_tokens or self.max_completion_tokens

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequestError("top_logprobs needs logprobs: true")
        if self.tool_choice not in (None, "none", "auto"):
            if not self.tools:
                raise BadRequestError("tool_choice asks for a call, but tools is empty")
            named = self.required_tool
            if named != "*" and named not in {tool.function.name for tool in self.tools}:
                raise BadRequestError(f"tool_choice names function {named!r}, which tools does not define")
            if request_constraint(self.response_format, self.structured_outputs) is not None:
                raise BadRequestError(
                    "tool_choice (a call is required) and response_format or "
                    "structured_outputs both constrain the answer; send one of them"
                )

    @property
    def required_tool(self) -> str | None:
        """ "*" when some call must be made, a function's name when that one must be, else None."""
        if self.tool_choice == "required":
            return "*"
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return None

    def to_generate(self, adapter: str | None) -> GenerateRequest:
        self.check()
        top = (self.top_logprobs or 0) if self.logprobs else None
        tools = None
        if self.tools and self.tool_choice != "none":  # "none": the model is not told of them
            tools = tuple(tool.to_template() for tool in self.tools)
        return GenerateRequest(
            sampling=self.sampling(self.max_tokens_asked),
            messages=tuple(m.to_dict() for m in self.messages),
            adapters=(adapter,),
            mixture=self.mixture(adapter),
            stream=self.stream,
            n=self.n,
            top_logprobs=top,
            tools=tools,
            required_tool=self.required_tool,
        )


# -- responses ---------------------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def result_usage(result: GenerateResult, samples: int) -> dict[str, int]:
    """Each prompt counted once (not once per sample), as OpenAI counts it."""
    prompt = sum(seq.prompt_tokens for seq in result.sequences[::samples])
    return usage(prompt, result.generated_tokens)


def response_json(result: GenerateResult, meta: dict[str, Any], chat: bool, request: GenerateRequest) -> dict:
    choices = [_choice(index, seq, chat, request) for index, seq in enumerate(result.sequences)]
    return {
        **meta,
        "object": "chat.completion" if chat else "text_completion",
        "choices": choices,
        "usage": result_usage(result, request.n),
    }


def _choice(index: int, seq: SequenceOutput, chat: bool, request: GenerateRequest) -> dict[str, Any]:
    finish = seq.finish_reason.openai
    generated = [t.logprobs for t in seq.tokens if t.logprobs is not None]
    if chat:
        logprobs = None if request.top_logprobs is None else {"content": [chat_logprob(e) for e in generated]}
        message: dict[str, Any] = {"role": "assistant", "content": seq.text}
        if seq.tool_calls:  # OpenAI: content null when the answer is only calls
            message = {
                "role": "assistant",
                "content": seq.text or None,
                "tool_calls": [call.to_openai() for call in seq.tool_calls],
            }
            finish = "tool_calls"
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
    text = seq.text if seq.prompt_text is None else seq.prompt_text + seq.text
    entries = [*seq.prompt_logprobs, *generated]
    logprobs = None if request.top_logprobs is None else completion_logprobs(entries, 0)
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def chat_logprob(entry: TokenLogprob) -> dict[str, Any]:
    """OpenAI's chat shape: token, logprob, UTF-8 bytes, and the alternatives likewise."""
    return {
        "token": entry.token,
        "logprob": _finite(entry.logprob),
        "bytes": list(entry.token.encode()),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in entry.top],
    }


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, ``top_logprobs`` as token -> log-prob maps
    (None for the prompt's first token, which nothing predicts); ``text_offset`` in characters
    from ``offset``."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [None if e.logprob is None else _by_text(e.top) for e in entries],
        "text_offset": offsets,
    }


def _by_text(top: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """Token text -> log-prob; where two tokens decode to one text (partial UTF-8 bytes), the
    more likely one keeps it."""
    mapping: dict[str, float] = {}
    for token, logprob in top:
        mapping.setdefault(token, logprob)
    return mapping


def _finite(value: float | None) -> float:
    """OpenAI's chat log-probs are numbers: a -inf (or missing) one as its floor, -9999."""
    return -9999.0 if value is None else value


def chunk_event(
    event: TokenOutput, meta: dict[str, Any], chat: bool, first: bool, request: GenerateRequest, offset: int
) -> bytes:
    """One server-sent event per token of choice ``event.index``."""
    finish = None if event.finish_reason is None else event.finish_reason.openai
    entry = event.logprobs
    if chat:
        delta: dict[str, Any] = {"content": event.text, **({"role": "assistant"} if first else {})}
        if event.tool_calls:
            delta["tool_calls"] = [call.to_openai(i) for i, call in enumerate(event.tool_calls)]
            finish = "tool_calls"
        logprobs = None
        if request.top_logprobs is not None:
            logprobs = {"content": [chat_logprob(entry)] if entry is not None else []}
        choice: dict[str, Any] = {
            "index": event.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        }
    else:
        logprobs = None
        if request.top_logprobs is not None:
            logprobs = completion_logprobs([entry] if entry is not None else [], offset)
        choice = {"index": event.index, "text": event.text, "logprobs": logprobs, "finish_reason": finish}
    kind = "chat.completion.chunk" if chat else "text_completion"
    return sse({**meta, "object": kind, "choices": [choice]})


def usage_event(meta: dict[str, Any], chat: bool, prompt: int, completion: int) -> bytes:
    """``stream_options.include_usage``: the last chunk, with no choices."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    return sse({**meta, "object": kind, "choices": [], "usage": usage(prompt, completion)})


def sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, allow_nan=False)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def error_json(exc: LoraserveError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.error_type, "code": exc.status_code}}
