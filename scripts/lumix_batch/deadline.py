"""A time budget per HTTP answer that a trickling server cannot stretch.

A socket timeout only bounds the silence between two reads: a server that sends one byte every few
seconds would hold a read (its status line, headers or body) for ever. So every answer gets `grace`
seconds (the client passes min(--idle-timeout, 60 s)) plus one second per MIN_RATE bytes received
(and per MIN_RATE bytes sent with the request): an answer that arrives slower than MIN_RATE on
average, once its grace is spent, is cut off. One watcher thread per process shuts down the socket
of any answer that runs past its budget, which wakes the blocked read."""
from __future__ import annotations

import socket
import threading
import time

MIN_RATE = 64 * 1024  # bytes per second that earn an answer time beyond its grace


class Deadline:
    def __init__(self, grace: float, sent: int = 0):
        self.start = time.monotonic()
        self.grace = grace + sent / MIN_RATE
        self.received = 0  # set by the reader as the body arrives
        self.expired = False
        self._sock = None

    def limit(self) -> float:
        return self.start + self.grace + self.received / MIN_RATE

    def watch(self, sock) -> None:
        self._sock = sock
        _WATCHER.add(self)

    def done(self) -> None:
        _WATCHER.discard(self)

    def expire(self) -> None:
        self.expired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass


class _Watcher:
    """Sleeps until the earliest budget runs out, then cuts off every answer past its own."""

    def __init__(self):
        self.cond = threading.Condition()
        self.items: set[Deadline] = set()
        self.thread: threading.Thread | None = None

    def add(self, item: Deadline) -> None:
        with self.cond:
            self.items.add(item)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, daemon=True, name="lumix-answer-deadlines")
                self.thread.start()
            self.cond.notify()

    def discard(self, item: Deadline) -> None:
        with self.cond:
            self.items.discard(item)

    def _run(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                soonest = None
                for item in list(self.items):
                    limit = item.limit()  # later than when last looked at if bytes arrived meanwhile
                    if now >= limit:
                        self.items.discard(item)
                        item.expire()
                    elif soonest is None or limit < soonest:
                        soonest = limit
                self.cond.wait(None if soonest is None else soonest - now + 0.01)


_WATCHER = _Watcher()
