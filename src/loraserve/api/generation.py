"""The front half of a built-in-engine call: send the typed ``GenerateRequest`` to a worker,
cancel it when the client goes away (vLLM's ``with_cancellation``), and read its tokens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TypeVar

from fastapi import Request

from loraserve.errors import BadRequestError, LoraserveError
from loraserve.serving.metrics import adapter_label
from loraserve.serving.model_service import ModelService
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.messages import GenerateRequest, TokenOutput

T = TypeVar("T")


class ClientGoneError(LoraserveError):
    """The client disconnected before its answer was ready; nobody reads this response."""

    status_code = 499
    error_type = "ClientClosedRequest"


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it. Call once the body is read:
    from then on the only message the server can send is ``http.disconnect``."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientGoneError("the client disconnected") from None
        raise
    finally:
        watcher.cancel()


@contextlib.contextmanager
def counted_refusals(request: Request, model: ModelService) -> Iterator[None]:
    """Requests refused at the edge still count as the model's failed requests."""
    try:
        yield
    except LoraserveError as exc:
        request.app.state.metrics.refused(model.name, exc.status_code)
        raise


async def resolve_adapters(request: Request, model: ModelService, names: list[str]) -> None:
    """Register the named adapters a resolver root holds (load on first request); ``serve``
    only (a Ray ingress has no resolver)."""
    resolver = getattr(request.app.state.manager, "resolver", None)
    if resolver is not None and isinstance(model, ModelService):
        await resolver.ensure(model, names)


async def generate(
    request: Request, model: ModelService, message: GenerateRequest, formatted: bool = False
) -> WorkerReply:
    """Counted and timed like every inference call; the metrics label is the adapter.
    ``formatted``: the caller applied the adapters' own formatters (DJL's LMI routes); any
    other route refuses an adapter that has them rather than answer unformatted."""
    names = message.adapter_names
    with counted_refusals(request, model):
        await resolve_adapters(request, model, names)
        model.check_adapters(names)
        if not formatted:
            refuse_formatters(model, names)
    return await cancel_on_disconnect(request, model.infer(message, "generate", adapter_label(model, names)))


def refuse_formatters(model: ModelService, names: list[str]) -> None:
    for name in names:
        record = model.registry.get(name) if name in model.registry else None
        if record is not None and record.formatters:
            raise BadRequestError(
                f"adapter {name} has its own formatters (its model.py: {', '.join(record.formatters)}), "
                f"which apply to DJL's routes only: call it through /predictions/{model.name} or "
                "/invocations, where they run"
            )


async def tokens(reply: WorkerReply) -> AsyncIterator[TokenOutput | Exception]:
    """The stream's ``TokenOutput``s; a failure after the headers went out comes last."""
    assert reply.stream is not None
    while (item := await reply.stream.get()) is not None:
        yield item
        if isinstance(item, Exception):
            return
