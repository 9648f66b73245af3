"""Scene folders: downloaded into a hidden staging folder under temporary names, checked, and moved
into place whole; never over an existing folder unless --overwrite. Also the photo's pixel size."""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct

from .errors import ClientError, ServerFailure

STAGING = ".lumix_partial"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
SIDECAR = "lumix.json"
MAX_SIDECAR_BYTES = 4 << 20  # lumix.json is a few kilobytes; it is parsed in memory
MAX_FILES = 64  # LumiX Save Maps writes about a dozen files per scene
MAX_NAME_BYTES = 200  # with ".part" well under the 255 bytes most file systems allow
WINDOWS_FORBIDDEN = set('<>:"/\\|?*')  # a scene folder must copy to any file system
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


LOCK = ".lumix_lock"


def lock_out(out_dir: str):
    """An exclusive lock on the output folder for this process's lifetime (POSIX; elsewhere none):
    two clients writing into one folder would clear each other's staging files."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(os.path.join(out_dir, LOCK), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise ClientError(f"another lumix_client (pid {holder}) is writing into {out_dir}; wait for it or use "
                          "another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def prepare_out(out_dir: str):
    """Create --out, lock it and clear the staging left by a killed run; the lock handle (keep it)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ClientError(f"--out {out_dir} is a file, not a folder; give a folder path")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ClientError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    lock = lock_out(out_dir)
    try:
        shutil.rmtree(os.path.join(out_dir, STAGING), ignore_errors=True)  # leftovers of a killed run: ours
        os.makedirs(os.path.join(out_dir, STAGING))
    except OSError as exc:
        raise ClientError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    probe = os.path.join(out_dir, STAGING, ".write_test")
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ClientError(f"cannot write into {out_dir}: {exc.strerror}") from None
    return lock


def staging_folder(out_dir: str, scene_id: str) -> str:
    path = os.path.join(out_dir, STAGING, scene_id)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def name_problem(name) -> str | None:
    """Why a file name a server sent cannot become a file here (None when it can)."""
    if not isinstance(name, str) or not name:
        return "not a name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        return "not valid Unicode"
    if not name.isprintable():
        return "a control character"
    if "/" in name or "\\" in name:
        return "a path separator"
    if any(c in WINDOWS_FORBIDDEN for c in name):
        return "one of <>:\"|?*, which Windows refuses"
    if size > MAX_NAME_BYTES:
        return f"{size} bytes long, at most {MAX_NAME_BYTES}"
    if name.startswith(".") or name.endswith((".", " ", ".part")):
        return "hidden, temporary or ending in a dot or space"
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        return "a device name on Windows"
    return None


def check_file_list(files, server_name: str) -> list[str]:
    """The scene's file names from lumix.json, each one a plain file name this file system can hold;
    otherwise a ServerFailure that blames the server (its output is unusable, not the local disk)."""
    if not isinstance(files, list) or not files:
        raise ServerFailure(f"{server_name}: the scene's lumix.json lists no files")
    if len(files) > MAX_FILES:
        raise ServerFailure(f"{server_name}: the scene's lumix.json lists {len(files)} files (at most {MAX_FILES})")
    for name in files:
        problem = name_problem(name)
        if problem:
            shown = repr(name)[:60] + ("…" if len(repr(name)) > 60 else "")
            raise ServerFailure(f"{server_name} sent a file name the local file system cannot hold ({problem}): "
                                f"{''.join(c if c.isprintable() else '?' for c in shown)}")
    if len(set(files)) != len(files) or SIDECAR in files:
        raise ServerFailure(f"{server_name}: the scene's lumix.json lists a file twice")
    return files


def check_complete(path: str, data_name: str) -> None:
    """A PNG must end with its IEND chunk, a JSON file must parse: a cut-off body is a ServerFailure."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 12))
        tail = f.read()
    if data_name.endswith(".png") and (head != PNG_SIGNATURE or tail != PNG_END):
        raise ServerFailure(f"the download of {data_name} is cut off or not a PNG ({size} bytes)")
    if data_name.endswith(".json"):
        try:
            if size > MAX_SIDECAR_BYTES:
                raise ValueError
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ServerFailure(f"the download of {data_name} is cut off or not JSON ({size} bytes)") from None


def fetch_file(download, ref: dict, folder: str, name: str, server_name: str = "", limit: int = 1 << 62) -> str:
    """Download (at most `limit` bytes) into <name>.part, check, fsync, rename to <name>."""
    final = os.path.join(folder, name)
    tmp = final + ".part"
    try:
        f = open(tmp, "wb")
    except (OSError, ValueError) as exc:  # a name the checks let through but this file system refuses
        if isinstance(exc, OSError) and exc.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
            raise
        raise ServerFailure(f"{server_name} sent a file name the local file system cannot hold "
                            f"({getattr(exc, 'strerror', None) or exc}): {name[:60]!r}") from None
    with f:
        download(ref, f, limit)
        f.flush()
        os.fsync(f.fileno())
    try:
        check_complete(tmp, name)
    except ServerFailure as exc:
        raise ServerFailure(f"{server_name}: {exc}" if server_name else str(exc)) from None
    os.replace(tmp, final)
    return final


def commit(out_dir: str, scene_id: str, staged: str, overwrite: bool) -> str:
    """Move the complete staged folder to <out>/<scene id>."""
    final = os.path.join(out_dir, scene_id)
    if os.path.lexists(final):
        if not overwrite:
            raise ClientError(f"{final} already exists; nothing is overwritten without --overwrite")
        old = os.path.join(out_dir, STAGING, scene_id + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    return final


def scene_sidecar(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, SIDECAR), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, RecursionError):
        return None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of a PNG, JPEG, GIF, BMP or WebP file from its header (standard library only)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise ClientError(f"cannot read the photo {path}: {exc.strerror}") from None
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return w, abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = data[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + length
    raise ClientError(f"cannot read the size of {path} (not a PNG, JPEG, GIF, BMP or WebP); give --width and --height")


def size_from_photo(photo_size: tuple[int, int], area: int, multiple: int = 16) -> tuple[int, int]:
    """The photo's aspect ratio within `area` pixels, each side a multiple of 16 rounded down (at least
    16): the rule of the sampler's own 'from the given map' size, so both agree."""
    w, h = photo_size
    width = (area * w / h) ** 0.5
    height = width * h / w
    return tuple(max(multiple, int(side / multiple + 1e-9) * multiple) for side in (width, height))
