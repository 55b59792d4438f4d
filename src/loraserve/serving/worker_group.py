"""The workers of one model: a bounded job queue, dynamic batching, scaling and restarts.

A worker that dies is replaced; before the new one takes requests, ``replay`` re-registers
every adapter on it, so nothing registered is lost. Every job taken from the queue is
answered on every path: a batch being collected when its worker dies or is scaled away goes
back to the queue, and jobs no worker can serve (unregistered, shutting down, restarts
failing) fail with a 503 at once instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraserve.config import ModelConfig
from loraserve.errors import BadRequestError, ServiceUnavailableError, WorkerDiedError
from loraserve.serving.batching import batch_wire_inputs, split_batch_output
from loraserve.serving.worker_process import WorkerProcess, WorkerReply

log = logging.getLogger("loraserve.workers")
MAX_CONCURRENT_CALLS = 1024  # per worker, for handlers whose handle() is async
MAX_WORKERS = 64  # per model, whatever a request or serving.properties asks for
RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10, 30)

Replay = Callable[[WorkerProcess], Awaitable[None]]
WorkerFactory = Callable[..., WorkerProcess]


@dataclass(slots=True)
class _Job:
    wire_input: Any  # a DJL Input in wire form, or a typed message for ``fn``
    future: asyncio.Future
    fn: str = "handle"


class WorkerGroup:
    def __init__(
        self,
        model_name: str,
        model_dir: Path,
        config: ModelConfig,
        env: dict[str, str],
        replay: Replay,
        start_timeout_s: float,
        server_stopping: Callable[[], bool] = lambda: False,
        factory: WorkerFactory = WorkerProcess,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        self.model_name = model_name
        self.model_dir = model_dir
        self.config = config
        self.env = env
        self.replay = replay
        self.start_timeout_s = start_timeout_s
        self.server_stopping = server_stopping
        self.factory = factory
        self.max_workers = min(max_workers, MAX_WORKERS)
        self.workers: list[WorkerProcess] = []
        self.target = config.min_workers
        self.restarts = 0
        self.failure: str | None = None  # why the last restart failed, until one succeeds
        self._restarting = 0
        self._jobs: collections.deque[_Job] = collections.deque()
        self.collecting = 0  # jobs taken from the queue into a batch not yet sent
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

    @property
    def recovering(self) -> bool:
        """No live worker, but a restart is under way and has not failed yet: jobs may wait."""
        return not self.live_workers and self._restarting > 0 and self.failure is None

    @property
    def serving(self) -> bool:
        return bool(self.live_workers)

    async def start(self) -> None:
        """Start ``min_workers`` workers; raises if the model cannot load at all."""
        self._check_count(self.target, self.config.max_workers)
        await asyncio.gather(*(self._add_worker() for _ in range(self.target)))

    async def _add_worker(self) -> WorkerProcess:
        worker = self.factory(self.model_name, self.model_dir, self.env, self._worker_exited)
        try:
            await worker.start(self.start_timeout_s)
            await self.replay(worker)
        except BaseException:  # cancelled (unregistered mid-start) or failed: no orphan process
            await asyncio.shield(worker.kill())
            raise
        if self._closed:
            await worker.kill()
            raise ServiceUnavailableError(f"model {self.model_name} is being unregistered")
        self.workers.append(worker)
        self.failure = None
        self._dispatchers[worker.worker_id] = asyncio.create_task(self._dispatch(worker))
        return worker

    def _worker_exited(self, worker: WorkerProcess) -> None:
        task = self._dispatchers.pop(worker.worker_id, None)
        if task:
            task.cancel()
        if worker not in self.workers:  # never added (its start failed) or scaled away
            return
        self.workers.remove(worker)
        if self._closed or worker.stopping:
            return
        if self.server_stopping():  # the shutdown signal reached the whole process group
            log.info(
                "model %s: worker %s exited during shutdown; not restarting",
                self.model_name,
                worker.worker_id,
            )
            self._fail_unserved("the server is shutting down")
            return
        if len(self.workers) + self._restarting < self.target:
            self._restarting += 1
            self._spawn(self._restart(_first_delay(worker)))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self, first_delay: float) -> None:
        try:
            for attempt, delay in enumerate((first_delay, *RESTART_BACKOFF_S)):
                await asyncio.sleep(delay)
                if self._closed or self.server_stopping() or len(self.workers) >= self.target:
                    return
                try:
                    await self._add_worker()
                except Exception as exc:
                    log.error("model %s: worker restart failed: %s", self.model_name, exc)
                    self.failure = f"restarting its worker failed: {exc}"
                    self._fail_unserved(self.failure)
                    continue
                self.restarts += 1
                log.info("model %s: worker restarted (attempt %d)", self.model_name, attempt + 1)
                return
            log.error("model %s: giving up restarting a worker", self.model_name)
        finally:
            self._restarting -= 1
            self._fail_unserved(self.failure or "its worker is not running")

    def _fail_unserved(self, reason: str) -> None:
        """With no live worker and no restart to wait for, queued jobs fail now (no hang)."""
        if self.live_workers or self.recovering:
            return
        self._fail_queue(
            ServiceUnavailableError(f"model {self.model_name} has no live worker: {reason}; retry later")
        )

    def _fail_queue(self, error: Exception) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(error)

    async def scale(self, min_workers: int, max_workers: int) -> None:
        self._check_count(min_workers, max_workers)
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
        if not self.live_workers and not self.recovering:
            reason = self.failure or "its worker is not running"
            raise ServiceUnavailableError(
                f"model {self.model_name} has no live worker: {reason}; retry later"
            )
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
        """Up to ``batch_size`` jobs; if cancelled while collecting, they go back to the queue."""
        jobs: list[_Job] = []
        self.collecting = 0  # one batch is collected at a time
        try:
            while not self._jobs:
                self._job_added.clear()
                await self._job_added.wait()
            jobs.append(self._jobs.popleft())
            self.collecting = 1
            deadline = asyncio.get_running_loop().time() + self.config.max_batch_delay_ms / 1000
            while self.config.batch_size > 1 and len(jobs) < self.config.batch_size:
                if self._jobs:
                    jobs.append(self._jobs.popleft())
                    self.collecting = len(jobs)
                    continue
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                self._job_added.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._job_added.wait(), remaining)
        except asyncio.CancelledError:
            self.collecting = 0
            self._give_back(jobs)
            raise
        self.collecting = 0
        return [job for job in jobs if not job.future.done()]

    def _give_back(self, jobs: list[_Job]) -> None:
        """Jobs taken but not sent: to the front of the queue, in order, or failed if no
        worker will come for them."""
        self._jobs.extendleft(reversed([job for job in jobs if not job.future.done()]))
        self._job_added.set()
        if self._closed:
            self._fail_queue(ServiceUnavailableError(f"model {self.model_name} was unregistered"))
        else:
            self._fail_unserved(self.failure or "its worker is not running")

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
                self._give_back(jobs)
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
                job.future.set_result(WorkerReply(reply.kind, output, reply.stream, reply.cancel))

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

    async def broadcast(self, fn: str, wire_input: Any) -> list[WorkerReply]:
        """Call ``fn`` on every live worker (adapter operations, statistics)."""
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
        self._fail_queue(ServiceUnavailableError(f"model {self.model_name} was unregistered"))

    def _check_count(self, min_workers: int, max_workers: int) -> None:
        """A hard cap on processes per model, whatever the caller already checked."""
        if max(min_workers, max_workers) > self.max_workers:
            raise BadRequestError(
                f"at most {self.max_workers} workers per model (asked for "
                f"min_worker={min_workers}, max_worker={max_workers})"
            )

    @property
    def hooks(self) -> list[str]:
        workers = self.live_workers
        return workers[0].hooks if workers else []


def _first_delay(worker: WorkerProcess) -> float:
    """A worker ended by SIGTERM was most likely hit by the server's own shutdown signal
    (it reaches the whole process group): wait a moment so the shutdown is seen first."""
    process = getattr(worker, "process", None)
    code = getattr(process, "returncode", None)
    return RESTART_BACKOFF_S[0] if code == -signal.SIGTERM else 0.0
