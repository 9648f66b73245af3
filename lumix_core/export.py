"""Writing maps losslessly: 16-bit PNG (through pypng; Pillow cannot write 16-bit RGB), float32
OpenEXR (through the optional `openexr` package), folders that never overwrite, JSON sidecars.

Nothing appears half-written under its final name: each file is written to a temporary name in the
same folder and renamed into place when complete, and a whole scene is written into a temporary
folder that is renamed to its numbered name only when every file is there (removed on failure).
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import shutil
import tempfile

import numpy as np
import torch

from .conventions import decode_depth, decode_normals, srgb_to_linear
from .given_maps import check_range
from .maps import MAPS

EXR_INSTALL_HINT = ("EXR export needs the optional 'openexr' package: run `python -m pip install openexr` "
                    "with ComfyUI's Python, then restart ComfyUI. PNGs were saved without it.")


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Values in 0..1 -> uint16 (rounded, clamped)."""
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)


def write_png16(path: str, pixels: np.ndarray) -> None:
    """uint16 [H, W] (grey) or [H, W, 3] (RGB) to a 16-bit PNG."""
    import png  # pypng

    if pixels.dtype != np.uint16 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"write_png16 takes uint16 [H, W] or [H, W, 3], got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    writer = png.Writer(width, height, greyscale=pixels.ndim == 2, bitdepth=16)
    buffer = io.BytesIO()
    writer.write(buffer, pixels.reshape(height, -1).tolist())
    write_bytes(path, buffer.getvalue())


def exr_available() -> bool:
    try:
        import OpenEXR  # noqa: F401
    except ImportError:
        return False
    return True


def write_exr(path: str, channels: dict[str, np.ndarray]) -> None:
    """float32 channels to a ZIP-compressed scanline OpenEXR: {"RGB": [H,W,3]} or {"Y": [H,W]}."""
    import OpenEXR

    data = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in channels.items()}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    shapes = {name: value.shape for name, value in data.items()}  # OpenEXR.File turns `data` into Channels
    with OpenEXR.File(header, data) as f, atomic_path(path) as temporary:
        f.write(temporary)
        _check_exr_written(temporary, path, shapes)


def _check_exr_written(temporary: str, path: str, expected: dict[str, tuple], separate_channels: bool = False) -> None:
    """OpenEXR's writer does not report a failed write (on a full disk it leaves a short file and no
    error), so the file is read back before it takes its name; a file that does not read back whole
    is an OSError like any other failed write. `separate_channels`: read every channel on its own (a
    multilayer file), not grouped into RGB."""
    import OpenEXR

    try:
        with OpenEXR.File(temporary, separate_channels=separate_channels) as written:
            shapes = {name: channel.pixels.shape for name, channel in written.channels().items()}
    except Exception as exc:  # the reader raises RuntimeError or ValueError for a short file
        raise OSError(errno.EIO, f"the EXR writer left an unreadable {os.path.basename(path)} ({exc}); the disk "
                                 "may be full") from None
    if shapes != expected:
        raise OSError(errno.EIO, f"the EXR writer left an incomplete {os.path.basename(path)} (channels {shapes}); "
                                 "the disk may be full")


def linear_channels(name: str, image) -> dict[str, np.ndarray]:
    """What the EXR of a map holds: linear RGB for display maps, relative distance for depth, unit
    vectors (-1..1) for normals. `image` is a torch [H, W, C] tensor in 0..1."""
    encoding = next(m.encoding for m in MAPS if m.name == name)
    if encoding == "srgb":
        return {"RGB": srgb_to_linear(image[..., :3].double()).float().cpu().numpy()}
    if encoding == "depth":
        return {"Y": decode_depth(image.double()).float().cpu().numpy()}
    return {"RGB": decode_normals(image.double()).float().cpu().numpy()}


def saveable_map(name: str, batch) -> tuple[torch.Tensor, list[int]]:
    """A map batch as float32 [n, H, W, 3] ready to write, and its count of non-finite values per scene.

    Grey (1 channel) is repeated to RGB, alpha (2nd or 4th channel) dropped; other channel counts and
    empty images are refused before anything is written. NaN and -Inf are written as 0, +Inf as 1:
    the files stay readable and the counts are reported (UI text and lumix.json), never hidden.
    """
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"LumiX Save Maps: the {name} input is not an IMAGE batch [images, height, width, "
                         f"channels] (got {shape}); connect an IMAGE output.")
    n, height, width, channels = batch.shape
    if n == 0 or height == 0 or width == 0:
        raise ValueError(f"LumiX Save Maps: the {name} input is empty ({n} images of {width}x{height} pixels); "
                         "nothing was saved. Connect the sampler's map outputs.")
    if channels in (1, 2):
        rgb = batch[..., :1].expand(n, height, width, 3)
    elif channels in (3, 4):
        rgb = batch[..., :3]
    else:
        raise ValueError(f"LumiX Save Maps: the {name} input has {channels} channels; Save Maps writes grey (1), "
                         "grey+alpha (2), RGB (3) or RGBA (4) images (alpha is dropped). Nothing was saved.")
    rgb = rgb.float()
    bad = (~torch.isfinite(rgb)).flatten(1).sum(1).tolist()
    if any(bad):
        rgb = torch.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0)
    # a 0-255 or -1..1 image would be clipped to white/black without a word
    check_range(f"LumiX Save Maps: the {name} map", rgb, "Save Maps")
    return rgb.contiguous(), [int(b) for b in bad]


