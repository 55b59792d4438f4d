"""The built-in LLM handler (DJL's "huggingface"/LMI role) on loraserve's own engine.

The HTTP front parses LMI and OpenAI requests itself and calls the typed ``generate`` hook
with a ``GenerateRequest``, and ``control`` with a ``wire.control`` operation (adapters,
statistics); ``handle`` still takes DJL ``Input`` (workflows, and anything else that sends a raw
LMI body) and parses it with the same LMI spec. Both are async, so the
worker runs many requests at once and they share the engine's running batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loraserve.config import parse_bool, parse_int
from loraserve.engine import EngineConfig, LLMEngine
from loraserve.errors import BadRequestError, LoraserveError
from loraserve.handlers.adapter_code import AdapterCode, roles
from loraserve.handlers.generation import CHARS_PER_TOKEN_BOUND, Generation
from loraserve.handlers.io import Input, Output
from loraserve.handlers.tool_calls import detect_format
from loraserve.specs import lmi
from loraserve.specs.base import parse
from loraserve.wire.control import (
    ControlDone,
    ControlOp,
    EngineStats,
    EngineStatsQuery,
    FormatInput,
    FormatOutput,
    Formatted,
    RegisterAdapter,
    UnregisterAdapter,
)
from loraserve.wire.messages import GenerateRequest, GenerateResult, TokenStream

log = logging.getLogger("loraserve.engine")
_engine: LLMEngine | None = None
_max_prompt_chars = 0
_tool_format: str | None = None  # how this model writes tool calls (tool_calls.py)
_special_tokens_in_content = False  # chat content's control-token text as control tokens (chat_prompt.py)
_adapter_code = AdapterCode()  # adapters' own model.py (DJL's AdapterFormatterMixin)


def engine() -> LLMEngine:
    assert _engine is not None, "the engine is initialised by the warm-up call"
    return _engine


# What this handler reads besides the engine's own settings (EngineConfig's fields); the rest of
# serving.properties is named in one warning at load (DJL/LMI settings this engine ignores).
_HANDLER_SETTINGS = frozenset(
    {
        "model_id",
        "max_prompt_chars",
        "chat_special_tokens_in_content",
        "tool_call_parser",
        "entryPoint",
        "enable_lora",
        "adapter_resolvers",  # read by the server (serving/adapter_resolver.py)
        "model_dir",
        "engine",
        "batch_size",
    }
)


def _warn_unused(properties: dict[str, str], config: EngineConfig) -> None:
    read = _HANDLER_SETTINGS | {f.name for f in dataclasses.fields(EngineConfig)}
    unused = sorted(set(properties) - read)
    if unused:
        log.warning(
            "serving.properties settings the built-in engine does not use (ignored): %s", ", ".join(unused)
        )
    if config.dtype in ("fp16", "float16") and config.device in ("auto", "cpu"):
        log.warning(
            "option.dtype=%s on a CPU runs fp16 matrix products without hardware support (slow); "
            "auto picks bf16 where this CPU computes it natively, else fp32",
            config.dtype,
        )


def _initialise(properties: dict[str, str]) -> None:
    global _engine, _max_prompt_chars, _tool_format, _special_tokens_in_content
    config = EngineConfig.from_options(properties)
    _warn_unused(properties, config)
    limit = None  # parsed before the model loads, so a bad value fails fast
    if "max_prompt_chars" in properties:
        limit = parse_int(properties["max_prompt_chars"], "option.max_prompt_chars", 1)
    _engine = LLMEngine(config, Path(properties.get("model_dir", ".")))
    _max_prompt_chars = limit or CHARS_PER_TOKEN_BOUND * _engine.runner.max_len  # the model's own length
    template = getattr(_engine.tokenizer, "chat_template", None)
    option = properties.get("chat_special_tokens_in_content", "false")
    _special_tokens_in_content = parse_bool(option, "option.chat_special_tokens_in_content")
    _tool_format = detect_format(
        template if isinstance(template, str) else None, properties.get("tool_call_parser")
    )
    _engine.start()


async def generate(request: GenerateRequest) -> GenerateResult | TokenStream:
    """The typed entry point: a result, or a stream of ``TokenOutput``. Cancelling the call
    (the front sends a cancel when its client goes away) aborts the sequences."""
    generation = Generation(engine(), request, _max_prompt_chars, _tool_format, _special_tokens_in_content)
    await generation.start()
    if request.stream:
        return TokenStream(generation.events())
    return await generation.result()


async def handle(inputs: Input) -> Output | None:
    if inputs.is_empty():
        await asyncio.to_thread(_initialise, inputs.get_properties())
        return None
    try:
        return await _handle_lmi(inputs)
    except LoraserveError as exc:
        return Output().error(exc.message, code=exc.status_code, message=exc.error_type)


async def _handle_lmi(item: Input) -> Output:
    """An LMI body in a DJL Input; adapters in DJL's order: the SageMaker adapter header, content
    ``adapter``, the body's ``adapters``, property ``adapter``."""
    try:
        body = item.get_as_json("data") if item.contains_key("data") else {}
    except ValueError:
        raise BadRequestError("the request body must be JSON") from None
    parsed = parse(lmi.LmiRequest, body)
    request = lmi.to_generate(parsed, item.get_property("adapter"), override=adapter_override(item))
    coded = [n for n in request.adapter_names if n in _adapter_code.handlers]
    if coded:  # a workflow's call: refused, never answered unformatted
        raise BadRequestError(
            f"adapter {coded[0]} has its own formatters (its model.py); a workflow cannot call it "
            "(formatters run on DJL's /predictions and /invocations routes)"
        )
    reply = await generate(request)
    if isinstance(reply, TokenStream):
        output = Output().add_property("content-type", "application/jsonlines")
        return output.add_stream_content(_lines(reply.events, request.details), output_formatter=None)
    output = Output().add_property("x-loraserve-peak-batch", str(reply.peak_batch))
    output.add_property("x-loraserve-generated-tokens", str(reply.generated_tokens))
    return output.add_as_json(lmi.response_json(parsed, reply))


