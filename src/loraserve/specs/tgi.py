"""TGI's and LoRAX's generate API (``/generate``, ``/generate_stream``, ``/``): the request
``{"inputs", "parameters", "stream"}`` → ``GenerateRequest``, and TGI's response, SSE event
and error shapes. Every parameter either changes the generation or is refused by name when it
asks for something the engine does not do; the defaults their clients always send pass."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, Field

from loraserve.errors import BadRequestError, LoraserveError
from loraserve.specs.base import (
    CLOSED,
    MaxTokens,
    RepetitionPenalty,
    Seed,
    StopText,
    Temperature,
    TopK,
    TopP,
)
from loraserve.wire.messages import (
    FinishReason,
    GenerateRequest,
    SamplingSpec,
    SequenceOutput,
    TokenOutput,
)

DEFAULT_MAX_NEW_TOKENS = 20  # the text-generation client's default
AdapterName = Annotated[str, Field(min_length=1, max_length=128)]

# Parameter → (values that ask for nothing, why any other value is refused).
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "best_of": ((None, 1), "one sequence per request; send 1 or leave it out"),
    "truncate": ((None,), "prompts are not truncated; shorten the input instead"),
    "typical_p": ((None, 1.0), "typical sampling is not implemented; use top_p or top_k"),
    "frequency_penalty": ((None, 0.0), "not implemented; use repetition_penalty"),
    "watermark": ((False,), "no watermarking"),
    "decoder_input_details": ((False,), "prompt tokens' log-probs are not computed"),
    "top_n_tokens": ((None, 0), "alternative tokens are not returned"),
    "return_k_alternatives": ((None, 0), "alternative tokens are not returned"),
    "grammar": ((None,), "constrained decoding is not implemented"),
    "response_format": ((None,), "constrained decoding is not implemented"),
    "adapter_source": (
        (None,),
        "adapter_id names an adapter registered on this server; load one "
        "with POST /v1/load_lora_adapter or POST /adapters (an inference "
        "call never loads from a path, the hub or S3)",
    ),
    "api_token": ((None,), "nothing is fetched from a hub, so no hub token is used"),
}


class MergedAdapters(BaseModel):
    """LoRAX's per-request merge; loraserve does its ``linear`` strategy (a weighted sum of the
    adapters' deltas, which is what a mixture of scaled adapters computes)."""

    model_config = CLOSED
    ids: Annotated[list[AdapterName], Field(min_length=1, max_length=16)]
    weights: Annotated[list[Annotated[float, Field(ge=-100, le=100)]], Field(min_length=1, max_length=16)]
    merge_strategy: str | None = Field(None, description='only "linear" (the default)')
    density: float = Field(1.0, ge=0, le=1, description="ignored by the linear strategy, as in LoRAX")
    majority_sign_method: str | None = Field(None, description="TIES only; refused")

    def mixture(self) -> tuple[tuple[str, float], ...]:
        if self.merge_strategy not in (None, "linear"):
            raise BadRequestError(
                f"parameters.merged_adapters.merge_strategy: {self.merge_strategy!r} "
                'is not supported; only "linear" is'
            )
        if self.majority_sign_method is not None:
            raise BadRequestError(
                "parameters.merged_adapters.majority_sign_method: only TIES uses it, "
                'and only "linear" is supported'
            )
        if len(self.ids) != len(self.weights):
            raise BadRequestError("parameters.merged_adapters: give one weight per id")
        return tuple(zip(self.ids, self.weights))


class TgiParameters(BaseModel):
    model_config = CLOSED
    adapter_id: str | None = Field(None, description='a registered adapter; absent or "": the base model')
    merged_adapters: MergedAdapters | None = None
    max_new_tokens: MaxTokens | None = Field(None, description=f"default {DEFAULT_MAX_NEW_TOKENS}")
    do_sample: bool = Field(False, description="as in TGI, a temperature, top_k or top_p also samples")
    temperature: Temperature | None = None
    top_k: TopK | None = None
    top_p: TopP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    stop: Annotated[list[StopText], Field(max_length=32)] = []
    seed: Seed | None = None
    details: bool = False
    return_full_text: bool = Field(False, description="prefix the answer with the input")
    ignore_eos_token: bool = Field(False, description="LoRAX's: generate past the end-of-sequence token")
    best_of: int | None = None
    truncate: int | None = None
    typical_p: float | None = None
    frequency_penalty: float | None = None
    watermark: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = None
    return_k_alternatives: int | None = None
    grammar: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    adapter_source: str | None = None
    api_token: str | None = None

    def refuse_unsupported(self) -> None:
        for name, (accepted, why) in UNSUPPORTED.items():
            if getattr(self, name) not in accepted:
                raise BadRequestError(f"parameters.{name}: not supported: {why}")

    def sampling(self) -> SamplingSpec:
        """TGI samples when asked to, or when any sampling parameter is set to a non-neutral value."""
        temperature = 1.0 if self.temperature is None else self.temperature
        warped = temperature != 1.0 or (self.top_k or 0) > 0 or (self.top_p or 1.0) < 1.0
        return SamplingSpec(
            max_new_tokens=self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            do_sample=(self.do_sample or warped) and temperature > 0,
            temperature=temperature,
            top_k=max(self.top_k or 0, 0),
            top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed,
            stop=tuple(self.stop),
            ignore_eos=self.ignore_eos_token,
        )


