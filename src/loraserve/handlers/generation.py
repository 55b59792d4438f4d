"""One ``GenerateRequest`` run on the engine from the worker's event loop.

The prompt-size limit is checked before any tokenizing; chat templating and tokenizing run in
a thread, so a huge prompt never stalls the loop (other requests, ``/metrics``); so does
compiling a structured-output constraint (a 400 naming the problem if it cannot be). All sequences
of a request (``n`` or ``best_of`` per prompt) are submitted together and report into one
queue; if one is refused, or the call is cancelled (the client went away), or it fails, every
sequence still in the engine is aborted, which releases its KV-cache slot and its adapter
reference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from loraserve.constraints import OutputConstraint
from loraserve.engine.sequence import Sequence, TokenEvent
from loraserve.errors import BadRequestError, LoraserveError
from loraserve.handlers.chat_prompt import chat_prompt_ids
from loraserve.handlers.tool_calls import ToolCallFilter, tool_grammar
from loraserve.wire.messages import (
    FinishReason,
    GenerateRequest,
    GenerateResult,
    SequenceOutput,
    TokenLogprob,
    TokenOutput,
    ToolCall,
    finite_or_none,
)
from loraserve.wire.sampling import SamplingParams, sample_seed

if TYPE_CHECKING:
    from loraserve.engine import LLMEngine

CHARS_PER_TOKEN_BOUND = 32  # default prompt limit: max_model_len tokens of this many characters


class _TokenTexts:
    """Token ids as the text OpenAI's log-probs show for them (each decoded alone), cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = str(self.tokenizer.decode([token_id]))
        return text

    def entry(self, token_id: int, logprob: float | None, top: tuple[tuple[int, float], ...]) -> TokenLogprob:
        return TokenLogprob(
            self(token_id),
            finite_or_none(logprob),
            tuple((self(t), v) for t, v in top if finite_or_none(v) is not None),
        )


class _Track:
    """One sequence of the request: its engine events become ``TokenOutput``s."""

    def __init__(self, index: int, seq: Sequence, score_only: bool, tool_format: str | None = None) -> None:
        self.index, self.seq, self.score_only = index, seq, score_only
        self.tools = ToolCallFilter(tool_format) if tool_format else None  # held back from a call on
        self.outputs: list[TokenOutput] = []
        self.done = False

    def token(self, event: TokenEvent, texts: _TokenTexts | None, keep: bool) -> TokenOutput:
        """The event as a ``TokenOutput``; its finish reason and the summary on the last one."""
        reason = event.finish_reason
        if reason is FinishReason.ERROR:
            self.done = True
            raise LoraserveError("generation failed inside the engine; see the server log")
        if self.score_only and reason is not None:  # max_tokens 0: the prompt alone, no token
            reason = FinishReason.LENGTH
            event = TokenEvent(event.request_id, -1, "", None, reason)
        logprobs = None
        if texts is not None and event.token_id >= 0:
            logprobs = texts.entry(event.token_id, event.logprob, event.top_logprobs)
        text, calls = event.text, tuple[ToolCall, ...]()
        if self.tools is not None:
            text = self.tools.feed(text)
            if reason is not None:
                rest, found = self.tools.finish()
                text, calls = text + rest, tuple(found)
        token = TokenOutput(
            self.index, event.token_id, text, finite_or_none(event.logprob), reason, logprobs=logprobs
        )
        if keep and event.token_id >= 0:
            self.outputs.append(token)
        if reason is None:
            return token
        self.done = True
        return dataclasses.replace(token, summary=self._summary(reason), tool_calls=calls)

    def _summary(self, reason: FinishReason) -> SequenceOutput:
        seq = self.seq
        generated = 0 if self.score_only else len(seq.output_ids)
        text = "" if self.score_only else seq.text
        calls: tuple[ToolCall, ...] = ()
        if self.tools is not None and self.tools.parsed is not None:  # parsed once, by finish()
            content, found = self.tools.parsed
            text, calls = (content, tuple(found)) if found else (text, ())
        known = [v for lp in seq.logprobs[:generated] if (v := finite_or_none(lp)) is not None]
        cumulative = sum(known) if generated and len(known) == generated else None  # best_of ranks by it
        return SequenceOutput(
            text,
            reason,
            len(seq.prompt_ids),
            generated,
            tuple(self.outputs),
            cumulative_logprob=cumulative,
            tool_calls=calls,
        )


