"""Telling LumiX checkpoints from other files by their safetensors header alone.

The loader's menu lists the files of models/loras that hold LumiX keys. Loading tensors for that
would take seconds per file, so only the JSON header is read (8 bytes of length, then the header),
and each answer is remembered until the file's size or modification time changes.
"""
from __future__ import annotations

import json
import os
import re
import struct

from .checkpoint import ADAPTER_NAMES, BLOCK_KINDS, FACTOR_NAMES

# The safetensors format caps its header at 100 MB; anything larger is not safetensors.
MAX_HEADER_BYTES = 100_000_000
_LUMIX_KEY = re.compile(rf"(^|\.)({'|'.join(BLOCK_KINDS)})\.\d+\.processor\.({'|'.join(ADAPTER_NAMES)})"
                        rf"\.({'|'.join(FACTOR_NAMES)})$")
# Every LumiX key holds this; a header without it is skipped before parsing its JSON.
_MARKER = b"_tt_lora."


def _header_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header length {length} is not that of a safetensors file")
        raw = f.read(length)
    if len(raw) < length:
        raise ValueError(f"{path}: header cut off ({len(raw)} of {length} bytes)")
    return raw


def _parse(raw: bytes, path: str) -> dict:
    header = json.loads(raw)  # ValueError (JSONDecodeError, UnicodeDecodeError) when not JSON
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    return header


def read_header(path: str) -> dict:
    """The JSON header of a safetensors file, without reading any tensor data.

    Raises OSError when the file cannot be read, ValueError when it is not safetensors."""
    return _parse(_header_bytes(path), path)


def has_lumix_keys(header: dict) -> bool:
    return any(_LUMIX_KEY.search(key) for key in header if key != "__metadata__")


def is_lumix_file(path: str) -> bool:
    """True when the file is safetensors with at least one LumiX key; False for anything else,
    unreadable or damaged files included (the loader reports those when one is picked)."""
    try:
        raw = _header_bytes(path)
        return _MARKER in raw and has_lumix_keys(_parse(raw, path))
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
