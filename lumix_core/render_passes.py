"""Render passes from 3D software (Blender, Houdini, Unreal, ...) converted into LumiX's map conventions
(lumix_core.maps.ENCODINGS): depth as relative distance from the camera centre (0 nearest, 1 farthest),
normals as camera-space unit vectors in OpenGL axes stored as rgb = (n + 1) / 2.

Arrays are numpy float64, [H, W] for depth and [H, W, 3] for normals. The camera is the pinhole of the
consistency metrics (lumix_core.conventions.camera_rays): horizontal field of view `fov_degrees`,
principal point at the image centre, OpenGL axes (looking down -z, +y up).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .conventions import camera_rays

# What a depth pass holds.
DEPTH_Z = "planar Z (scene units)"
DEPTH_DISTANCE = "ray distance (scene units)"
DEPTH_Z_NORMALISED = "Z 0..1, near=0 far=1"
DEPTH_Z_NORMALISED_NEAR_BRIGHT = "Z 0..1, near=1 far=0"
DEPTH_LUMIX = "LumiX relative depth"
DEPTH_ENCODINGS = (DEPTH_Z, DEPTH_DISTANCE, DEPTH_Z_NORMALISED, DEPTH_Z_NORMALISED_NEAR_BRIGHT, DEPTH_LUMIX)
NORMALISED_Z = (DEPTH_Z_NORMALISED, DEPTH_Z_NORMALISED_NEAR_BRIGHT)

# Which distances LumiX's 0 and 1 stand for.
RANGE_IMAGE = "image's nearest..farthest"
RANGE_NEAR_FAR = "near..far"
DEPTH_RANGES = (RANGE_IMAGE, RANGE_NEAR_FAR)

# Metric depth at or above this (or not finite) is background: Blender writes 1e10 where no surface was hit.
BACKGROUND_DEPTH = 1e9

NORMAL_CAMERA_OPENGL = "camera, OpenGL (+y up)"
NORMAL_CAMERA_DIRECTX = "camera, DirectX (+y down)"
NORMAL_WORLD = "world (camera rotation below)"
NORMAL_SPACES = (NORMAL_CAMERA_OPENGL, NORMAL_CAMERA_DIRECTX, NORMAL_WORLD)

VALUES_AUTO = "auto"
VALUES_RAW = "vectors -1..1"
VALUES_ENCODED = "(n + 1) / 2"
NORMAL_VALUES = (VALUES_AUTO, VALUES_RAW, VALUES_ENCODED)

FILE_EXTENSIONS = (".exr", ".png", ".tif", ".tiff")


# ---- reading files at full precision -----------------------------------------------------------

@dataclass
class PassFile:
    channels: dict[str, np.ndarray]  # name -> float64 [H, W]
    is_exr: bool
    label: str  # what messages call the file (never a path outside ComfyUI's folders)


def read_pass_file(path: str, label: str) -> PassFile:
    """A float EXR (every channel, any layer names), a PNG (8 or 16 bit) or a TIFF, as float64 channels:
    EXR values as stored, integer images divided by their maximum (255 or 65535)."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".exr":
        try:
            import OpenEXR
        except ImportError:
            raise ImportError(f"{label} is an EXR file: reading it needs the optional 'openexr' package (run "
                              "`python -m pip install openexr` with ComfyUI's Python, then restart ComfyUI), or "
                              "save the pass as a 16-bit PNG.") from None
        try:
            with OpenEXR.File(path, separate_channels=True) as f:
                parts = {name: np.array(c.pixels, dtype=np.float64) for name, c in f.channels().items()}
        except Exception as exc:  # the reader raises RuntimeError/ValueError for damaged files
            raise ValueError(f"{label} could not be read as an EXR file ({type(exc).__name__}).") from None
        channels = {}
        for name, pixels in parts.items():  # a channel with sub-samples comes back [H, W, k]
            if pixels.ndim != 2:
                raise ValueError(f"{label}: channel {name!r} is not a plain scanline channel ({pixels.shape}).")
            channels[name] = pixels
        return PassFile(channels, True, label)
    if extension == ".png":
        import png  # pypng: 16-bit RGB, which Pillow reads as 8 bit

        try:
            width, height, rows, info = png.Reader(filename=path).asDirect()
            data = np.array([np.asarray(row) for row in rows], dtype=np.float64)
        except Exception as exc:
            raise ValueError(f"{label} could not be read as a PNG file ({type(exc).__name__}).") from None
        planes = info["planes"]
        data = data.reshape(height, width, planes) / float(2 ** info["bitdepth"] - 1)
        names = {1: ("Y",), 2: ("Y", "A"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}[planes]
        return PassFile({n: data[..., k] for k, n in enumerate(names)}, False, label)
    if extension in (".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(path) as image:
                mode = image.mode
                data = np.asarray(image).astype(np.float64)
        except Exception as exc:
            raise ValueError(f"{label} could not be read as a TIFF file ({type(exc).__name__}).") from None
        if mode.startswith("I;16"):
            data = data / 65535.0
        elif mode in ("L", "LA", "RGB", "RGBA", "P"):
            data = data / 255.0
        elif mode != "F":
            raise ValueError(f"{label}: TIFF mode {mode} is not supported; save the pass as EXR or 16-bit PNG.")
        if data.ndim == 2:
            return PassFile({"Y": data}, False, label)
        names = ("R", "G", "B", "A")[:data.shape[2]]
        return PassFile({n: data[..., k] for k, n in enumerate(names)}, False, label)
    raise ValueError(f"{label}: unsupported file type {extension!r}; use {', '.join(FILE_EXTENSIONS)}.")


def _split(name: str) -> tuple[str, str]:
    layer, _, channel = name.rpartition(".")
    return layer.lower(), channel


def depth_channel(passes: PassFile) -> np.ndarray:
    """The depth values of a pass file: a `Z` channel (also `<layer>.Depth.Z`, `depth.Z`), else the one
    grey channel, else the red channel of an RGB image."""
    channels = passes.channels
    z = [n for n in channels if _split(n)[1] in ("Z", "z") and ("depth" in _split(n)[0] or _split(n)[0] in ("", "z"))]
    z = z or [n for n in channels if _split(n)[1] in ("Z", "z") and "normal" not in _split(n)[0]]
    if z:
        return channels[sorted(z, key=len)[0]]
    for name in ("Y", "V", "R", "depth", "Depth"):
        if name in channels:
            return channels[name]
    colour = [n for n in channels if n not in ("A",)]
    if len(colour) == 1:
        return channels[colour[0]]
    raise ValueError(f"{passes.label} has no depth channel I recognise (channels: {', '.join(sorted(channels))}); "
                     "expected Z, <layer>.Depth.Z, a grey image or R.")


def normal_channels(passes: PassFile) -> np.ndarray:
    """[H, W, 3] from `<layer>.Normal.X/Y/Z` (also `normal.X`, `N.X`), else R, G, B."""
    channels = passes.channels
    for axes in (("X", "Y", "Z"), ("x", "y", "z"), ("R", "G", "B")):
        layers = {}
        for name in channels:
            layer, channel = name.rpartition(".")[0], name.rpartition(".")[2]
            last = layer.rpartition(".")[2].lower()
            if channel in axes and ("normal" in last or last == "n"):
                layers.setdefault(layer, set()).add(channel)
        for layer in sorted(layers, key=len):
            if layers[layer] == set(axes):
                return np.stack([channels[f"{layer}.{a}"] for a in axes], -1)
    if {"R", "G", "B"} <= set(channels):
        return np.stack([channels[c] for c in "RGB"], -1)
    raise ValueError(f"{passes.label} has no normal channels I recognise (channels: {', '.join(sorted(channels))}); "
                     "expected <layer>.Normal.X/Y/Z, normal.X/Y/Z or R, G, B.")


# ---- depth ----------------------------------------------------------------------------------------

def ray_cosines(height: int, width: int, fov_degrees: float) -> np.ndarray:
    """[H, W] cosine between each pixel's ray and the optical axis: planar Z = distance x cosine."""
    rays = camera_rays(height, width, fov_degrees, dtype=torch.float64)
    return (-rays[..., 2]).numpy()


@dataclass
class DepthResult:
    value: np.ndarray  # [H, W] LumiX relative distance, 0..1
    distance_range: tuple[float, float]  # the distances (scene units) that 0 and 1 stand for
    background: int  # pixels with no surface (non-finite, <= 0, or >= BACKGROUND_DEPTH), set to 1


def depth_to_lumix(depth: np.ndarray, encoding: str, fov_degrees: float, depth_range: str = RANGE_IMAGE,
                   near: float = 0.1, far: float = 100.0, no_surface: np.ndarray | None = None) -> DepthResult:
    """A depth pass [H, W] -> LumiX relative distance from the camera centre.

    Planar Z is turned into distance along each pixel's ray (Z / cos); normalised Z is first mapped back
    to scene units with `near`/`far` (which it needs). The distances are then normalised to 0..1 over the
    image's own nearest..farthest surface (LumiX's convention) or over near..far (clamped). `no_surface`
    [H, W] bool marks more pixels without a surface (e.g. where the normal pass is empty: some renderers
    write the far clip distance there, which would otherwise count as the farthest surface)."""
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"unknown depth encoding {encoding!r}; choose one of: {'; '.join(DEPTH_ENCODINGS)}")
    if depth_range not in DEPTH_RANGES:
        raise ValueError(f"unknown depth range {depth_range!r}; choose one of: {'; '.join(DEPTH_RANGES)}")
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2 or min(depth.shape) < 1:
        raise ValueError(f"a depth pass is one channel [height, width], got shape {depth.shape}")
    uses_near_far = encoding in NORMALISED_Z or depth_range == RANGE_NEAR_FAR
    if uses_near_far and not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
        raise ValueError(f"near ({near}) and far ({far}) must be finite with 0 < near < far (scene units, the "
                         "camera's clip distances or the range the pass was normalised over).")
    if encoding == DEPTH_LUMIX:
        distance, background = depth.copy(), ~np.isfinite(depth)
    elif encoding in NORMALISED_Z:
        background = ~np.isfinite(depth)
        v = np.where(background, 1.0, depth)
        v = 1.0 - v if encoding == DEPTH_Z_NORMALISED_NEAR_BRIGHT else v
        background |= v >= 1.0  # at or beyond the far clip: nothing was hit there
        distance = (near + v * (far - near)) / ray_cosines(*depth.shape, fov_degrees)
    else:
        background = ~np.isfinite(depth) | (depth <= 0) | (depth >= BACKGROUND_DEPTH)
        distance = np.where(background, 0.0, depth)
        if encoding == DEPTH_Z:
            distance = distance / ray_cosines(*depth.shape, fov_degrees)
    if no_surface is not None:
        if np.shape(no_surface) != depth.shape:
            raise ValueError(f"the background mask {np.shape(no_surface)} does not match the depth pass {depth.shape}")
        background = background | np.asarray(no_surface, dtype=bool)
    surface = ~background
    if not surface.any():
        raise ValueError("the depth pass holds no surface (every pixel is background: not finite, <= 0 or >= 1e9, "
                         "or at the far clip); check the pass and its encoding.")
    if depth_range == RANGE_NEAR_FAR and encoding != DEPTH_LUMIX:
        low, high = float(near), float(far)
    else:
        low, high = float(distance[surface].min()), float(distance[surface].max())
    span = high - low
    value = np.clip((distance - low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(distance)
    value[background] = 1.0
    return DepthResult(value, (low, high), int(background.sum()))


# ---- normals ------------------------------------------------------------------------------------

def euler_xyz_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation of an XYZ Euler in degrees (X applied first, then Y, then Z: R = Rz Ry Rx), the order of
    Blender's default rotation mode and Houdini's default Rx Ry Rz."""
    x, y, z = (math.radians(a) for a in (rx, ry, rz))
    rot_x = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    rot_y = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rot_z = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


@dataclass
class NormalResult:
    image: np.ndarray  # [H, W, 3] LumiX encoding, rgb = (n + 1) / 2 of unit camera-space OpenGL normals
    values: str  # VALUES_RAW or VALUES_ENCODED: how the input was read
    empty: int  # pixels with no normal (zero length: background), set to face the camera
    empty_mask: np.ndarray  # [H, W] bool: those pixels
    away: int  # pixels whose normal points away from the camera (back faces, or a wrong convention)


def normals_to_lumix(normals: np.ndarray, space: str, values: str = VALUES_AUTO, is_exr: bool = False,
                     camera_rotation_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> NormalResult:
    """A normal pass [H, W, 3] -> LumiX's normal image.

    World-space normals are turned into camera space with the camera's rotation (camera-to-world, the
    camera looking down its local -Z with +Y up, as in Blender and Houdini): n_camera = R^T n_world."""
    if space not in NORMAL_SPACES:
        raise ValueError(f"unknown normal space {space!r}; choose one of: {'; '.join(NORMAL_SPACES)}")
    if values not in NORMAL_VALUES:
        raise ValueError(f"unknown normal values {values!r}; choose one of: {'; '.join(NORMAL_VALUES)}")
    n = np.asarray(normals, dtype=np.float64)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"a normal pass has three channels [height, width, 3], got shape {n.shape}")
    if not np.isfinite(n).all():
        raise ValueError(f"the normal pass holds {int((~np.isfinite(n)).sum())} NaN/Inf values; re-render or "
                         "re-export it.")
    if values == VALUES_AUTO:
        values = VALUES_RAW if is_exr or n.min() < -0.01 else VALUES_ENCODED
    if values == VALUES_ENCODED:
        if n.min() < -1e-6 or n.max() > 1 + 1e-6:
            raise ValueError(f"normal values read as (n + 1) / 2 must lie in 0..1, found {n.min():.3g}..{n.max():.3g}; "
                             f"choose normal values '{VALUES_RAW}'.")
        empty_mask = np.linalg.norm(n, axis=-1) < 1e-6  # black: no surface (before decoding)
        n = n * 2.0 - 1.0
    else:
        empty_mask = np.zeros(n.shape[:2], dtype=bool)
    if space == NORMAL_CAMERA_DIRECTX:
        n = n * np.array([1.0, -1.0, 1.0])
    elif space == NORMAL_WORLD:
        rotation = euler_xyz_matrix(*camera_rotation_xyz)
        n = n @ rotation  # row vectors: (R^T n)^T = n^T R
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    empty_mask |= length[..., 0] < 1e-6
    n = np.where(empty_mask[..., None], np.array([0.0, 0.0, 1.0]), n / np.maximum(length, 1e-12))
    away = int(((n[..., 2] < -0.05) & ~empty_mask).sum())
    return NormalResult(np.clip((n + 1.0) * 0.5, 0.0, 1.0), values, int(empty_mask.sum()), empty_mask, away)
