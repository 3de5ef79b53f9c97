"""Checks for the limits a stream puts on a slow peer (see ZeroCopyStream.send_timeout)."""

from __future__ import annotations

import math

from ._lease import exact_int


def check_send_timeout(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"send_timeout must be a number of seconds or None, not {type(value).__name__}")
    # Checked as the float it becomes: a subclass's own comparisons could say anything.
    seconds = float(value)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"send_timeout must be a positive number of seconds or None, not {value}")
    return seconds


def check_max_in_flight(value: object) -> int:
    value = exact_int("max_in_flight", value, "an int (bytes)")
    if value < 1:
        raise ValueError(f"max_in_flight must be at least 1 byte, not {value}")
    return value
