"""Batching for the hot routes: a thread that serves the calls arriving together in one go.

Every new erasure request appends to the audit hash chain, whose head row is locked from the append
until the commit, so one request per transaction means one chain append, one commit (one WAL flush)
and one lock hand-over per request, and many threads queueing on the head lock and the GIL. A read
by id is one small query, but a thread hop, a session and a statement execution per request cost
more CPU than the query itself. So both routes hand their call to a ``BatchRunner``: its thread
takes whatever is waiting (at most ``max_batch``), serves it with one function call (for POST
``requests.submit_erasure_requests``: one transaction, N rows, N outbox rows, one chain append of N
events, one commit; for GET ``requests.read_request_views``: one query for N ids), and answers each
waiting route. Alone, a call is a batch of one and waits for nothing; under load batches grow by
themselves, so throughput rises instead of latency (group commit).

An answer is given only after the batch function returned (for POST: after the commit). If a batch
fails as a whole (a database error), each of its calls is retried alone, so one bad call cannot fail
its neighbours; what still fails gets the exception (500), and nothing of it was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("lethe.service")

DEFAULT_MAX_BATCH = 64
# Calls waiting at most (about 2 s of work at the measured capacity): beyond it a call is refused at once
# (``Overloaded``, answered 503 with Retry-After) instead of waiting ever longer behind the others.
DEFAULT_MAX_PENDING = 1000


class Overloaded(Exception):
    """The runner already has ``max_pending`` calls waiting; nothing was done for this one."""


@dataclass
class _Waiting:
    item: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


_STOP = object()


class BatchRunner:
    """``await runner.submit(item)`` returns ``serve([... item ...])``'s answer for ``item``, or raises it
    if it is an exception. ``serve`` takes a list of items and returns one answer per item, in order; it
    runs in the runner's thread, which starts on first use. ``stop()`` serves everything queued, then
    ends the thread. ``after_batch(answers)`` runs in that thread after each batch."""

    def __init__(self, name: str, serve: Callable[[list[Any]], Sequence[Any]], max_batch: int = DEFAULT_MAX_BATCH,
                 after_batch: Callable[[Sequence[Any]], None] | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING):
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be at least 1")
        self.name, self.serve, self.max_batch, self.after_batch = name, serve, max_batch, after_batch
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # batches served (tests and diagnostics)
        self.largest_batch = 0

    async def submit(self, item: Any) -> Any:
        """``item``'s answer; raises ``Overloaded`` at once when ``max_pending`` calls are already waiting."""
        if self._queue.qsize() >= self.max_pending:
            raise Overloaded(f"{self.name}: {self.max_pending} calls are already waiting")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_started()
        self._queue.put(_Waiting(item, loop, future))
        answer = await future
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=f"lethe-{self.name}", daemon=True)
                thread.start()
                self._thread = thread

    def stop(self, timeout: float = 10) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            try:
                self._serve(batch)
            except BaseException as exc:  # the thread must outlive anything: answer the batch, go on
                logger.critical("%s: serving a batch raised %s; answering it with the error", self.name,
                                type(exc).__name__, exc_info=True)
                error = exc if isinstance(exc, Exception) else RuntimeError(f"{self.name}: {exc!r}")
                _answer(batch, [error] * len(batch))  # (a SystemExit must not reach the server's event loop)
            if stop:
                return

    def _serve(self, batch: list[_Waiting]) -> None:
        try:
            answers = list(self.serve([waiting.item for waiting in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{self.name}: {len(answers)} answers for {len(batch)} calls")
        except Exception as exc:
            if len(batch) > 1:
                logger.warning("%s: a batch of %d failed (%s: %s); serving them one by one",
                               self.name, len(batch), type(exc).__name__, exc)
                for waiting in batch:
                    self._serve([waiting])
                return
            logger.exception("%s failed", self.name)
            answers = [exc]
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        _answer(batch, answers)
        if self.after_batch is not None:
            try:
                self.after_batch(answers)
            except Exception:
                logger.exception("%s: after_batch failed", self.name)


def _answer(batch: list[_Waiting], answers: list) -> None:
    """Hand each answer to its waiting route: one wake-up per event loop, not one per call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for waiting, answer in zip(batch, answers, strict=True):
        by_loop.setdefault(waiting.loop, []).append((waiting.future, answer))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop (shutdown): nobody waits any more
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[asyncio.Future, object]]) -> None:
    for future, answer in pairs:
        if not future.done():  # the client may have gone away (its task cancelled)
            future.set_result(answer)