def adapter_override(item: Input) -> str | None:
    """DJL's LMI order, above the body: the ``X-Amzn-SageMaker-Adapter-Identifier`` header,
    then content ``adapter`` (a query parameter or a workflow's)."""
    header = item.get_property(lmi.ADAPTER_IDENTIFIER)
    if header:
        return header
    return item.get_as_string("adapter") if item.contains_key("adapter") else None


async def _lines(events: AsyncIterator, details: bool) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield lmi.stream_line(event, details)
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # aborts what is still running


def engine_stats() -> dict[str, Any]:
    """Engine figures for the server's /metrics and the Ray ingress."""
    eng = engine()
    figures = eng.stats()
    with eng.lock:
        figures |= {
            "adapters": eng.adapters.stats(),
            "adapter_tiers": eng.adapters.tiers(),
            "adapter_bytes": eng.adapters.sizes(),
            "adapter_residency": eng.adapters.residency(),
            "adapter_refs": sum(eng.adapters.refs.values()),
        }
    return figures


async def _register(op: RegisterAdapter) -> ControlDone:
    """The adapter's ``model.py`` first (DJL's order: broken code loads no weights), then its
    weights; the code is in use only once both succeeded."""
    code = await asyncio.to_thread(_adapter_code.load, op.name, op.path, op.identity)
    try:
        await asyncio.to_thread(engine().register_adapter, op.name, op.path, op.pin, op.preload, op.identity)
    except BaseException:
        if code is not None:
            code.unload()
        raise
    _adapter_code.install(op.name, code)
    return ControlDone(f"Adapter {op.name} registered", roles(code), custom_code=code is not None)


async def control(op: ControlOp) -> ControlDone | EngineStats | Formatted:
    """The typed control entry point; a refusal is raised (the worker sends it as an error).
    Registering a name again (an update) replaces the old version; running requests keep theirs.
    ``FormatInput`` / ``FormatOutput`` run an adapter's own formatters (``adapter_code``)."""
    match op:
        case RegisterAdapter():
            return await _register(op)
        case UnregisterAdapter():
            await asyncio.to_thread(engine().unregister_adapter, op.name)
            _adapter_code.install(op.name, None)
            return ControlDone(f"Adapter {op.name} unregistered")
        case EngineStatsQuery():
            return EngineStats(engine_stats())
        case FormatInput():
            tokenizer = engine().tokenizer  # DJL's LMI handlers pass theirs to the formatter
            return Formatted(
                await asyncio.to_thread(_adapter_code.format_input, op.adapter, op.body, tokenizer=tokenizer)
            )
        case FormatOutput():
            return Formatted(await asyncio.to_thread(_adapter_code.format_output, op.adapter, op.output))
    raise TypeError(f"not a control operation: {op!r}")
