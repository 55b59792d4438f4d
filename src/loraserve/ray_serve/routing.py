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
from typing import Any

from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from loraserve.errors import LoraserveError, ServiceUnavailableError
from loraserve.ray_serve.adapter_store import AdapterRef
from loraserve.serving.worker_process import WorkerReply

log = logging.getLogger("loraserve.ray.routing")
REPLICA_HEADER = "x-loraserve-replica"
RAY_FAILURES = (RayError, RayServeException)  # replica died, back-pressure, no replica yet


def routing_id(refs: list[AdapterRef]) -> str:
    """The multiplexed model id: the first adapter not held everywhere, else none ("")."""
    return next((ref.name for ref in refs if not ref.pin), "")


class ReplicaCaller:
    def __init__(self, handle: Any, broadcast_timeout_s: float = 30.0) -> None:
        self.handle = handle
        self.timeout = broadcast_timeout_s
        self.routed: Counter[tuple[str, str]] = Counter()  # (replica, routing id) → requests
        self._pumps: set[asyncio.Task] = set()

    async def generate(self, wire: dict[str, Any], refs: list[AdapterRef], stream: bool) -> WorkerReply:
        model_id = routing_id(refs)
        handle = self.handle.options(multiplexed_model_id=model_id)
        try:
            if stream:
                return await self._stream(handle.options(stream=True), wire, refs, model_id)
            result = await handle.generate.remote(wire, refs)
        except RAY_FAILURES as exc:
            raise ServiceUnavailableError(f"the engine replica failed: {type(exc).__name__}; "
                                          "retry the request") from None
        return WorkerReply(self._tagged(result, model_id), None)

    def _tagged(self, result: dict[str, Any], model_id: str) -> dict[str, Any]:
        """The wire Output with the serving replica named in a header (and counted)."""
        output = result["output"]
        if "replica" in result:
            self.routed[(result["replica"], model_id)] += 1
            output["properties"][REPLICA_HEADER] = result["replica"]
        return output

    async def _stream(self, handle: Any, wire: dict[str, Any], refs: list[AdapterRef],
                      model_id: str) -> WorkerReply:
        chunks = handle.generate_stream.remote(wire, refs)
        first = await chunks.__anext__()
        output = self._tagged(first, model_id)
        if not output.get("streaming"):  # refused before any token: an ordinary (error) reply
            return WorkerReply(output, None)
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.ensure_future(self._pump(chunks, queue))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        return WorkerReply(output, queue)

    @staticmethod
    async def _pump(chunks: Any, queue: asyncio.Queue) -> None:
        """Replica chunks → the queue loraserve's response code drains (None ends it)."""
        try:
            async for chunk in chunks:
                queue.put_nowait(chunk)
            queue.put_nowait(None)
        except Exception as exc:  # the replica died mid-stream: end the stream with the error
            queue.put_nowait(ServiceUnavailableError(f"the engine replica failed: {type(exc).__name__}"))

    async def check_adapter(self, path: str) -> None:
        """Validate an adapter on one replica; its refusal becomes the typed error."""
        try:
            problem = await self.handle.check_adapter.remote(path)
        except RAY_FAILURES as exc:
            raise ServiceUnavailableError(f"no engine replica could check the adapter: {exc}") from None
        if problem:
            error = LoraserveError(problem["message"], problem["status"])
            error.error_type = problem["type"]
            raise error

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
                timeout_s=self.timeout, return_exceptions=True)
        except (*RAY_FAILURES, TimeoutError):
            return []
        return [r for r in results if not isinstance(r, BaseException)]
