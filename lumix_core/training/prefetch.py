"""Preparing work items ahead of their use in one background thread (the trainer's data: reading
cache files, cropping on the CPU), so that disk reads overlap the model's compute.

The items come in a fixed order of keys and each is a pure function of its key, so reading ahead
changes no result. At most `depth` items are prepared and not yet taken. An error raised while
preparing an item is handed over in its place and raised again on the consumer's thread when that
item is taken (the same exception object: same type and message); the worker stops there. `close()`
stops and joins the thread; the trainer calls it on every exit path. The worker sets no global
state (no torch.set_num_threads, no RNG): it only calls `prepare`.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Hashable, Iterable


class Prefetcher:
    def __init__(self, prepare: Callable[[Hashable], object], keys: Iterable[Hashable], depth: int,
                 name: str = "lumix-prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._prepare, self._keys = prepare, iter(keys)
        self._ready: deque = deque()        # (key, ok, value) in key order
        self._cond = threading.Condition()
        self._depth, self._stop, self._finished = depth, False, False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for key in self._keys:
                with self._cond:
                    while len(self._ready) >= self._depth and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                try:
                    item = (key, True, self._prepare(key))
                except BaseException as error:  # handed to the consumer, raised there
                    item = (key, False, error)
                with self._cond:
                    self._ready.append(item)
                    self._cond.notify_all()
                if not item[1]:
                    return
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def take(self, key: Hashable):
        """The item for `key` (the next in order), waiting for it; raises what preparing it raised."""
        with self._cond:
            while not self._ready and not self._finished:
                self._cond.wait()
            if not self._ready:
                raise RuntimeError(f"the prefetch thread has no item for {key!r}: it ran out of keys")
            got, ok, value = self._ready.popleft()
            self._cond.notify_all()
        if got != key:
            raise RuntimeError(f"prefetched data out of order: asked for {key!r}, the next prepared is {got!r}")
        if not ok:
            raise value
        return value

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop after the item in preparation (if any) and join the thread; prepared items are dropped."""
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
