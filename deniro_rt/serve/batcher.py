"""DynamicBatcher: gathers the texts of concurrent requests into one fill call (continuous batching).

A batch runs as soon as the model is free (a lone request at once); while it runs, the next requests
queue up and become the next batch. Right after a batch its clients are about to send again: the
collector waits for them (at most max_wait_ms and half the batch's run time, while fewer requests
wait than it answered), so batches keep their size under steady load instead of alternating between
stragglers and everyone else.
Batches run in one worker thread, one fill call per parameter group, each group's requests answered as
soon as its call returns; jobs of clients that went away are dropped, never computed; the queue is
bounded in texts (Unavailable).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The bounded queue is full, or the batcher was closed: answer 503 with Retry-After."""


class ClientGone(Exception):
    """The request's client disconnected before its batch ran: nothing to answer."""


@dataclass(frozen=True)
class FillParams:
    """The parameters of one fill call; requests are merged only when these are equal."""

    top_k: int = 5
    targets: tuple[str, ...] | None = None
    joint: bool = False
    truncation: bool = False

    def kwargs(self) -> dict:
        return {**vars(self), "targets": self.targets and list(self.targets)}


@dataclass(eq=False)
class Job:
    texts: list[str]
    params: FillParams
    single: bool = False  # the request sent one string: answer with its result, not a list of one
    future: asyncio.Future | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)
    dropped: bool = False  # its client went away: skip it (read by the worker thread)


def fill_jobs(
    fill: Callable,
    jobs: list[Job],
    batch_size: int,
    observe: Callable[[int], None],
    group_done: Callable[[list[int], list], None] | None = None,
) -> list:
    """Each job's answer (its results, or the exception that failed it; None if dropped): one fill call
    per parameter group. Shared by DynamicBatcher and the Ray Serve `@serve.batch` adapter. group_done(indices,
    answers) is called after each group, so its requests need not wait for the batch's other groups (a top-k
    request behind a joint fill of hundreds of masks)."""
    answers: list = [None] * len(jobs)
    for params in dict.fromkeys(job.params for job in jobs):
        # dropped jobs checked again right before each call
        live = [i for i, job in enumerate(jobs) if job.params == params and not job.dropped]
        group = fill_group(fill, [jobs[i].texts for i in live], params, batch_size, observe)
        for index, answer in zip(live, group):
            answers[index] = answer
        if group_done is not None:
            group_done(live, group)
    return answers


def fill_group(
    fill: Callable, requests: list[list[str]], params: FillParams, batch_size: int, observe: Callable[[int], None]
) -> list:
    """One fill call for the texts of several requests; if it raises, each request is retried alone,
    so that one bad text fails only its own request."""
    texts = [t for request in requests for t in request]  # [n_texts] of every request, in order
    if not texts:
        return []
    observe(len(texts))
    try:
        results = fill(texts, batch_size=batch_size, **params.kwargs())
        if len(results) != len(texts):
            raise RuntimeError(f"the fill backend returned {len(results)} results for {len(texts)} texts")
    except Exception as exc:
        if len(requests) == 1:
            return [exc]
        log.info("a batch of %d requests failed (%s); retrying each alone", len(requests), exc)
        return [fill_group(fill, [request], params, batch_size, observe)[0] for request in requests]
    answers = iter(results)
    return [[next(answers) for _ in request] for request in requests]


