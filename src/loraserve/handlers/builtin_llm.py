"""The built-in LLM handler (DJL's "huggingface"/LMI role) on loraserve's own engine.

Speaks the LMI schema: ``{"inputs": str | [str], "parameters": {...}, "adapters": str | [str],
"stream": bool}`` → ``{"generated_text": ...}`` (a list for a list of inputs), ``details``
when asked, JSON-lines streaming; and LMI's chat schema (``messages``). ``handle`` is async,
so the worker runs many requests at once and they share the engine's running batch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.engine.sequence import Sequence, TokenEvent
from loraserve.errors import BadRequestError, LoraserveError
from loraserve.handlers.io import Input, Output

_engine: LLMEngine | None = None


def engine() -> LLMEngine:
    assert _engine is not None, "the engine is initialised by the warm-up call"
    return _engine


def _initialise(properties: dict[str, str]) -> None:
    global _engine
    config = EngineConfig.from_options(properties)
    _engine = LLMEngine(config, Path(properties.get("model_dir", ".")))
    _engine.start()


def adapters_of(item: Input, body: dict, count: int) -> list[str | None]:
    """DJL's LMI order: the ``X-Amzn-SageMaker-Adapter-Identifier`` header, then content
    ``adapter`` (query or workflow), then the body's ``adapters``; else property ``adapter``."""
    field = item.get_property("X-Amzn-SageMaker-Adapter-Identifier")
    if field is None and item.contains_key("adapter"):
        field = item.get_as_string("adapter")
    if field is None:
        field = body.get("adapters")
    if field is None:
        field = item.get_property("adapter")
    if isinstance(field, list):
        if len(field) != count:
            raise BadRequestError(f'"adapters" has {len(field)} entries for {count} inputs')
        return [a or None for a in field]
    return [field or None] * count


