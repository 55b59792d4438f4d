"""One ``GenerateRequest`` run on the engine from the worker's event loop.

The prompt-size limit is checked before any tokenizing; chat templating and tokenizing run in
a thread, so a huge prompt never stalls the loop (other requests, ``/metrics``). All sequences
of a request are submitted together; if one is refused, or the call is cancelled (the client
went away), or it fails, every sequence still in the engine is aborted, which releases its
KV-cache slot and its adapter reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from loraserve.engine.sampling import SamplingParams
from loraserve.engine.sequence import Sequence, TokenEvent
from loraserve.errors import BadRequestError, LoraserveError
from loraserve.handlers.messages import (
    FinishReason,
    GenerateRequest,
    GenerateResult,
    SequenceOutput,
    TokenOutput,
    finite_or_none,
)

if TYPE_CHECKING:
    from loraserve.engine import LLMEngine

CHARS_PER_TOKEN_BOUND = 32  # default prompt limit: max_model_len tokens of this many characters


class _Bridge:
    """One sequence's engine events, handed from the engine thread to this event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, index: int) -> None:
        self.loop, self.index = loop, index
        self.events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.seq: Sequence | None = None
        self.outputs: list[TokenOutput] = []
        self.done = False

    def on_event(self, event: TokenEvent) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def next(self, keep: bool) -> TokenOutput:
        """The next token; its finish reason and the sequence's summary on the last one."""
        event = await self.events.get()
        seq = self.seq
        assert seq is not None
        reason = None if event.finish_reason is None else FinishReason(event.finish_reason)
        if reason is FinishReason.ERROR:
            self.done = True
            raise LoraserveError("generation failed inside the engine; see the server log")
        token = TokenOutput(self.index, event.token_id, event.text, finite_or_none(event.logprob), reason)
        if keep:
            self.outputs.append(token)
        if reason is None:
            return token
        self.done = True
        summary = SequenceOutput(seq.text, reason, len(seq.prompt_ids), len(seq.output_ids),
                                 tuple(self.outputs))
        return TokenOutput(token.index, token.token_id, token.text, token.logprob, reason, summary)


class Generation:
    """Submit, follow and (when needed) abort the sequences of one request."""

    def __init__(self, engine: LLMEngine, request: GenerateRequest, max_prompt_chars: int) -> None:
        self.engine, self.request, self.max_prompt_chars = engine, request, max_prompt_chars
        self.bridges: list[_Bridge] = []
        self.loop = asyncio.get_running_loop()

    async def start(self) -> None:
        prompts = await self._prompts()
        ids = await asyncio.to_thread(lambda: [self.engine.tokenizer.encode(p) for p in prompts])
        params = self._params()
        try:
            for index, (tokens, adapter) in enumerate(zip(ids, self.request.adapters)):
                bridge = _Bridge(self.loop, index)
                bridge.seq = self.engine.add_request(tokens, self.request.mixture or adapter, params,
                                                     bridge.on_event)
                self.bridges.append(bridge)
        except BaseException:
            self.abort()  # one refused prompt: the ones already submitted stop too
            raise

    async def _prompts(self) -> list[str]:
        request = self.request
        if request.messages is None:
            for prompt in request.prompts:
                self._check_size(len(prompt))
            return list(request.prompts)
        self._check_size(sum(len(m["content"]) + len(m["role"]) for m in request.messages))
        return [await asyncio.to_thread(self._template, list(request.messages))]

    def _check_size(self, chars: int) -> None:
        if chars > self.max_prompt_chars:
            raise BadRequestError(f"the prompt has {chars} characters, more than this model takes "
                                  f"({self.max_prompt_chars}, option.max_prompt_chars)")

    def _template(self, messages: list[dict[str, Any]]) -> str:
        tokenizer = self.engine.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise BadRequestError("this model's tokenizer has no chat template; send \"inputs\" instead")
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja errors from a user's template
            raise BadRequestError(f"cannot apply the chat template: {exc}") from None

    def _params(self) -> SamplingParams:
        spec, request = self.request.sampling, self.request
        return SamplingParams(
            max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample, temperature=spec.temperature,
            top_k=spec.top_k, top_p=spec.top_p, repetition_penalty=spec.repetition_penalty,
            seed=spec.seed, stop=list(spec.stop), ignore_eos=spec.ignore_eos,
            details=request.details, logprobs=request.logprobs or request.details)

    async def result(self) -> GenerateResult:
        try:
            outputs = await asyncio.gather(*(self._finish(b) for b in self.bridges))
        finally:
            self.abort()
        peak = max((b.seq.peak_batch for b in self.bridges if b.seq), default=0)
        return GenerateResult(tuple(outputs), peak)

    async def _finish(self, bridge: _Bridge) -> SequenceOutput:
        while True:
            token = await bridge.next(keep=self.request.details)
            if token.summary is not None:
                return token.summary

    async def events(self) -> AsyncIterator[TokenOutput]:
        """The tokens of a one-sequence request as they come (streaming)."""
        bridge = self.bridges[0]
        try:
            while not bridge.done:
                yield await bridge.next(keep=self.request.details)
        finally:
            self.abort()

    def abort(self) -> None:
        """Abort every sequence not finished yet, in a thread: the engine lock may be held by a
        step, and this runs on cancellation paths that must not wait."""
        live = [b.seq.request_id for b in self.bridges if b.seq is not None and not b.done]
        for bridge in self.bridges:
            bridge.done = True
        if not live:
            return
        try:
            self.loop.run_in_executor(None, self._abort_all, live)
        except RuntimeError:  # the loop is closing (a generator finalised late): abort here
            self._abort_all(live)

    def _abort_all(self, request_ids: list[int]) -> None:
        for request_id in request_ids:
            self.engine.abort(request_id)