class DynamicBatcher:
    """`fill(texts, top_k=, targets=, joint=, truncation=, batch_size=)` -> one result per text; limits:
    anything with ServeConfig's max_batch_size (texts per call), max_wait_ms and max_queue (texts).
    Built inside the running event loop: its collector starts at once."""

    def __init__(self, fill: Callable, limits, metrics):
        self.fill, self.limits, self.metrics = fill, limits, metrics
        self._jobs: deque[Job] = deque()
        self.queued_texts = 0
        self._returning = 0  # requests the last batch answered: their clients may be about to send again
        self._last_run_s = 0.0  # how long that batch ran: the model never waits more than half of it
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()  # set when no batch runs and nothing waits
        self._idle.set()
        self._closing = False
        self._running: list[Job] = []  # the batch in the worker thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deniro-fill")
        self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="deniro-batcher")

    def enqueue(self, texts: list[str], params: FillParams, single: bool = False) -> Job:
        """Queue one request's texts; await `job.future` for its answer (raises its own error)."""
        if self._closing:
            raise Unavailable("the server is shutting down")
        if self.queued_texts + len(texts) > self.limits.max_queue:
            raise Unavailable(
                f"the queue is full ({self.queued_texts} texts waiting, at most {self.limits.max_queue}); retry later"
            )
        job = Job(texts, params, single, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self.queued_texts + len(texts))
        self._idle.clear()
        self._arrived.set()
        return job

    def drop(self, job: Job) -> None:
        """The client went away: take its job out of the queue (or out of the batch about to run)."""
        job.dropped = True
        if job in self._jobs:  # counted now; a job of the running batch once the batch shows whether it ran
            self._jobs.remove(job)
            self._set_queued(self.queued_texts - len(job.texts))
            self.metrics.texts.labels("dropped").inc(len(job.texts))
        settle(job, ClientGone())

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking requests and answer every queued one; after `timeout` seconds, answer what is left
        503 (Unavailable) and stop without the batch still running (`busy` says so; its thread is left)."""
        self._closing = True
        self._arrived.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            left = self.queued_texts + sum(len(job.texts) for job in self._running)
            log.warning("shutting down with %d texts unanswered (503)", left)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        for job in [*self._jobs, *self._running]:
            settle(job, Unavailable("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def busy(self) -> bool:
        """A batch is running (after close: one that outlived its timeout, in its worker thread)."""
        return bool(self._running)

    async def _collect_forever(self) -> None:
        while True:
            await self._wait_for_jobs()
            batch, started = self._take(), time.perf_counter()
            self._running = batch
            try:
                answers = await asyncio.get_running_loop().run_in_executor(
                    self._executor,
                    fill_jobs,
                    self.fill,
                    batch,
                    self.limits.max_batch_size,
                    self.metrics.batch_size.observe,
                    self._settler(batch),
                )
            except Exception as exc:  # never leave a request without an answer, whatever broke
                log.exception("batch failed")
                answers = [exc] * len(batch)
            for job, answer in zip(batch, answers):
                settle(job, answer)
                if job.dropped:  # its client left during the batch: skipped (None) or computed for nothing
                    self.metrics.texts.labels("dropped" if answer is None else "abandoned").inc(len(job.texts))
            self._running = []
            self._returning, self._last_run_s = len(batch), time.perf_counter() - started
            if not self._jobs:
                self._idle.set()

    @staticmethod
    def _settler(batch: list[Job]) -> Callable[[list[int], list], None]:
        """fill_jobs' group_done, from the worker thread: answer a group's jobs on the event loop at once
        (the batch's end settles them again, a no-op)."""
        loop = asyncio.get_running_loop()

        def group_done(indices: list[int], answers: list) -> None:
            for index, answer in zip(indices, answers):
                loop.call_soon_threadsafe(settle, batch[index], answer)

        return group_done

    async def _wait_for_jobs(self) -> None:
        """Until a job waits, then (see the module docstring) for the last batch's clients to return."""
        while not self._jobs:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.perf_counter() + min(self.limits.max_wait_ms / 1000, self._last_run_s / 2)
        while (
            len(self._jobs) < self._returning
            and self.queued_texts < self.limits.max_batch_size
            and not self._closing
            and (remaining := deadline - time.perf_counter()) > 0
        ):
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break

    def _take(self) -> list[Job]:
        """Jobs from the front while they fit max_batch_size (the first one always)."""
        batch, size = [], 0
        while self._jobs and (not batch or size + len(self._jobs[0].texts) <= self.limits.max_batch_size):
            job = self._jobs.popleft()
            batch.append(job)
            size += len(job.texts)
        self._set_queued(self.queued_texts - size)
        started = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait.observe(started - job.enqueued_at)
        return batch

    def _set_queued(self, texts: int) -> None:
        self.queued_texts = texts
        self.metrics.queued.set(texts)


def settle(job: Job, answer) -> None:
    """Answer a job once (a dropped job is already answered): its results, or the exception that failed it."""
    if job.future.done():
        return
    if isinstance(answer, BaseException):
        job.future.set_exception(answer)
    else:
        job.future.set_result(answer[0] if job.single else answer)
