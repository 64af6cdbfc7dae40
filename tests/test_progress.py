"""``melanoma.progress``: a tqdm bar on a terminal, plain log lines at intervals anywhere else."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from melanoma.progress import Progress, is_terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "melanoma.progress"]


def test_not_a_terminal_gives_plain_lines_at_intervals(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melanoma.progress")
    stream = io.StringIO()
    with Progress(total=4, desc="images", unit="img", interval=0.0, stream=stream) as bar:
        for _ in range(4):
            bar.update()
    assert stream.getvalue() == ""  # nothing written to the stream itself: no \r, no escapes
    got = lines(caplog)
    assert [line.split(",")[0] for line in got] == [
        f"images: {i}/4 img ({25.0 * i:.1f}%)" for i in range(1, 5)
    ]
    assert got[-1].endswith("img/s")


def test_long_interval_logs_only_the_final_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melanoma.progress")
    for item in Progress(range(1000), desc="rows", interval=3600.0, stream=io.StringIO()):
        del item
    got = lines(caplog)
    assert len(got) == 1 and got[0].startswith("rows: 1000/1000 it (100.0%)")


def test_bytes_and_unknown_total(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melanoma.progress")
    bar = Progress(desc="bytes", unit="B", unit_scale=True, interval=3600.0, stream=io.StringIO())
    bar.update(3 * 1024 * 1024)
    bar.update(-1024 * 1024)  # a failed attempt taken back
    bar.close()
    bar.close()  # idempotent
    (line,) = lines(caplog)
    assert line.startswith("bytes: 2.00M B")


def test_terminal_gets_a_tqdm_bar(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melanoma.progress")
    stream = Terminal()
    with Progress(total=3, desc="images", unit="img", stream=stream) as bar:
        bar.update(3)
    assert is_terminal(stream) and not is_terminal(io.StringIO())
    assert "images" in stream.getvalue() and "\r" in stream.getvalue()
    assert lines(caplog) == []


def test_thread_safe_counts() -> None:
    bar = Progress(total=8000, interval=3600.0, stream=io.StringIO())
    threads = [threading.Thread(target=lambda: [bar.update() for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.n == 8000
