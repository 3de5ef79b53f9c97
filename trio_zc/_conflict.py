"""Detecting concurrent misuse of one direction of a stream, as Trio does."""

from __future__ import annotations

import trio


class ConflictDetector:
    """Raise BusyResourceError when two tasks use one direction at once."""

    __slots__ = ("_message", "_held")

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False
