"""One worker process seen from the front end: start it, call it, cancel calls, notice when
it dies. A reply reader that fails for any reason means a dead worker: it is killed, its
in-flight calls fail with 503 and the group starts another (a reader that died quietly used to
leave a live-looking worker whose every later request hung)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraserve.errors import LoraserveError, WorkerDiedError
from loraserve.wire.errors import decode_error
from loraserve.wire.frames import HEADER, ReplyKind, decode_payload, encode_frame

log = logging.getLogger("loraserve.worker")
_ids = itertools.count(1)


class WorkerLoadError(LoraserveError):
    status_code = 503
    error_type = "ModelLoadException"


@dataclass(slots=True)
class WorkerReply:
    """A handler's answer, tagged by ``kind`` (``wire.frames.ReplyKind``): a DJL Output in wire
    form, a ``GenerateResult``, a control reply, or nothing; and, when streaming, the chunks.

    ``stream`` yields chunks (``bytes`` for DJL, ``TokenOutput`` for GENERATE) and finally
    ``None`` (done) or an Exception. ``cancel`` stops the call on the worker (a client that
    left in the middle of a stream).
    """

    kind: ReplyKind
    output: Any
    stream: asyncio.Queue | None = None
    cancel: Callable[[], None] | None = None


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future
    stream: asyncio.Queue | None = None


class WorkerProcess:
    """A ``loraserve.handlers.worker_main`` child process and its in-flight calls."""

    def __init__(
        self, model_name: str, model_dir: Path, env: dict[str, str], on_exit: Callable[[WorkerProcess], None]
    ) -> None:
        self.worker_id = next(_ids)
        self.model_name = model_name
        self.model_dir = model_dir
        self.env = env
        self.on_exit = on_exit
        self.process: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.hooks: list[str] = []
        self.concurrent = False
        self.alive = False
        self.stopping = False
        self.start_time = time.time()
        self._pending: dict[int, _Pending] = {}
        self._reader: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def start(self, timeout_s: float) -> None:
        """Spawn the worker and wait for its ``ready`` (or ``load_failed``) message."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loraserve.handlers.worker_main",
            str(self.model_dir),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env},
            limit=2**26,
        )
        self.pid = self.process.pid
        try:
            first = await asyncio.wait_for(self._read_message(), timeout_s)
        except asyncio.TimeoutError:
            await self.kill()
            raise WorkerLoadError(f"model {self.model_name} did not load in {timeout_s:.0f}s") from None
        if first is None or first.get("op") != "ready":
            error = "worker exited while loading" if first is None else first.get("error")
            await self.kill()
            raise WorkerLoadError(f"model {self.model_name} failed to load: {error}")
        self.hooks = first["hooks"]
        self.concurrent = first["concurrent"]
        self.alive = True
        self._reader = asyncio.create_task(self._read_loop())

    async def _read_message(self) -> dict[str, Any] | None:
        assert self.process and self.process.stdout
        try:
            header = await self.process.stdout.readexactly(HEADER.size)
            payload = await self.process.stdout.readexactly(HEADER.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return decode_payload(payload)

    async def call(self, fn: str, payload: Any) -> WorkerReply:
        """Run handler function ``fn`` on the worker with its typed message (``TYPED_FUNCTIONS``)
        or a DJL Input in wire form; raises what the worker
        raised (``wire.errors``), or WorkerDiedError if it dies. Cancelling the caller cancels
        the call on the worker too."""
        if not self.alive:
            raise WorkerDiedError(f"worker {self.worker_id} of model {self.model_name} is not running")
        call_id = next(_ids)
        pending = _Pending(asyncio.get_running_loop().create_future())
        self._pending[call_id] = pending
        try:
            await self._write({"op": "call", "id": call_id, "fn": fn, "payload": payload})
        except (ConnectionError, RuntimeError):
            self._pending.pop(call_id, None)
            raise WorkerDiedError(f"worker {self.worker_id} of model {self.model_name} died") from None
        except asyncio.CancelledError:
            self.cancel(call_id)
            raise
        try:
            return await pending.future
        except asyncio.CancelledError:
            self.cancel(call_id)  # a timed-out scrape or a client that left: the worker stops too
            raise

    def cancel(self, call_id: int) -> None:
        """Forget the call and tell the worker to stop it; a late reply to it is ignored."""
        pending = self._pending.pop(call_id, None)
        if pending is None or not self.alive:
            return
        if pending.stream is not None:
            pending.stream.put_nowait(None)
        task = asyncio.ensure_future(self._send_cancel(call_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_cancel(self, call_id: int) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._write({"op": "cancel", "id": call_id})

    async def _write(self, message: dict[str, Any]) -> None:
        assert self.process and self.process.stdin
        async with self._write_lock:
            self.process.stdin.write(encode_frame(message))
            await self.process.stdin.drain()

    async def _read_loop(self) -> None:
        try:
            while (message := await self._read_message()) is not None:
                self._dispatch(message)
        except Exception:
            log.exception(
                "worker %s (pid %s) of model %s: reply reader failed; killing the worker",
                self.worker_id,
                self.pid,
                self.model_name,
            )
            if self.process and self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()  # not kill(): the group must restart this worker
        await self._on_eof()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op, call_id = message.get("op"), message.get("id", -1)
        pending = self._pending.get(call_id)
        if pending is None:
            return  # a late reply to a cancelled call
        if op == "result":
            streaming = bool(message.get("streaming"))
            if streaming:
                pending.stream = asyncio.Queue()
            else:
                self._pending.pop(call_id)
            if not pending.future.done():
                cancel = (lambda: self.cancel(call_id)) if streaming else None
                reply = WorkerReply(ReplyKind(message["kind"]), message["output"], pending.stream, cancel)
                pending.future.set_result(reply)
        elif op == "error":
            self._pending.pop(call_id)
            if not pending.future.done():
                pending.future.set_exception(decode_error(message))
        elif op == "chunk" and pending.stream is not None:
            pending.stream.put_nowait(message["data"])
        elif op == "end" and pending.stream is not None:
            self._pending.pop(call_id)
            error = message.get("error")
            pending.stream.put_nowait(decode_error(error) if error else None)

    async def _on_eof(self) -> None:
        self.alive = False
        code = await self.process.wait() if self.process else None
        if not self.stopping:
            log.error(
                "worker %s (pid %s) of model %s exited with code %s; %d request(s) failed",
                self.worker_id,
                self.pid,
                self.model_name,
                code,
                len(self._pending),
            )
        died = WorkerDiedError(
            f"the worker of model {self.model_name} exited (code {code}) while handling this "
            "request; it is being restarted, retry the request"
        )
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(died)
            elif pending.stream is not None:
                pending.stream.put_nowait(died)
        self._pending.clear()
        self.on_exit(self)

    async def kill(self) -> None:
        """Stop the process now; in-flight calls fail."""
        self.stopping = True
        if self.process and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        if self._reader:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.worker_id,
            "pid": self.pid,
            "startTime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.start_time)),
            "status": "READY" if self.alive else "STOPPED",
            "inFlight": self.in_flight,
        }
