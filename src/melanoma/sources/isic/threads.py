"""Daemon worker threads that never hold up the caller (see ``download.py`` for why daemons).

After Ctrl-C, a fatal answer or a full disk the caller sets its cancel event and returns at once;
``concurrent.futures`` would instead join its threads (at ``shutdown`` and at interpreter exit), each
of which may sit in a socket read for up to the read timeout, times the retries.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any


class Workers:
    """``n`` daemon threads running submitted calls in order; see the module docstring for why."""

    def __init__(self, n: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, n))
        ]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller through the future, never lost
                fut.set_exception(exc)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._queue.put((fut, fn, args))
        return fut

    def close(self) -> None:
        """Let the threads end after the queued work; never waits for them."""
        for _ in self._threads:
            self._queue.put(None)


def run_parallel(calls: Sequence[Callable[[], Any]], name: str, cancel: threading.Event) -> list[Any]:
    """Run ``calls`` side by side; their results in order. The first error is raised at once.

    On that error (or Ctrl-C) ``cancel`` is set and nothing waits for the other calls, which are
    abandoned (their retries stop at the next wait).
    """
    workers = Workers(len(calls), name)
    futures = [workers.submit(call) for call in calls]
    workers.close()
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:
            if fut in done and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
        return [fut.result() for fut in futures]
    except BaseException:
        cancel.set()
        raise
