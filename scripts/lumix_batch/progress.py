"""Whole-batch progress: done/total, rate, ETA and each server's state; a bar redrawn in place on a
terminal, plain lines (one per finished scene or server event) otherwise."""
from __future__ import annotations

import shutil
import sys
import threading
import time


def printable(text: str) -> str:
    """No escape sequence or line break from a server reaches the terminal."""
    return "".join(c if c.isprintable() else " " for c in str(text))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, total: int, already: int, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.already = total, already
        self.done = self.failed = self.filtered = 0
        self.start = time.monotonic()
        self.servers: dict[str, str] = {}
        self.lock = threading.Lock()
        self._last_draw = 0.0

    @property
    def finished(self) -> int:
        return self.already + self.done + self.failed + self.filtered

    def rate_eta(self):
        elapsed = time.monotonic() - self.start
        new = self.done + self.failed + self.filtered
        rate = new / elapsed if elapsed > 0 and new else None
        left = self.total - self.finished
        return rate, (left / rate if rate else None)

    def summary(self) -> str:
        rate, eta = self.rate_eta()
        rate_text = f"{rate * 60:.1f} scenes/min" if rate else "- scenes/min"
        extra = "".join(f", {n} {k}" for n, k in ((self.failed, "failed"), (self.filtered, "filtered")) if n)
        return f"{self.finished}/{self.total} scenes{extra} | {rate_text} | ETA {duration(eta)}"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def line(self, text: str) -> None:
        """A plain event line (kept above the bar on a terminal)."""
        with self.lock:
            self._write(("\r\x1b[K" if self.tty else "") + printable(text) + "\n")
            if self.tty:
                self._draw()

    def result(self, text: str, out=None) -> None:
        """A line on stdout (a finished scene's folder), clearing the bar first when both share a terminal."""
        out = out or sys.stdout
        with self.lock:
            if self.tty:
                self._write("\r\x1b[K")
            out.write(text + "\n")
            out.flush()
            if self.tty:
                self._draw()

    def server_state(self, server: str, state: str) -> None:
        with self.lock:
            self.servers[server] = printable(state)

    def scene(self, status: str, scene_id: str, server: str, detail: str = "") -> None:
        with self.lock:
            setattr(self, status, getattr(self, status) + 1)
        if self.tty and status == "done":  # the bar says it; lines only for what needs a look
            self.tick(force=True)
            return
        self.line(f"[{self.finished}/{self.total}] {scene_id} {status} on {server}{': ' + detail if detail else ''}"
                  f" | {self.summary()}")

    def _draw(self) -> None:
        width = 24
        filled = int(width * self.finished / self.total) if self.total else width
        servers = "  ".join(f"{name}: {state}" for name, state in self.servers.items())
        columns = shutil.get_terminal_size((100, 20)).columns - 1  # a wrapped bar cannot be redrawn in place
        self._write(f"\r\x1b[K" + f"[{'#' * filled}{'.' * (width - filled)}] {self.summary()} | {servers}"[:columns])
        self._last_draw = time.monotonic()

    def tick(self, force: bool = False) -> None:
        """Redraw the bar (terminal only; at most a few times a second)."""
        if self.tty and (force or time.monotonic() - self._last_draw > 0.25):
            with self.lock:
                self._draw()

    def close(self) -> None:
        if self.tty:
            with self.lock:
                self._draw()
                self._write("\n")
