"""Reading and checking a safetensors header without trusting it.

safetensors' own parser answers a damaged file with its own error types (and json with RecursionError
for deeply nested headers); this module checks every entry first, so that each problem is reported
with the key it concerns: wrong types, unknown dtypes, sizes that do not match the shape, offsets
that overlap or run past the end of the file.
"""
from __future__ import annotations

import json
import math
import os
import struct

MAX_HEADER_BYTES = 100_000_000
MAX_RANK = 8  # tensor dimensions; LumiX factors have 3 or 4
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


class HeaderError(ValueError):
    """A safetensors header that is damaged or not a header at all; the message names the key."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def header_bytes(path: str) -> tuple[bytes, int]:
    """(the raw JSON header, the file's size in bytes), the header's length checked against the file."""
    size = os.path.getsize(path)
    name = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError(f"{name} is not a safetensors file ({size} bytes, too short for a header). "
                              "Download lumix.safetensors again.")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise HeaderError(
                f"{name} is not a safetensors file (or its header is cut off): its first bytes give a header "
                f"of {header_len} bytes in a {size}-byte file. Use the .safetensors file of the LumiX release, "
                "not a .ckpt/.bin/.pt file.")
        return f.read(header_len), size


def parse_header(raw: bytes, name: str) -> dict:
    """The header's JSON object; HeaderError for anything else (deep nesting included, which json
    answers with RecursionError)."""
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HeaderError(f"{name} is not a safetensors file (its header is not valid JSON: {reason}). "
                          "Use the .safetensors file of the LumiX release.") from None
    if not isinstance(header, dict):
        raise HeaderError(f"{name} is not a safetensors file (its header is a JSON {type(header).__name__}, "
                          "not an object). Use the .safetensors file of the LumiX release.")
    return header


def read_header(path: str) -> tuple[dict, int]:
    """(header dict, bytes of tensor data) of a safetensors file, every entry checked."""
    raw, size = header_bytes(path)
    header = parse_header(raw, os.path.basename(path))
    data_len = size - 8 - len(raw)
    check_entries(header, data_len, os.path.basename(path))
    return header, data_len


def check_entries(header: dict, data_len: int, name: str = "the file") -> None:
    """Every tensor entry well-formed, sized as its shape says, inside the data and not overlapping."""
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError(f"{name}: __metadata__ must map names to strings (got {str(metadata)[:80]}). "
                          "The file was not written by a safetensors library; fetch it again.")
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        where = f"{name}: tensor {key[:200]!r}"
        if not isinstance(entry, dict):
            raise HeaderError(f"{where} has a header entry of type {type(entry).__name__}, not an object; "
                              "the file is damaged.")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise HeaderError(f"{where} has unknown dtype {str(dtype)[:40]!r}; the file is damaged or "
                              "from a newer format.")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(_is_int(n) and n >= 0 for n in shape)):
            raise HeaderError(f"{where} has shape {str(shape)[:80]}; a shape is a list of at most "
                              f"{MAX_RANK} non-negative integers. The file is damaged.")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise HeaderError(f"{where} has data_offsets {str(offsets)[:80]}; expected [begin, end] with "
                              "0 <= begin <= end. The file is damaged.")
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise HeaderError(f"{where} ({dtype} {shape}) needs {expected} bytes but its offsets span "
                              f"{offsets[1] - offsets[0]}. The file is damaged.")
        if offsets[1] > data_len:
            raise HeaderError(f"{name} is truncated: {key[:200]!r} ends at byte {offsets[1]} of the tensor "
                              f"data but the file holds {data_len}. The download or copy was cut off; fetch "
                              "the file again.")
        if expected:
            spans.append((offsets[0], offsets[1], key))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise HeaderError(f"{name}: tensors {first[:200]!r} and {second[:200]!r} overlap in the file "
                              "(their data_offsets share bytes). The file is damaged.")