class Generation:
    """Submit, follow and (when needed) abort the sequences of one request."""

    def __init__(
        self,
        engine: LLMEngine,
        request: GenerateRequest,
        max_prompt_chars: int,
        tool_format: str | None = None,
        special_tokens_in_content: bool = False,
    ) -> None:
        self.engine, self.request, self.max_prompt_chars = engine, request, max_prompt_chars
        self.special_tokens_in_content = special_tokens_in_content  # transformers' role-injection route
        self.tool_format = tool_format if request.tools else None
        if request.tools and tool_format is None:
            raise BadRequestError(
                "tools: this model's chat template writes no tool-call format loraserve "
                "knows; set option.tool_call_parser (hermes, mistral or llama3_json)"
            )
        self.constraint = request.sampling.constraint
        if request.required_tool and self.tool_format and request.tools:  # tool_choice required / named
            name = None if request.required_tool == "*" else request.required_tool
            self.constraint = OutputConstraint("grammar", tool_grammar(request.tools, name, self.tool_format))
        self.tracks: list[_Track] = []
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()
        wants_texts = request.top_logprobs is not None or request.echo
        self.texts = _TokenTexts(engine.tokenizer) if wants_texts else None
        self.prompt_ids: list[list[int]] = []

    async def start(self) -> None:
        prompts = await self._prompts()
        tokenizer = self.engine.tokenizer
        self.prompt_ids = await asyncio.to_thread(
            lambda: [list(p) if isinstance(p, tuple) else tokenizer.encode(p) for p in prompts]
        )
        if self.constraint is not None:  # compiled here, off the loop and the engine lock; cached
            await asyncio.to_thread(self.engine.compile_constraint, self.constraint)
        request = self.request
        try:
            for index, ids in enumerate(self.prompt_ids):
                adapter = request.adapters[index] if index < len(request.adapters) else request.adapters[-1]
                for sample in range(request.samples):
                    params = self._params(len(ids), sample)
                    track_index = len(self.tracks)
                    seq = self.engine.add_request(
                        ids,
                        request.mixture or adapter,
                        params,
                        functools.partial(self._on_event, track_index),
                    )
                    score_only = request.sampling.max_new_tokens == 0
                    self.tracks.append(_Track(track_index, seq, score_only, self.tool_format))
        except BaseException:
            self.abort()  # one refused prompt: the ones already submitted stop too
            raise

    def _on_event(self, track: int, event: TokenEvent) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (track, event))

    async def _prompts(self) -> list[str | tuple[int, ...]]:
        request = self.request
        if request.messages is None:
            for prompt in request.prompts:
                self._check_size(len(prompt))
            return list(request.prompts)
        self._check_size(sum(len(str(m)) for m in request.messages) + len(str(request.tools or "")))
        return [await asyncio.to_thread(self._template, list(request.messages))]

    def _check_size(self, chars: int) -> None:
        if chars > self.max_prompt_chars:
            raise BadRequestError(
                f"the prompt has {chars} characters, more than this model takes "
                f"({self.max_prompt_chars}, option.max_prompt_chars)"
            )

    def _template(self, messages: list[dict[str, Any]]) -> tuple[int, ...]:
        tools: Any = list(self.request.tools) if self.request.tools else None
        return tuple(chat_prompt_ids(self.engine.tokenizer, messages, tools, self.special_tokens_in_content))

    def _params(self, prompt_tokens: int, sample: int) -> SamplingParams:
        """The engine's parameters for sample ``sample`` of a prompt: ``max_new_tokens`` None is
        what the context leaves, 0 scores the prompt (one token is run and not answered); a
        seeded request's samples get seeds seed, seed + 1, ... (each reproducible)."""
        spec, request = self.request.sampling, self.request
        max_new = spec.max_new_tokens
        if max_new is None:
            max_new = max(self.engine.runner.max_len - prompt_tokens, 1)
        best_of = request.best_of is not None and request.best_of > request.n
        scores = request.echo and request.top_logprobs is not None
        return SamplingParams(
            max_new_tokens=max(max_new, 1),
            do_sample=spec.do_sample,
            temperature=spec.temperature,
            top_k=spec.top_k,
            top_p=spec.top_p,
            repetition_penalty=spec.repetition_penalty,
            seed=None if spec.seed is None else sample_seed(spec.seed, sample),
            stop=list(spec.stop),
            ignore_eos=spec.ignore_eos,
            details=request.details,
            logprobs=request.logprobs or request.details or request.top_logprobs is not None or best_of,
            top_logprobs=request.top_logprobs or 0,
            prompt_logprobs=request.top_logprobs if scores else None,
            presence_penalty=spec.presence_penalty,
            frequency_penalty=spec.frequency_penalty,
            logit_bias=dict(spec.logit_bias),
            min_tokens=min(spec.min_tokens, max(max_new, 1)),
            stop_token_ids=list(spec.stop_token_ids),
            min_p=spec.min_p,
            constraint=self.constraint,
        )

    async def _next(self) -> TokenOutput:
        """The next token of any of the request's sequences."""
        index, event = await self.queue.get()
        track = self.tracks[index]
        keep = self.request.details or self.request.top_logprobs is not None
        token = track.token(event, self.texts, keep)
        if token.summary is not None:
            token = self._with_prompt(token, track)
        return token

    def _with_prompt(self, token: TokenOutput, track: _Track) -> TokenOutput:
        """Echo: the summary carries the prompt's text and, when asked, its tokens' log-probs."""
        if not self.request.echo or token.summary is None:
            return token
        seq, texts = track.seq, self.texts
        assert texts is not None
        prompt_text = str(self.engine.tokenizer.decode(seq.prompt_ids))
        scored: tuple[TokenLogprob, ...] = ()
        if self.request.top_logprobs is not None:
            first = TokenLogprob(texts(seq.prompt_ids[0]), None)
            scored = (first, *(texts.entry(s.token_id, s.logprob, s.top) for s in seq.prompt_logprobs))
        summary = token.summary
        summary = dataclasses.replace(token.summary, prompt_text=prompt_text, prompt_logprobs=scored)
        return dataclasses.replace(token, summary=summary)

    async def result(self) -> GenerateResult:
        summaries: dict[int, SequenceOutput] = {}
        try:
            while len(summaries) < len(self.tracks):
                token = await self._next()
                if token.summary is not None:
                    summaries[token.index] = token.summary
        finally:
            self.abort()
        peak = max((t.seq.peak_batch for t in self.tracks), default=0)
        return GenerateResult(self._choose([summaries[i] for i in range(len(self.tracks))]), peak)

    def _choose(self, outputs: list[SequenceOutput]) -> tuple[SequenceOutput, ...]:
        """``best_of``: per prompt, the ``n`` outputs with the highest cumulative log-prob."""
        samples, n = self.request.samples, self.request.n
        if samples == n:
            return tuple(outputs)
        chosen: list[SequenceOutput] = []
        for start in range(0, len(outputs), samples):
            group = outputs[start : start + samples]
            ranked = sorted(
                group,
                key=lambda o: -(o.cumulative_logprob if o.cumulative_logprob is not None else float("-inf")),
            )
            chosen += ranked[:n]
        return tuple(chosen)

    async def events(self) -> AsyncIterator[TokenOutput]:
        """The tokens of every sequence as they come (streaming; ``index`` tells them apart)."""
        try:
            while not all(t.done for t in self.tracks):
                token = await self._next()
                if token.token_id >= 0 or token.finish_reason is not None:
                    yield token
        finally:
            self.abort()

    def abort(self) -> None:
        """Abort every sequence not finished yet, in a thread: the engine lock may be held by a
        step, and this runs on cancellation paths that must not wait."""
        live = [t.seq.request_id for t in self.tracks if not t.done]
        for track in self.tracks:
            track.done = True
        if not live:
            return
        try:
            self.loop.run_in_executor(None, self._abort_all, live)
        except RuntimeError:  # the loop is closing (a generator finalised late): abort here
            self._abort_all(live)

    def _abort_all(self, request_ids: list[int]) -> None:
        for request_id in request_ids:
            self.engine.abort(request_id)
