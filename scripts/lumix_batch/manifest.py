"""The run's manifest (JSON Lines, one record per finished scene, appended and fsynced as scenes
finish) and the run record (workflow and settings) that a re-run must match to resume."""
from __future__ import annotations

import json
import os
import threading

from .errors import ClientError

MANIFEST = "manifest.jsonl"
RUN_RECORD = "lumix_run.json"


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Manifest:
    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, MANIFEST)
        self.lock = threading.Lock()
        self.records: dict[str, dict] = {}

    def load(self) -> dict[str, dict]:
        """The latest record per scene. A last line cut off by a killed client is ignored."""
        if not os.path.exists(self.path):
            return self.records
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"cannot read the manifest {self.path}: {exc}") from None
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                self.records[record["scene"]] = record
            except (ValueError, KeyError, TypeError):
                if number != len(lines):
                    raise ClientError(f"{self.path} line {number} is not a manifest record; fix or move the "
                                      "file (or use another --out)") from None
        return self.records

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.lock:
            self.records[record["scene"]] = record
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def compact(self, order: list[str]) -> None:
        """Rewrite as one record per scene in batch order (atomically): the same batch gives the same file."""
        with self.lock:
            index = {scene: i for i, scene in enumerate(order)}
            scenes = sorted(self.records, key=lambda s: (index.get(s, len(index)), s))
            write_atomic(self.path, "".join(json.dumps(self.records[s], sort_keys=True) + "\n" for s in scenes))


def read_run_record(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, RUN_RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read {path} ({exc}); move it away or use another --out") from None


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
