"""Calls from the ingress to the engine replicas through a Ray Serve handle.

Affinity: the request's adapter is the multiplexed model id, so Ray's router sends it to a
replica that holds that adapter (and to another, which then loads it, when those are busy).
The base model and pinned adapters (held by every replica) go without an id: plain load
balancing. Control-plane calls (sync, stats) are broadcast to every live replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from contextvars import ContextVar
from typing import Any

from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from loraserve.errors import ServiceUnavailableError
from loraserve.ray_serve.adapter_store import AdapterRef
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.errors import decode_error
from loraserve.wire.frames import ReplyKind
from loraserve.wire.messages import GenerateRequest

log = logging.getLogger("loraserve.ray.routing")
REPLICA_HEADER = "x-loraserve-replica"
RAY_FAILURES = (RayError, RayServeException)  # replica died, back-pressure, no replica yet
# The replica that served the request, for the ingress to name in a header: a holder set per
# request by the ingress, filled here (a mutable holder: the route runs in a copied context).
SERVED_BY: ContextVar[list[str] | None] = ContextVar("loraserve_served_by", default=None)


def routing_id(refs: list[AdapterRef]) -> str:
    """The multiplexed model id: the first adapter not held everywhere, else none ("")."""
    return next((ref.name for ref in refs if not ref.pin), "")


def _unavailable(exc: BaseException) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"the engine replica failed: {type(exc).__name__}; retry the request")


async def _cancelling(response: Any) -> Any:
    """Await a Ray call; if our caller is cancelled (the client left), cancel the Ray call too."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


class ReplicaCaller:
    def __init__(self, handle: Any, broadcast_timeout_s: float = 30.0) -> None:
        self.handle = handle
        self.timeout = broadcast_timeout_s
        self.routed: Counter[tuple[str, str]] = Counter()  # (replica, routing id) → requests
        self._pumps: set[asyncio.Task] = set()

    async def generate(self, message: GenerateRequest, refs: list[AdapterRef]) -> WorkerReply:
        """The typed call on a replica, answered like a worker's typed reply: a
        ``GenerateResult``, or (streaming) no output and a queue of ``TokenOutput`` then None."""
        model_id = routing_id(refs)
        handle = self.handle.options(multiplexed_model_id=model_id)
        try:
            if message.stream:
                return await self._stream(handle.options(stream=True), message, refs, model_id)
            result = await _cancelling(handle.generate.remote(message, refs))
        except RAY_FAILURES as exc:
            raise _unavailable(exc) from None
        self._served(result, model_id)
        return WorkerReply(ReplyKind.GENERATE, result["output"])

    def _served(self, head: dict[str, Any], model_id: str) -> None:
        """Count the serving replica, name it for the response header; raise its refusal."""
        if "replica" in head:
            self.routed[(head["replica"], model_id)] += 1
            holder = SERVED_BY.get()
            if holder is not None:
                holder.append(head["replica"])
        if "error" in head:
            raise decode_error(head["error"])

    async def _stream(
        self, handle: Any, message: GenerateRequest, refs: list[AdapterRef], model_id: str
    ) -> WorkerReply:
        chunks = handle.generate_stream.remote(message, refs)
        try:
            head = await chunks.__anext__()
        except asyncio.CancelledError:
            chunks.cancel()
            raise
        except StopAsyncIteration:
            raise ServiceUnavailableError("the engine replica ended the stream before it began") from None
        self._served(head, model_id)  # refused before any token: the typed error
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.ensure_future(self._pump(chunks, queue))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

        def cancel() -> None:  # the response ended (client gone, or done): stop the Ray call
            pump.cancel()
            chunks.cancel()

        return WorkerReply(ReplyKind.GENERATE, None, queue, cancel)

    @staticmethod
    async def _pump(chunks: Any, queue: asyncio.Queue) -> None:
        """Replica ``TokenOutput``s → the queue loraserve's response code drains (None ends
        it; a refusal or failure mid-stream ends it with the error)."""
        try:
            async for item in chunks:
                if isinstance(item, dict):  # the replica's stream failed: {"error": ...}
                    queue.put_nowait(decode_error(item["error"]))
                    return
                queue.put_nowait(item)
            queue.put_nowait(None)
        except asyncio.CancelledError:
            queue.put_nowait(None)  # nobody reads on; the metrics forwarder still needs its end
            raise
        except Exception as exc:  # the replica died mid-stream: end the stream with the error
            queue.put_nowait(ServiceUnavailableError(f"the engine replica failed: {type(exc).__name__}"))

    async def check_adapter(self, path: str) -> None:
        """Validate an adapter on one replica; its refusal becomes the typed error."""
        try:
            problem = await self.handle.check_adapter.remote(path)
        except RAY_FAILURES as exc:
            raise ServiceUnavailableError(f"no engine replica could check the adapter: {exc}") from None
        if problem:
            raise decode_error(problem)

    async def preload(self, ref: AdapterRef) -> None:
        """Best effort: the registration stands either way, and traffic loads it on demand."""
        try:
            await self.handle.options(multiplexed_model_id=routing_id([ref])).load_adapter.remote(ref)
        except RAY_FAILURES as exc:
            log.warning("adapter %s registered, but no replica could preload it: %s", ref.name, exc)

    async def broadcast(self, method: str) -> list[Any]:
        """``method`` on every live replica; a replica that fails or times out is left out."""
        try:
            results = await self.handle.broadcast(method).results_async(
                timeout_s=self.timeout, return_exceptions=True
            )
        except (*RAY_FAILURES, TimeoutError):
            return []
        return [r for r in results if not isinstance(r, BaseException)]
