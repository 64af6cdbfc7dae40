"""Progress of long loops: a tqdm bar on a terminal, a plain log line at intervals anywhere else.

A bar redraws itself with carriage returns and escapes; in ``dvc repro`` logs, CI output or a file
those are noise. So when the stream is not a terminal, ``Progress`` logs one plain line (logger
``melanoma.progress``) every ``interval`` seconds and one at the end::

    ISIC images: 1200/10000 img (12.0%), 41.3 img/s

Thread-safe (one lock); use it like tqdm: ``update(n)``, ``close()``, a context manager, or wrap an
iterable. Rates belong in logs, never in tracked outputs.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

from tqdm import tqdm

log = logging.getLogger("melanoma.progress")

T = TypeVar("T")
DEFAULT_INTERVAL = 30.0  # seconds between plain lines: a few per minute in a long log


def is_terminal(stream: IO[str] | Any) -> bool:
    """True when ``stream`` is an interactive terminal (where a redrawn bar makes sense)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress(Generic[T]):
    """A progress display that suits where it is shown; see the module docstring."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        unit_scale: bool = False,
        initial: int = 0,
        interval: float = DEFAULT_INTERVAL,
        stream: IO[str] | None = None,
    ) -> None:
        stream = stream if stream is not None else sys.stderr
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.unit_scale, self.n, self.interval = unit_scale, initial, interval
        self._lock = threading.Lock()
        self._start = self._last = time.monotonic()
        self._start_n = self._last_n = initial
        self._closed = False
        self._bar: tqdm | None = None
        if is_terminal(stream):
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                             unit_divisor=1024 if unit_scale else 1000, initial=initial, leave=False,
                             file=stream, mininterval=0.5)  # fmt: skip

    def update(self, n: int = 1) -> None:
        """Add ``n`` (negative to take back work that was thrown away)."""
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)
                return
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._emit(now)

    def set_total(self, total: int | None) -> None:
        """Change the total (e.g. once a listing tells how much there is)."""
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()

    def close(self) -> None:
        """Remove the bar, or log the final line (if anything happened since the last one)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            elif self.n != self._last_n or self._last == self._start:
                self._emit(time.monotonic())

    def line(self, now: float | None = None) -> str:
        """The plain progress line for the current count."""
        now = time.monotonic() if now is None else now
        done = self._fmt(self.n)
        if self.total:
            done += f"/{self._fmt(self.total)} {self.unit} ({100.0 * self.n / self.total:.1f}%)"
        else:
            done += f" {self.unit}"
        elapsed = now - self._start
        if elapsed > 0 and self.n > self._start_n:
            done += f", {self._fmt((self.n - self._start_n) / elapsed)} {self.unit}/s"
        return f"{self.desc}: {done}" if self.desc else done

    def _emit(self, now: float) -> None:
        log.info("%s", self.line(now))
        self._last, self._last_n = now, self.n

    def _fmt(self, value: float) -> str:
        if self.unit_scale:
            return tqdm.format_sizeof(value, divisor=1024)
        return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress() was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
