"""What the benchmarks share: verdicts that flag passes overlapped by other processes' CPU load.

The machine may be shared, so each timed pass records how many cores OTHER processes used meanwhile
(``foreign_cores``, from /proc/stat); a verdict drawn from a busy pass says so.
"""

from __future__ import annotations

import os
from typing import Protocol

BUSY_LIMIT = 0.25  # other processes using more cores than this during a pass: "not clean"
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class HasLoad(Protocol):
    foreign_cores: float | None


def busy(p: HasLoad) -> bool:
    """Did other processes use more than BUSY_LIMIT cores during this pass?"""
    return p.foreign_cores is not None and p.foreign_cores > BUSY_LIMIT


def verdict(ok: bool, *passes: HasLoad) -> str:
    """PASS/FAIL, flagged when a pass behind the figure overlapped other processes' load."""
    loads = [p.foreign_cores for p in passes if busy(p)]
    flag = f"  (not clean: other processes used up to {max(loads):.2f} cores meanwhile)" if loads else ""
    return ("PASS" if ok else "FAIL") + flag


def fmt_load(p: HasLoad) -> str:
    """The pass's foreign load for a table cell."""
    return "n/a" if p.foreign_cores is None else f"{p.foreign_cores:.2f}"
