"""The front's side of the worker protocol against a real worker process: a call that timed
out (a /metrics scrape while the worker was busy) must not wedge the worker when its late reply
comes; a cancel reaches the worker; a failing reply reader means a dead, restarted worker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from loraserve.errors import WorkerDiedError
from loraserve.serving.worker_process import WorkerProcess

MODEL = """
import asyncio, gc, os, time
from djl_python import Output

def _wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)

def handle(inputs):
    if inputs.is_empty():
        return None
    data = inputs.get_as_string()
    if data == "frozen":
        return Output().add(str(gc.get_freeze_count()))
    if data.startswith("block:"):
        _wait_for(data[6:])  # the worker is busy until the test releases it
    return Output().add(data)

async def wait_forever(inputs):
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        open(inputs.get_as_string(), "w").close()  # proof that the cancel reached the worker
        raise
"""


def wire(text: str) -> dict:
    return {"properties": {}, "content": [("data", text.encode())]}


async def _start(tmp_path: Path, exits: list) -> WorkerProcess:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "model.py").write_text(MODEL)
    worker = WorkerProcess("blocky", model, {}, exits.append)
    await worker.start(60)
    return worker


async def _poll(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


def text_of(reply) -> str:
    return reply.output["content"][0][1].decode()


def test_late_reply_to_a_timed_out_call_does_not_wedge_the_worker(tmp_path):
    async def scenario() -> None:
        exits: list = []
        worker = await _start(tmp_path, exits)
        release = tmp_path / "release"
        try:
            with pytest.raises(asyncio.TimeoutError):  # like a 5 s scrape timeout on a busy worker
                await asyncio.wait_for(worker.call("handle", wire(f"block:{release}")), 0.2)
            release.touch()  # the blocked call now finishes and its (late) reply comes back
            reply = await asyncio.wait_for(worker.call("handle", wire("ping")), 20)
            assert text_of(reply) == "ping" and worker.alive and not exits
        finally:
            await worker.kill()

    asyncio.run(scenario())


def test_the_worker_freezes_its_loaded_heap_before_serving(tmp_path):
    """Full collections would walk every object the model loaded, with the GIL held (heap.py)."""

    async def scenario() -> None:
        worker = await _start(tmp_path, [])
        try:
            reply = await asyncio.wait_for(worker.call("handle", wire("frozen")), 20)
            assert int(text_of(reply)) > 1000  # the interpreter, the handler and its imports
        finally:
            await worker.kill()

    asyncio.run(scenario())


def test_a_cancelled_call_is_cancelled_on_the_worker(tmp_path):
    async def scenario() -> None:
        worker = await _start(tmp_path, [])
        proof = tmp_path / "cancelled"
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(worker.call("wait_forever", wire(str(proof))), 0.2)
            assert await _poll(proof.exists)
            assert worker.in_flight == 0
        finally:
            await worker.kill()

    asyncio.run(scenario())


def test_a_failing_reply_reader_kills_the_worker_and_fails_its_calls(tmp_path):
    async def scenario() -> None:
        exits: list = []
        worker = await _start(tmp_path, exits)
        release = tmp_path / "release"

        def broken(message: dict) -> None:
            raise RuntimeError("reader bug")

        worker._dispatch = broken  # type: ignore[method-assign]
        blocked = asyncio.ensure_future(worker.call("handle", wire(f"block:{release}")))
        release.touch()
        with pytest.raises(WorkerDiedError) as caught:
            await asyncio.wait_for(blocked, 20)
        assert caught.value.status_code == 503
        assert await _poll(lambda: bool(exits))
        assert exits == [worker] and not worker.alive and not worker.stopping  # the group restarts it
        assert worker.process is not None and worker.process.returncode is not None
        with pytest.raises(WorkerDiedError):
            await worker.call("handle", wire("ping"))

    asyncio.run(scenario())
