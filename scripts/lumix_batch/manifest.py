"""The run's manifest (JSON Lines, one record per finished scene, appended and fsynced as scenes
finish) and the run record (workflow and settings) that a re-run must match to resume."""
from __future__ import annotations

import json
import os
import threading

from .errors import ClientError

MANIFEST = "manifest.jsonl"
RUN_RECORD = "lumix_run.json"


def write_atomic(path: str, text: str | bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(text.encode("utf-8") if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


STATUSES = ("done", "failed", "filtered")


def valid_record(record) -> bool:
    """A record this client wrote: an object with a scene id and a known status."""
    return (isinstance(record, dict) and isinstance(record.get("scene"), str) and bool(record["scene"])
            and record.get("status") in STATUSES)


def _parse(line: bytes):
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


class Manifest:
    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, MANIFEST)
        self.lock = threading.Lock()
        self.records: dict[str, dict] = {}
        self.skipped: list[bytes] = []  # lines that are no record of ours, kept verbatim at the end on compaction
        self.notes: list[str] = []  # what load() repaired or skipped, for the user

    def load(self) -> dict[str, dict]:
        """The latest record per scene. Repairs the file first: a last line cut off by a killed client
        is truncated away (appending after it would join two records into one broken line). Lines
        that are not a record of ours (malformed, or an unknown status) are skipped and counted."""
        if not os.path.exists(self.path):
            return self.records
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            data = self._repair_tail(data)
        except OSError as exc:
            raise ClientError(f"cannot read the manifest {self.path}: {exc.strerror}") from None
        skipped_at = []
        for number, line in enumerate(data.split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            record = _parse(line)
            if valid_record(record):
                self.records[record["scene"]] = record
            else:
                skipped_at.append(number)
                self.skipped.append(line)
        if skipped_at:
            shown = ", ".join(map(str, skipped_at[:5])) + (", ..." if len(skipped_at) > 5 else "")
            self.notes.append(f"{self.path}: skipped {len(skipped_at)} line{'s' if len(skipped_at) > 1 else ''} "
                              f"that {'are' if len(skipped_at) > 1 else 'is'} not a manifest record (line "
                              f"{shown}); kept at the end of the file")
        return self.records

    def _repair_tail(self, data: bytes) -> bytes:
        """The file's bytes, ending in a newline: a whole last record only lacking its newline gets it,
        a cut-off last line is truncated from the file (fsynced), with a note."""
        if not data or data.endswith(b"\n"):
            return data
        start = data.rfind(b"\n") + 1
        tail = data[start:]
        with open(self.path, "r+b") as f:
            if valid_record(_parse(tail)):
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
                data += b"\n"
            else:
                f.truncate(start)
                data = data[:start]
                self.notes.append(f"{self.path}: removed its cut-off last line ({len(tail)} bytes, left by a client "
                                  "killed while writing it)")
            f.flush()
            os.fsync(f.fileno())
        return data

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.lock:
            self.records[record["scene"]] = record
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def compact(self, order: list[str]) -> None:
        """Rewrite as one record per scene in batch order (atomically): the same batch gives the same file.
        Skipped lines stay, after the records."""
        with self.lock:
            index = {scene: i for i, scene in enumerate(order)}
            scenes = sorted(self.records, key=lambda s: (index.get(s, len(index)), s))
            text = "".join(json.dumps(self.records[s], sort_keys=True) + "\n" for s in scenes)
            write_atomic(self.path, text.encode("utf-8") + b"".join(line + b"\n" for line in self.skipped))


def read_run_record(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, RUN_RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise ClientError(f"cannot read {path} ({exc}); move it away or use another --out") from None
    if not isinstance(record, dict):
        raise ClientError(f"{path} is not a run record; move it away or use another --out")
    return record


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every value that differs (nested dicts walked)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)[:40]} -> {json.dumps(b)[:40]}")
    return out
