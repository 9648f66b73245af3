"""A disk that fills up, for the atomic-writing tests (host-free and host), and a strict JSON reader."""
import errno
import json


class FullDisk:
    """open_for_writing replacement: counts the bytes written through it (`written`); with a `limit`,
    files accept that many bytes in all, then raise ENOSPC after a partial write."""

    def __init__(self, limit=None):
        self.limit, self.written = limit, 0

    def __call__(self, path):
        return _File(open(path, "xb"), self)


class _File:
    def __init__(self, f, disk):
        self.f, self.disk = f, disk

    def write(self, data):
        if self.disk.limit is not None and self.disk.written + len(data) > self.disk.limit:
            self.f.write(data[:self.disk.limit - self.disk.written])
            self.disk.written = self.disk.limit
            raise OSError(errno.ENOSPC, "No space left on device")
        self.disk.written += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def strict_loads(text):
    """json.loads refusing NaN/Infinity, which strict JSON readers reject."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)
