"""DynamicBatcher: gathers the texts of concurrent requests into one fill call.

One collector task on the event loop takes the first waiting request, waits up to `max_wait_ms` for
more (or until `max_batch_size` texts), groups the batch by fill parameters and runs one fill call
per group in a single worker thread (the model already uses every core). While a batch runs, new
requests queue up, so under load batches fill without waiting. Each request gets exactly its own
answers; if a group's call raises, each request of the group is retried alone so that one bad text
fails only its own request. The queue is bounded in texts: `submit` raises QueueFull instead of
growing it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from .metrics import ServeMetrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The bounded queue cannot take this request now: answer 503 with Retry-After."""


class ShuttingDown(Exception):
    """The batcher was closed: answer 503."""


@dataclass(frozen=True)
class FillParams:
    """The parameters of one fill call; requests are merged only when these are equal."""

    top_k: int = 5
    targets: tuple[str, ...] | None = None
    joint: bool = False
    truncation: bool = False

    def kwargs(self) -> dict:
        targets = None if self.targets is None else list(self.targets)
        return {"top_k": self.top_k, "targets": targets, "joint": self.joint, "truncation": self.truncation}


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 64  # texts per fill call (a larger single request still runs, alone)
    max_wait_ms: float = 2.0
    max_queue: int = 1024  # texts waiting


@dataclass
class Job:
    texts: list[str]
    params: FillParams
    single: bool  # the request sent one string: answer with its result, not a list of one
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """`fill(texts, top_k=, targets=, joint=, truncation=, batch_size=)` -> one result per text."""

    def __init__(self, fill: Callable, limits: BatchLimits, metrics: ServeMetrics | None = None):
        self.fill, self.limits = fill, limits
        self.metrics = metrics or ServeMetrics()
        self._jobs: deque[Job] = deque()
        self._queued_texts = 0
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()  # set when no batch runs and nothing waits
        self._idle.set()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deniro-fill")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="deniro-batcher")

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    async def submit(self, texts: list[str], params: FillParams, single: bool = False):
        """Queue one request's texts and wait for its answer (raises its own error, if any)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._queued_texts + len(texts) > self.limits.max_queue:
            raise QueueFull(f"the queue is full ({self._queued_texts} texts waiting, at most "
                            f"{self.limits.max_queue}); retry later")
        job = Job(texts, params, single, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self._queued_texts + len(texts))
        self._idle.clear()
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        """Stop taking requests, answer every queued one, then stop the collector and the worker."""
        self._closing = True
        self._arrived.set()
        await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ collecting
    async def _collect_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._run(batch)
            except Exception as exc:  # never leave a request without an answer, whatever broke
                log.exception("batch failed")
                for job in batch:
                    settle(job, error=exc)
            if not self._jobs:
                self._idle.set()

    async def _next_batch(self) -> list[Job]:
        while not self._jobs:
            self._arrived.clear()
            await self._arrived.wait()
        # The wait counts from the first text's arrival: under load it has already waited while the
        # previous batch ran, so the next batch starts at once instead of idling the model.
        deadline = self._jobs[0].enqueued_at + self.limits.max_wait_ms / 1000
        while self._queued_texts < self.limits.max_batch_size and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self._take()

    def _take(self) -> list[Job]:
        """Jobs from the front while they fit max_batch_size (the first one always)."""
        batch, size = [], 0
        while self._jobs and (not batch or size + len(self._jobs[0].texts) <= self.limits.max_batch_size):
            job = self._jobs.popleft()
            batch.append(job)
            size += len(job.texts)
        self._set_queued(self._queued_texts - size)
        started = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait.observe(started - job.enqueued_at)
        return batch

    def _set_queued(self, texts: int) -> None:
        self._queued_texts = texts
        self.metrics.queued.value = texts

    # ------------------------------------------------------------------ running
    async def _run(self, batch: list[Job]) -> None:
        groups: dict[FillParams, list[Job]] = {}
        for job in batch:
            groups.setdefault(job.params, []).append(job)
        for params, jobs in groups.items():
            await self._run_group(params, jobs)

    async def _run_group(self, params: FillParams, jobs: list[Job]) -> None:
        texts = [t for job in jobs for t in job.texts]  # [n_texts] of every job, in job order
        try:
            results = await self._call(texts, params)
        except Exception as exc:
            if len(jobs) == 1:
                settle(jobs[0], error=exc)
                return
            log.info("a batch of %d requests failed (%s); retrying each alone", len(jobs), exc)
            for job in jobs:  # one bad text must fail only its own request
                await self._run_group(params, [job])
            return
        at = 0
        for job in jobs:
            mine = results[at:at + len(job.texts)]
            at += len(job.texts)
            settle(job, result=mine[0] if job.single else mine)

    async def _call(self, texts: list[str], params: FillParams) -> list:
        self.metrics.batch_size.observe(len(texts))
        call = partial(self.fill, texts, batch_size=max(self.limits.max_batch_size, 1), **params.kwargs())
        results = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        if len(results) != len(texts):
            raise RuntimeError(f"the fill backend returned {len(results)} results for {len(texts)} texts")
        return results


def settle(job: Job, result=None, error: BaseException | None = None) -> None:
    """Answer a job once (its client may have gone away: the future is then already cancelled)."""
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
