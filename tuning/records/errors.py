"""What the records' modules share: the errors, a warning said once a process, a trial's time."""

from __future__ import annotations

import sys

FAILED_SECONDS = 1e9  # MetaSchedule's stand-in run time for a failed trial


def median_seconds(run_secs) -> float | None:
    """A trial's time: the median of its repeats; None when it failed (no time, or MetaSchedule's
    stand-in for a failure)."""
    secs = sorted(float(s) for s in run_secs or [])
    median = secs[len(secs) // 2] if secs else None
    return None if median is None or median >= FAILED_SECONDS else median


class ForeignRecords(ValueError):
    """Records from another TVM version: not applied silently."""


class RecordsError(ValueError):
    """Records that cannot be read or written as asked; the message names the path and the fix."""


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