class TgiRequest(BaseModel):
    model_config = CLOSED
    inputs: str = Field(min_length=1)
    parameters: TgiParameters | None = None
    stream: bool = Field(False, description="read by POST / only; the other routes' path decides")

    @property
    def params(self) -> TgiParameters:
        return self.parameters or TgiParameters.model_validate({})

    def to_generate(self, stream: bool) -> GenerateRequest:
        params = self.params
        params.refuse_unsupported()
        mixture = params.merged_adapters.mixture() if params.merged_adapters else None
        if mixture and params.adapter_id:
            raise BadRequestError("parameters: give adapter_id or merged_adapters, not both")
        return GenerateRequest(
            sampling=params.sampling(),
            prompts=(self.inputs,),
            adapters=(params.adapter_id or None,),
            mixture=mixture,
            details=params.details,
            logprobs=params.details or stream,
            stream=stream,
        )

    def answer_text(self, text: str) -> str:
        return self.inputs + text if self.params.return_full_text else text


# -- responses ----------------------------------------------------------------------------
def token_json(token: TokenOutput, finish: FinishReason | None) -> dict[str, Any]:
    """``special``: the end-of-sequence token (the only special token the engine emits; no text)."""
    return {
        "id": token.token_id,
        "text": token.text,
        "logprob": token.logprob,
        "special": finish is FinishReason.EOS_TOKEN,
    }


def _seed(request: TgiRequest, sampled: bool) -> int | None:
    """The seed given, when sampling (the engine does not report a seed it drew itself)."""
    return request.params.seed if sampled else None


def response_json(request: TgiRequest, message: GenerateRequest, seq: SequenceOutput) -> dict[str, Any]:
    answer: dict[str, Any] = {"generated_text": request.answer_text(seq.text)}
    if request.params.details:
        last = len(seq.tokens) - 1
        answer["details"] = {
            "finish_reason": seq.finish_reason.value,
            "generated_tokens": seq.generated_tokens,
            "prompt_tokens": seq.prompt_tokens,
            "seed": _seed(request, message.sampling.do_sample),
            "prefill": [],
            "tokens": [
                token_json(t, seq.finish_reason if i == last else None) for i, t in enumerate(seq.tokens)
            ],
        }
    return answer


def stream_event(request: TgiRequest, message: GenerateRequest, event: TokenOutput, index: int) -> bytes:
    """Event ``index`` (from 1, as TGI counts) of one per token; the last carries the whole text
    (and details when asked)."""
    payload: dict[str, Any] = {
        "index": index,
        "token": token_json(event, event.finish_reason),
        "generated_text": None,
        "details": None,
    }
    summary = event.summary
    if summary is not None:
        payload["generated_text"] = request.answer_text(summary.text)
        if request.params.details:
            payload["details"] = {
                "finish_reason": summary.finish_reason.value,
                "generated_tokens": summary.generated_tokens,
                "input_length": summary.prompt_tokens,
                "prompt_tokens": summary.prompt_tokens,
                "seed": _seed(request, message.sampling.do_sample),
            }
    return sse(payload)


def sse(payload: Any) -> bytes:
    return f"data:{json.dumps(payload, allow_nan=False)}\n\n".encode()


def error_json(exc: LoraserveError) -> dict[str, Any]:
    """TGI's error body; its clients read ``validation`` as a refused request."""
    return {"error": exc.message, "error_type": "validation" if exc.status_code == 400 else exc.error_type}


def stream_error(message: str) -> bytes:
    """A failure after the headers went out, as TGI sends one."""
    return sse({"error": message, "error_type": "generation"})
