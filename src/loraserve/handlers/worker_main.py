"""The worker process: imports a model's handler and serves calls from the front end.

Protocol frames go over a private copy of stdout; fd 1 is pointed at stderr so that a
handler's ``print`` cannot corrupt them. Sync handler functions run one at a time, in call
order (as DJL's Python workers do); async ones run concurrently, which is what lets the
built-in engine batch many requests continuously. Each call is a task; a ``cancel`` from the
front (its client went away) cancels it, and the built-in engine aborts its sequences.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loraserve.config import ModelConfig
from loraserve.errors import LoraserveError
from loraserve.handler_kind import resolve_handler
from loraserve.handlers.djl_wire import HANDLER_FUNCTIONS, input_from_wire, output_to_wire
from loraserve.handlers.heap import freeze_loaded_heap
from loraserve.handlers.io import Input, Output
from loraserve.handlers.loader import import_handler
from loraserve.wire.control import ControlDone, EngineStats, Formatted
from loraserve.wire.errors import encode_error, failure_status
from loraserve.wire.frames import HEADER, TYPED_FUNCTIONS, ReplyKind, decode_payload, encode_frame
from loraserve.wire.messages import GenerateResult, TokenStream

log = logging.getLogger("loraserve.worker")
_END = object()


class WorkerRuntime:
    """Runs handler calls and writes their results back to the front end."""

    def __init__(
        self, module: Any, out_fd: int, loop: asyncio.AbstractEventLoop, model_dir: str = ""
    ) -> None:
        self.module = module
        self.model_dir = model_dir
        self.out_fd = out_fd
        self.loop = loop
        self.serial = ThreadPoolExecutor(1, thread_name_prefix="handler")
        self.streams = ThreadPoolExecutor(4, thread_name_prefix="stream")
        self.tasks: dict[int, asyncio.Task] = {}

    def send(self, message: dict[str, Any]) -> None:
        frame = encode_frame(message)
        view = memoryview(frame)
        while view:
            written = os.write(self.out_fd, view)
            view = view[written:]

    def start(self, message: dict[str, Any]) -> None:
        """Run one call as a task of its own, so that a ``cancel`` for its id can stop it."""
        call_id = message["id"]
        task = asyncio.create_task(self.call(message))
        self.tasks[call_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(call_id, None))

    def cancel(self, call_id: int) -> None:
        """The front gave up on this call (its client left): stop it; nothing is sent back."""
        task = self.tasks.get(call_id)
        if task is not None:
            task.cancel()

    async def call(self, message: dict[str, Any]) -> None:
        call_id, typed = message["id"], message["fn"] in TYPED_FUNCTIONS
        fn = getattr(self.module, message["fn"], None)
        try:
            # a typed message (the built-in engine's protocol) or a DJL Input in wire form
            arg = message["payload"] if typed else self._input(message)
            if fn is None:
                result = None
            elif inspect.iscoroutinefunction(fn):
                result = await fn(arg)
            else:
                result = await self.loop.run_in_executor(self.serial, fn, arg)
            await self._send_result(call_id, result)
        except Exception as exc:  # the handler's failure is this request's error, nothing more
            if not isinstance(exc, LoraserveError):  # a typed refusal (400, 404, ...) is no failure
                log.error("handler %s failed:\n%s", message["fn"], traceback.format_exc())
            if typed or isinstance(exc, LoraserveError):
                self.send({"op": "error", "id": call_id, **encode_error(exc)})
                return
            error = Output().error(str(exc), code=failure_status(exc))  # DJL's error answer
            self._send_djl(call_id, error)

    def _input(self, message: dict[str, Any]) -> Input:
        inputs = input_from_wire(message["payload"])
        inputs.properties["model_dir"] = self.model_dir  # on every call, as DJL does
        inputs.function_name = message["fn"]
        return inputs

    def _send_reply(self, call_id: int, kind: ReplyKind, output: Any, streaming: bool = False) -> None:
        self.send({"op": "result", "id": call_id, "kind": kind, "output": output, "streaming": streaming})

    async def _send_result(self, call_id: int, result: Any) -> None:
        """Say what the handler returned (the reply's kind), once, here: no reader guesses."""
        if result is None:
            self._send_reply(call_id, ReplyKind.NONE, None)
        elif isinstance(result, GenerateResult):
            self._send_reply(call_id, ReplyKind.GENERATE, result)
        elif isinstance(result, (ControlDone, EngineStats, Formatted)):
            self._send_reply(call_id, ReplyKind.CONTROL, result)
        elif isinstance(result, TokenStream):
            self._send_reply(call_id, ReplyKind.GENERATE, None, streaming=True)
            await self._stream(call_id, result.events, None, typed=True)
        else:
            if not hasattr(result, "code"):  # DJL: a handler must return an Output (or None)
                result = Output().error(f"Invalid output type: {type(result)}")
            if self._send_djl(call_id, result):
                await self._stream(call_id, result.stream_content, _formatter(result))
            _finalize(result)

    def _send_djl(self, call_id: int, output: Any) -> bool:
        """Send a DJL Output; True when its stream is to follow."""
        wire = output_to_wire(output)
        self._send_reply(call_id, ReplyKind.DJL, wire, streaming=wire["streaming"])
        return bool(wire["streaming"])

    async def _stream(self, call_id: int, stream: Any, formatter: Any, typed: bool = False) -> None:
        error: dict[str, Any] = {}
        try:
            async for chunk in _iterate(stream, self.loop, self.streams):
                data = chunk if typed else _chunk_bytes(chunk, formatter)
                self.send({"op": "chunk", "id": call_id, "data": data})
        except Exception as exc:
            if not isinstance(exc, LoraserveError):
                log.error("stream failed:\n%s", traceback.format_exc())
            error = encode_error(exc)
        finally:
            if inspect.isasyncgen(stream):  # a cancelled call closes its generator now, not at GC
                await stream.aclose()
        self.send({"op": "end", "id": call_id, "error": error or None})


def _chunk_bytes(chunk: Any, formatter: Any) -> bytes:
    if formatter is not None:
        chunk = formatter(chunk)
    if not isinstance(chunk, (bytes, bytearray, str)):
        chunk = json.dumps(chunk, ensure_ascii=False)
    return chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


def _formatter(output: Any) -> Any:
    return getattr(output, "stream_output_formatter", getattr(output, "stream_formatter", None))


def _finalize(result: Any) -> None:
    """``Output.finalize(fn, *args)``: run once the answer has been sent (DJL's hook)."""
    run = getattr(result, "execute_finalize", None)
    if callable(run):
        try:
            run()
        except Exception:
            log.error("finalize function failed:\n%s", traceback.format_exc())


async def _iterate(stream: Any, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor):
    """Iterate a sync or async iterator without blocking the event loop."""
    if hasattr(stream, "__aiter__"):
        async for item in stream:
            yield item
        return
    iterator = iter(stream)
    while True:
        item = await loop.run_in_executor(pool, next, iterator, _END)
        if item is _END:
            return
        yield item


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        piece = os.read(fd, size - len(chunks))
        if not piece:
            return None
        chunks += piece
    return bytes(chunks)


def _reader_thread(fd: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    """Blocking reads of stdin frames, handed to the event loop; EOF means the server left."""
    while True:
        header = _read_exact(fd, HEADER.size)
        payload = None if header is None else _read_exact(fd, HEADER.unpack(header)[0])
        try:
            message = None if payload is None else decode_payload(payload)
        except Exception:  # a corrupt frame: stop, the front sees us exit and starts another
            log.exception("unreadable frame from the server")
            message = None
        loop.call_soon_threadsafe(queue.put_nowait, message)
        if message is None:
            return


async def _initialise(module: Any, properties: dict[str, str]) -> None:
    """DJL's warm-up call: ``handle`` gets an empty Input carrying the model's properties."""
    inputs = Input()
    inputs.properties.update(properties)
    result = module.handle(inputs)
    if inspect.isawaitable(result):
        await result


async def serve(model_dir: Path, out_fd: int) -> int:
    loop = asyncio.get_running_loop()
    config = ModelConfig.from_directory(model_dir)
    extra_options = json.loads(os.environ.get("LORASERVE_MODEL_OPTIONS", "{}"))
    config.options.update(extra_options)
    try:
        # the front decided which handler this is (handler_kind); run directly, decide here
        entry = os.environ.get("LORASERVE_HANDLER") or resolve_handler(model_dir, config).entry
        module = import_handler(model_dir, entry)
        await _initialise(module, config.handler_properties(model_dir))
    except BaseException as exc:
        log.error("model failed to load:\n%s", traceback.format_exc())
        os.write(out_fd, encode_frame({"op": "load_failed", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    freeze_loaded_heap()  # before the first request: full collections never walk the model's heap
    runtime = WorkerRuntime(module, out_fd, loop, str(model_dir))
    hooks = [name for name in HANDLER_FUNCTIONS if callable(getattr(module, name, None))]
    concurrent = inspect.iscoroutinefunction(module.handle)
    runtime.send({"op": "ready", "pid": os.getpid(), "hooks": hooks, "concurrent": concurrent})
    queue: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=_reader_thread, args=(0, loop, queue), daemon=True).start()
    while (message := await queue.get()) is not None:
        if message.get("op") == "cancel":
            runtime.cancel(message["id"])
        else:
            runtime.start(message)
    return 0


def main() -> None:
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a handler's print() goes to the log, never into the protocol stream
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    model_dir = Path(sys.argv[1]).resolve()
    sys.exit(asyncio.run(serve(model_dir, out_fd)))


if __name__ == "__main__":
    main()
