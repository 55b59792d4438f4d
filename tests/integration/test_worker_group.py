"""The worker group with fake in-process workers: every job taken is answered (batches being
collected when their worker dies, is scaled away or the model is unregistered), restarts that
fail or happen during shutdown, and the hard cap on workers."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from loraserve.config import ModelConfig
from loraserve.errors import BadRequestError, ServiceUnavailableError, WorkerDiedError
from loraserve.serving import worker_group
from loraserve.serving.worker_group import WorkerGroup
from loraserve.serving.worker_process import WorkerLoadError, WorkerReply
from loraserve.wire.frames import ReplyKind

_ids = itertools.count(1)


class FakeWorker:
    """Answers ``handle`` with its own id after ``hold`` is set; ``die()`` acts like SIGKILL."""

    def __init__(self, model_name: str, model_dir: Path, env: dict[str, str], on_exit) -> None:
        self.worker_id = next(_ids)
        self.on_exit = on_exit
        self.alive = self.stopping = self.concurrent = False
        self.hooks: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self._pending: list[asyncio.Future] = []

    @property
    def in_flight(self) -> int:
        return len([f for f in self._pending if not f.done()])

    async def start(self, timeout_s: float) -> None:
        self.alive = True

    async def call(self, fn: str, wire_input: dict[str, Any]) -> WorkerReply:
        if not self.alive:
            raise WorkerDiedError("not running")
        self.calls.append(wire_input)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        size = int(wire_input["properties"].get("batch_size", 1))
        content = [(None, str(self.worker_id).encode())] * size
        output = {"code": 200, "worker": self.worker_id, "content": content}
        future.set_result(WorkerReply(ReplyKind.DJL, output))
        return await future

    def die(self) -> None:
        self.alive = False
        self.on_exit(self)

    async def kill(self) -> None:
        self.stopping, self.alive = True, False


class Harness:
    def __init__(
        self,
        batch_size: int = 4,
        delay_ms: int = 60_000,
        workers: int = 1,
        stopping: bool = False,
        fail_starts: int = 0,
    ) -> None:
        config = ModelConfig(batch_size=batch_size, max_batch_delay_ms=delay_ms, min_workers=workers)
        self.spawned: list[FakeWorker] = []
        self.fail_starts = fail_starts
        self.stopping = stopping
        self.group = WorkerGroup(
            "m",
            Path("."),
            config,
            {},
            self._replay,
            5.0,
            server_stopping=lambda: self.stopping,
            factory=self._factory,
        )

    def _factory(self, *args: Any) -> FakeWorker:
        worker = FakeWorker(*args)
        self.spawned.append(worker)
        return worker

    async def _replay(self, worker: FakeWorker) -> None:
        if self.fail_starts:
            self.fail_starts -= 1
            raise WorkerLoadError("cannot load")

    async def submit(self, count: int) -> list[asyncio.Task]:
        """``count`` requests, returned once a dispatcher has taken them all (collecting)."""
        entered: list[int] = []

        async def one() -> WorkerReply:
            entered.append(1)  # submit() queues the job before its first await
            return await self.group.submit({"properties": {}, "content": []})

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await until(lambda: len(entered) == count and self.group.queue_length == 0)
        assert not any(task.done() for task in tasks)
        return tasks


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def outcomes(tasks: list[asyncio.Task]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(worker_group, "RESTART_BACKOFF_S", (0.01,) * 3)


def test_batch_collecting_when_its_worker_dies_is_served_by_the_restarted_worker():
    async def scenario():
        h = Harness()
        await h.group.start()
        tasks = await h.submit(2)
        h.group.config.max_batch_delay_ms = 0  # the next batch goes without waiting
        h.spawned[0].die()
        replies = await outcomes(tasks)
        assert [r.output["worker"] for r in replies] == [h.spawned[1].worker_id] * 2
        await h.group.stop()

    asyncio.run(scenario())


def test_batch_collecting_when_the_model_is_unregistered_fails_with_503():
    async def scenario():
        h = Harness()
        await h.group.start()
        tasks = await h.submit(3)
        await h.group.stop()
        results = await outcomes(tasks)
        assert all(isinstance(r, ServiceUnavailableError) for r in results)

    asyncio.run(scenario())


def test_batch_collecting_on_a_worker_scaled_away_is_served_by_another():
    async def scenario():
        h = Harness()
        await h.group.start()
        tasks = await h.submit(2)  # collected by the first worker's dispatcher
        h.group.config.max_batch_delay_ms = 0
        await h.group.scale(2, 2)
        await h.group.scale(1, 1)  # removes the first worker (fewest in flight, first listed)
        assert h.group.workers == [h.spawned[1]]
        replies = await outcomes(tasks)
        assert [r.output["worker"] for r in replies] == [h.spawned[1].worker_id] * 2
        await h.group.stop()

    asyncio.run(scenario())


def test_failing_restart_fails_queued_jobs_and_new_requests_fast():
    async def scenario():
        h = Harness(batch_size=1)
        await h.group.start()
        h.fail_starts = 99
        h.spawned[0].die()
        await until(lambda: h.group.failure is not None)
        assert not h.group.serving and not h.group.recovering
        with pytest.raises(ServiceUnavailableError, match="restarting its worker failed"):
            await asyncio.wait_for(h.group.submit({"properties": {}, "content": []}), 1)
        h.fail_starts = 0  # the next attempt succeeds: the model serves again
        await until(lambda: h.group.serving)
        reply = await asyncio.wait_for(h.group.submit({"properties": {}, "content": []}), 1)
        assert reply.output["code"] == 200 and h.group.failure is None
        await h.group.stop()

    asyncio.run(scenario())


def test_jobs_queued_during_a_restart_wait_for_it():
    async def scenario():
        h = Harness(batch_size=1)
        await h.group.start()
        h.spawned[0].die()
        assert h.group.recovering
        reply = await asyncio.wait_for(h.group.submit({"properties": {}, "content": []}), 5)
        assert reply.output["worker"] == h.spawned[1].worker_id
        await h.group.stop()

    asyncio.run(scenario())


def test_workers_that_die_during_shutdown_are_not_restarted():
    async def scenario():
        h = Harness()
        await h.group.start()
        tasks = await h.submit(2)
        h.stopping = True
        h.spawned[0].die()
        results = await outcomes(tasks)
        assert all(isinstance(r, ServiceUnavailableError) for r in results)
        await asyncio.sleep(0.05)  # give a (wrong) restart every chance to happen
        assert len(h.spawned) == 1 and not h.group.workers
        await h.group.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("low,high", [(100_000, 100_000), (1, 100_000)])
def test_scale_has_a_hard_cap(low, high):
    async def scenario():
        h = Harness()
        await h.group.start()
        with pytest.raises(BadRequestError, match="at most"):
            await h.group.scale(low, high)
        assert len(h.spawned) == 1 and h.group.target == 1
        await h.group.stop()

    asyncio.run(scenario())