MAX_NAME_BYTES = 255 - len("_00000.") - 8  # a file system's name limit, less the scene number and temp suffix


def check_prefix(prefix: str) -> None:
    """Refuses a Save Maps filename_prefix no file system takes (control characters such as NUL, or a
    folder/file name too long once the scene number is added), before anything is written."""
    bad = sorted({repr(c) for c in prefix if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"LumiX Save Maps: filename_prefix {prefix!r} contains control character(s) "
                         f"{', '.join(bad)}; use letters, digits, '_', '-' and '/' for subfolders.")
    for part in prefix.replace("\\", "/").split("/"):
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"LumiX Save Maps: filename_prefix has a name of {len(part.encode('utf-8'))} bytes "
                             f"({part[:20]}...); names may hold at most {MAX_NAME_BYTES} bytes here. Shorten it.")


def strict_json_value(value, path: str = "", replaced: list | None = None):
    """`value` with every non-finite float replaced by None (JSON has no NaN/Inf); the paths of the
    replaced numbers are appended to `replaced`. Tuples become lists; numpy/torch scalars become floats."""
    replaced = [] if replaced is None else replaced
    if isinstance(value, dict):
        return {str(k): strict_json_value(v, f"{path}.{k}" if path else str(k), replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v, f"{path}[{i}]", replaced) for i, v in enumerate(value)]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    number = float(value)
    if not math.isfinite(number):
        replaced.append(path)
        return None
    return number


def sidecar_json(data: dict) -> str:
    """Strict JSON text (json.dumps(allow_nan=False)): non-finite numbers become null and their paths
    are listed under "non_finite_numbers" so a reader knows a null was a NaN or Inf."""
    replaced: list[str] = []
    clean = strict_json_value(data, replaced=replaced)
    if replaced:
        clean["non_finite_numbers"] = replaced
    return json.dumps(clean, indent=2, sort_keys=True, allow_nan=False)


def write_sidecar(path: str, data: dict) -> None:
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; LumiX never overwrites a sidecar.")
    write_bytes(path, sidecar_json(data).encode())


# ---- writing without half-written files --------------------------------------------------------

def open_for_writing(path: str):
    """The one place files are opened for writing (tests patch it to simulate a full disk)."""
    return open(path, "xb")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path`; renamed to `path` when the block completes, else removed."""
    folder, name = os.path.split(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder or ".")
    os.close(handle)
    os.unlink(temporary)  # the writer creates it
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """`data` to `path` through a temporary file: `path` is complete or absent."""
    with atomic_path(path) as temporary:
        with open_for_writing(temporary) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _next_free_name(root: str, prefix: str) -> str:
    base = os.path.join(root, prefix)
    parent, stem = os.path.split(base)
    taken = [int(n[len(stem) + 1:]) for n in os.listdir(parent)
             if n.startswith(stem + "_") and n[len(stem) + 1:].isdigit()]
    return f"{base}_{max(taken, default=0) + 1:05d}"


@contextlib.contextmanager
def scene_folder(root: str, prefix: str):
    """Yields a new temporary folder beside root/prefix_NNNNN; when the block completes it is renamed
    to the first free number (never over an existing folder), otherwise it is removed with its
    content. The final path is set on the yielded object's `.path` after the block."""
    base = os.path.join(root, prefix)
    parent, stem = os.path.split(base)
    os.makedirs(parent, exist_ok=True)
    scene = _SceneFolder(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".part", dir=parent))
    try:
        yield scene
        while True:
            final = _next_free_name(root, prefix)
            if os.path.exists(final):  # taken meanwhile by another save
                continue
            try:
                os.rename(scene.temporary, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            scene.path = final
            return
    except BaseException:
        shutil.rmtree(scene.temporary, ignore_errors=True)
        raise


class _SceneFolder:
    def __init__(self, temporary: str):
        self.temporary, self.path = temporary, None
