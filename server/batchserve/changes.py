"""``Changes``: a signal that the served models' readiness may have changed, for those who
follow it as it changes (gRPC's ``Health/Watch``) rather than ask each time."""

from __future__ import annotations

import asyncio


class Changes:
    """Who waits takes ``next()`` before reading the state it follows, then waits on it:
    ``notify`` (from the event loop) wakes every waiter at once, so a change made while a waiter
    read or answered is not missed. No waiter: ``notify`` costs nothing."""

    def __init__(self) -> None:
        self._next: asyncio.Event | None = None

    def next(self) -> asyncio.Event:
        """The event the next ``notify`` sets."""
        if self._next is None:
            self._next = asyncio.Event()
        return self._next

    def notify(self) -> None:
        if self._next is not None:
            self._next.set()
            self._next = None
