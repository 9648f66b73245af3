"""Telling LumiX checkpoints from other files by their safetensors header alone.

The loader's menu lists the files of models/loras that hold LumiX keys. Loading tensors for that
would take seconds per file, so only the JSON header is read (8 bytes of length, then the header),
and each answer is remembered until the file's size or modification time changes.
"""
from __future__ import annotations

import os
import re

from .checkpoint import ADAPTER_NAMES, BLOCK_KINDS, FACTOR_NAMES
from .safetensors_header import header_bytes, parse_header

_LUMIX_KEY = re.compile(rf"(^|\.)({'|'.join(BLOCK_KINDS)})\.\d+\.processor\.({'|'.join(ADAPTER_NAMES)})"
                        rf"\.({'|'.join(FACTOR_NAMES)})$")
# Every LumiX key holds this; a header without it is skipped before parsing its JSON.
_MARKER = b"_tt_lora."


def read_header(path: str) -> dict:
    """The JSON header of a safetensors file, without reading any tensor data (nor checking its
    entries: the loader does that when the file is picked).

    Raises OSError when the file cannot be read, ValueError (HeaderError) when it is not safetensors."""
    return parse_header(header_bytes(path)[0], os.path.basename(path))


def has_lumix_keys(header: dict) -> bool:
    return any(_LUMIX_KEY.search(key) for key in header if key != "__metadata__")


def is_lumix_file(path: str) -> bool:
    """True when the file is safetensors with at least one LumiX key; False for anything else,
    unreadable or damaged files included (the loader reports those when one is picked)."""
    try:
        raw = header_bytes(path)[0]
        return _MARKER in raw and has_lumix_keys(parse_header(raw, os.path.basename(path)))
    except (OSError, ValueError):
        return False


class LumiXFileCache:
    """is_lumix_file per path, re-checked only when the file's size or modification time changes."""

    def __init__(self):
        self._known: dict[str, tuple[tuple[int, int], bool]] = {}

    def is_lumix(self, path: str) -> bool:
        try:
            stat = os.stat(path)
        except OSError:
            self._known.pop(path, None)
            return False
        key = (stat.st_size, stat.st_mtime_ns)
        known = self._known.get(path)
        if known is None or known[0] != key:
            known = (key, is_lumix_file(path))
            self._known[path] = known
        return known[1]

    def forget_missing(self, present: set[str]) -> None:
        """Drop entries of files no longer listed, so the cache does not grow with deleted files."""
        for path in set(self._known) - present:
            del self._known[path]
