"""The workers of one model: a bounded job queue, dynamic batching, scaling and restarts.

A worker that dies is replaced; before the new one takes requests, ``replay`` re-registers
every adapter on it, so nothing registered is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraserve.config import ModelConfig
from loraserve.errors import ServiceUnavailableError, WorkerDiedError
from loraserve.serving.batching import batch_wire_inputs, split_batch_output
from loraserve.serving.worker_process import WorkerProcess, WorkerReply

log = logging.getLogger("loraserve.workers")
MAX_CONCURRENT_CALLS = 1024  # per worker, for handlers whose handle() is async
RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10, 30)

Replay = Callable[[WorkerProcess], Awaitable[None]]


@dataclass(slots=True)
class _Job:
    wire_input: Any  # a DJL Input in wire form, or a typed message for ``fn``
    future: asyncio.Future
    fn: str = "handle"


class WorkerGroup:
    def __init__(self, model_name: str, model_dir: Path, config: ModelConfig,
                 env: dict[str, str], replay: Replay, start_timeout_s: float) -> None:
        self.model_name = model_name
        self.model_dir = model_dir
        self.config = config
        self.env = env
        self.replay = replay
        self.start_timeout_s = start_timeout_s
        self.workers: list[WorkerProcess] = []
        self.target = config.min_workers
        self.restarts = 0
        self._jobs: collections.deque[_Job] = collections.deque()
        self._job_added = asyncio.Event()
        self._dispatchers: dict[int, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self._closed = False

    @property
    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    @property
    def queue_length(self) -> int:
        return len(self._jobs)

    async def start(self) -> None:
        """Start ``min_workers`` workers; raises if the model cannot load at all."""
        await asyncio.gather(*(self._add_worker() for _ in range(self.target)))

    async def _add_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.model_name, self.model_dir, self.env, self._worker_exited)
        await worker.start(self.start_timeout_s)
        try:
            await self.replay(worker)
        except BaseException:
            await worker.kill()
            raise
        if self._closed:
            await worker.kill()
            raise ServiceUnavailableError(f"model {self.model_name} is being unregistered")
        self.workers.append(worker)
        self._dispatchers[worker.worker_id] = asyncio.create_task(self._dispatch(worker))
        return worker

    def _worker_exited(self, worker: WorkerProcess) -> None:
        task = self._dispatchers.pop(worker.worker_id, None)
        if task:
            task.cancel()
        if worker in self.workers:
            self.workers.remove(worker)
        if not self._closed and not worker.stopping and len(self.workers) < self.target:
            self._spawn(self._restart())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self) -> None:
        for attempt, delay in enumerate((0.0, *RESTART_BACKOFF_S)):
            if self._closed or len(self.workers) >= self.target:
                return
            await asyncio.sleep(delay)
            try:
                await self._add_worker()
                self.restarts += 1
                log.info("model %s: worker restarted (attempt %d)", self.model_name, attempt + 1)
                return
            except Exception as exc:
                log.error("model %s: worker restart failed: %s", self.model_name, exc)
        log.error("model %s: giving up restarting a worker", self.model_name)

    async def scale(self, min_workers: int, max_workers: int) -> None:
        self.config.min_workers, self.config.max_workers = min_workers, max(max_workers, min_workers)
        self.target = min_workers
        while len(self.workers) < self.target:
            await self._add_worker()
        while len(self.workers) > self.target:
            worker = min(self.workers, key=lambda w: w.in_flight)
            self.workers.remove(worker)
            self._dispatchers.pop(worker.worker_id).cancel()
            self._spawn(self._drain_and_stop(worker))

    async def _drain_and_stop(self, worker: WorkerProcess) -> None:
        """Let a removed worker finish what it is doing, then stop it."""
        while worker.alive and worker.in_flight:
            await asyncio.sleep(0.05)
        await worker.kill()

    async def submit(self, wire_input: Any, fn: str = "handle") -> WorkerReply:
        """Queue one request; its reply comes from whichever worker batch takes it. Cancelling
        the caller (a client that left) drops the job, or cancels it on its worker."""
        if self._closed:
            raise ServiceUnavailableError(f"model {self.model_name} is being unregistered")
        if len(self._jobs) >= self.config.job_queue_size:
            raise ServiceUnavailableError(
                f"model {self.model_name}: job queue is full ({self.config.job_queue_size}); "
                "retry later or raise job_queue_size"
            )
        job = _Job(wire_input, asyncio.get_running_loop().create_future(), fn)
        self._jobs.append(job)
        self._job_added.set()
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        while not self._jobs:
            self._job_added.clear()
            await self._job_added.wait()
        jobs = [self._jobs.popleft()]
        if self.config.batch_size > 1:
            deadline = asyncio.get_running_loop().time() + self.config.max_batch_delay_ms / 1000
            while len(jobs) < self.config.batch_size:
                if self._jobs:
                    jobs.append(self._jobs.popleft())
                    continue
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                self._job_added.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._job_added.wait(), remaining)
        return [job for job in jobs if not job.future.done()]

    async def _dispatch(self, worker: WorkerProcess) -> None:
        slots = asyncio.Semaphore(MAX_CONCURRENT_CALLS if worker.concurrent else 1)
        while worker.alive:
            await slots.acquire()
            try:
                jobs = await self._next_batch()
            except asyncio.CancelledError:
                slots.release()
                raise
            if not worker.alive:  # died while we waited: give the jobs back, in order
                self._jobs.extendleft(reversed(jobs))
                self._job_added.set()
                slots.release()
                return
            task = asyncio.create_task(self._run(worker, jobs))
            task.add_done_callback(lambda _t: slots.release())

    async def _run(self, worker: WorkerProcess, jobs: list[_Job]) -> None:
        if not jobs:
            return
        if self.config.batch_size == 1 or any(job.fn != "handle" for job in jobs):
            await asyncio.gather(*(self._run_one(worker, job) for job in jobs))
            return
        wire = batch_wire_inputs([j.wire_input for j in jobs])
        try:
            reply = await worker.call("handle", wire)
            outputs = split_batch_output(reply.output, len(jobs))
        except Exception as exc:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, output in zip(jobs, outputs):
            if not job.future.done():
                job.future.set_result(WorkerReply(output, reply.stream, reply.cancel))

    @staticmethod
    async def _run_one(worker: WorkerProcess, job: _Job) -> None:
        """One call; the job's caller giving up cancels the call on the worker."""
        call = asyncio.ensure_future(worker.call(job.fn, job.wire_input))
        job.future.add_done_callback(lambda future: call.cancel() if future.cancelled() else None)
        try:
            reply = await call
        except asyncio.CancelledError:
            if job.future.cancelled():
                return
            raise
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(reply)
        elif reply.cancel is not None:
            reply.cancel()  # a stream nobody is waiting for any more

    async def broadcast(self, fn: str, wire_input: dict[str, Any]) -> list[WorkerReply]:
        """Call ``fn`` on every live worker (adapter registration and the like)."""
        workers = self.live_workers
        if not workers:
            raise WorkerDiedError(f"model {self.model_name} has no running worker")
        return list(await asyncio.gather(*(w.call(fn, wire_input) for w in workers)))

    async def stop(self) -> None:
        self._closed = True
        for task in [*self._dispatchers.values(), *self._background]:
            task.cancel()
        await asyncio.gather(*(w.kill() for w in self.workers), return_exceptions=True)
        self.workers.clear()
        unavailable = ServiceUnavailableError(f"model {self.model_name} was unregistered")
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(unavailable)

    @property
    def hooks(self) -> list[str]:
        workers = self.live_workers
        return workers[0].hooks if workers else []
