"""Writing maps losslessly: 16-bit PNG (through pypng; Pillow cannot write 16-bit RGB), float32
OpenEXR (through the optional `openexr` package), folders that never overwrite, JSON sidecars."""
from __future__ import annotations

import json
import os

import numpy as np

from .conventions import decode_depth, decode_normals, srgb_to_linear
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
    with open(path, "wb") as f:
        writer.write(f, pixels.reshape(height, -1).tolist())


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
    with OpenEXR.File(header, data) as f:
        f.write(path)


def linear_channels(name: str, image) -> dict[str, np.ndarray]:
    """What the EXR of a map holds: linear RGB for display maps, relative distance for depth, unit
    vectors (-1..1) for normals. `image` is a torch [H, W, C] tensor in 0..1."""
    encoding = next(m.encoding for m in MAPS if m.name == name)
    if encoding == "srgb":
        return {"RGB": srgb_to_linear(image[..., :3].double()).float().cpu().numpy()}
    if encoding == "depth":
        return {"Y": decode_depth(image.double()).float().cpu().numpy()}
    return {"RGB": decode_normals(image.double()).float().cpu().numpy()}


def new_folder(root: str, prefix: str) -> str:
    """Create and return root/prefix_NNNNN with the first free number: nothing is ever overwritten."""
    base = os.path.join(root, prefix)
    parent = os.path.dirname(base)
    os.makedirs(parent, exist_ok=True)
    stem = os.path.basename(base)
    taken = [int(n[len(stem) + 1:]) for n in os.listdir(parent)
             if n.startswith(stem + "_") and n[len(stem) + 1:].isdigit()]
    number = max(taken, default=0) + 1
    while True:
        path = f"{base}_{number:05d}"
        try:
            os.makedirs(path)
            return path
        except FileExistsError:  # another save took it meanwhile
            number += 1


def write_sidecar(path: str, data: dict) -> None:
    with open(path, "x") as f:  # "x": refuse to overwrite
        json.dump(data, f, indent=2, sort_keys=True, default=float)