class _Request:
    """One sequence's events, bridged from the engine thread into this event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.seq: Sequence | None = None

    def on_event(self, event: TokenEvent) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def tokens(self) -> AsyncIterator[TokenEvent]:
        while True:
            event = await self.events.get()
            yield event
            if event.finish_reason is not None:
                return


def _details(seq: Sequence, events: list[TokenEvent]) -> dict[str, Any]:
    return {"finish_reason": seq.finish_reason, "generated_tokens": len(seq.output_ids),
            "inputs": None, "prompt_tokens": len(seq.prompt_ids),
            "tokens": [{"id": e.token_id, "text": e.text, "log_prob": e.logprob} for e in events]}


def _submit(prompt: str, adapter: str | None, params: SamplingParams) -> _Request:
    request = _Request(asyncio.get_running_loop())
    request.seq = engine().add_request(prompt, adapter, params, request.on_event)
    return request


async def _collect(request: _Request, details: bool) -> dict[str, Any]:
    events = [event async for event in request.tokens()]
    seq = request.seq
    assert seq is not None
    if seq.finish_reason == "error":
        raise LoraserveError("generation failed inside the engine; see the server log")
    result: dict[str, Any] = {"generated_text": seq.text}
    if details:
        result["details"] = _details(seq, events)
    return result


async def _stream(request: _Request, details: bool) -> AsyncIterator[str]:
    events = []
    async for event in request.tokens():
        events.append(event)
        line: dict[str, Any] = {"token": {"id": event.token_id, "text": event.text,
                                          "log_prob": event.logprob}, "generated_text": None}
        if event.finish_reason is not None:
            assert request.seq is not None
            line["generated_text"] = request.seq.text
            if details:
                line["details"] = _details(request.seq, events)
        yield json.dumps(line) + "\n"


def _chat_prompt(body: dict) -> str:
    messages = body["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequestError('"messages" must be a list of {"role", "content"} objects')
    tokenizer = engine().tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequestError("this model's tokenizer has no chat template; send \"inputs\" instead")
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja errors from a user's template
        raise BadRequestError(f"cannot apply the chat template: {exc}") from None


async def _generate(item: Input) -> Output:
    try:
        body = item.get_as_json("data") if item.contains_key("data") else {}
    except ValueError:
        raise BadRequestError("the request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequestError('the request body must be a JSON object with "inputs"')
    params = SamplingParams.from_lmi(body.get("parameters") or {})
    params.logprobs = params.details or bool(body.get("stream"))
    if "messages" in body and not body.get("stream"):
        return await _chat(item, body, params)
    inputs = _chat_prompt(body) if "messages" in body else body.get("inputs", body.get("prompt"))
    prompts = inputs if isinstance(inputs, list) else [inputs]
    if inputs is None or not all(isinstance(p, str) for p in prompts):
        raise BadRequestError('"inputs" must be a string or a list of strings')
    adapters = adapters_of(item, body, len(prompts))
    requests = [_submit(p, a, params) for p, a in zip(prompts, adapters)]
    output = Output()
    if body.get("stream"):
        if len(requests) != 1:
            raise BadRequestError("streaming takes one input at a time")
        output.add_property("content-type", "application/jsonlines")
        return output.add_stream_content(_stream(requests[0], params.details), output_formatter=None)
    results = await asyncio.gather(*(_collect(r, params.details) for r in requests))
    peak = max(r.seq.peak_batch for r in requests if r.seq)
    output.add_property("x-loraserve-peak-batch", str(peak))
    output.add_property("x-loraserve-generated-tokens",
                        str(sum(len(r.seq.output_ids) for r in requests if r.seq)))
    return output.add_as_json(results if isinstance(inputs, list) else results[0])


async def _chat(item: Input, body: dict, params: SamplingParams) -> Output:
    adapter = adapters_of(item, body, 1)[0]
    request = _submit(_chat_prompt(body), adapter, params)
    result = await _collect(request, details=False)
    seq = request.seq
    assert seq is not None
    finish = {"eos_token": "stop", "stop_sequence": "stop"}.get(seq.finish_reason or "", "length")
    return Output().add_as_json({
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": result["generated_text"]}}],
        "usage": {"prompt_tokens": len(seq.prompt_ids), "completion_tokens": len(seq.output_ids),
                  "total_tokens": seq.total_len},
    })


async def handle(inputs: Input) -> Output | None:
    if inputs.is_empty():
        await asyncio.to_thread(_initialise, inputs.get_properties())
        return None
    try:
        return await _generate(inputs)
    except LoraserveError as exc:
        return Output().error(exc.message, code=exc.status_code, message=exc.error_type)


async def stats(_inputs: Input) -> Output:
    """Engine figures for the server's /metrics."""
    eng = engine()
    with eng.lock:
        scheduler = eng.scheduler
        slots = eng.config.max_rolling_batch_size
        figures = {"running": len(scheduler.running), "waiting": len(scheduler.waiting),
                   "kv_usage": (slots - len(scheduler.free_slots)) / slots,
                   "adapters": eng.adapters.stats(), "adapter_tiers": eng.adapters.tiers(),
                   "steps": eng.steps}
    return Output().add_as_json(figures)


def _flag(inputs: Input, key: str, default: bool) -> bool:
    return inputs.get_as_string(key).lower() == "true" if inputs.contains_key(key) else default


async def register_adapter(inputs: Input) -> Output:
    name, src = inputs.get_properties()["name"], inputs.get_properties()["src"]
    try:
        await asyncio.to_thread(engine().register_adapter, name, src,
                                _flag(inputs, "pin", False), _flag(inputs, "preload", True))
    except LoraserveError as exc:
        return Output().error(exc.message, code=exc.status_code, message=exc.error_type)
    return Output().add(f"Adapter {name} registered")


update_adapter = register_adapter  # a new version replaces the old; running requests keep theirs


async def unregister_adapter(inputs: Input) -> Output:
    name = inputs.get_properties()["name"]
    try:
        await asyncio.to_thread(engine().unregister_adapter, name)
    except LoraserveError as exc:
        return Output().error(exc.message, code=exc.status_code, message=exc.error_type)
    return Output().add(f"Adapter {name} unregistered")
