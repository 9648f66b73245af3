"""One multilayer OpenEXR per scene, for compositing and 3D software (Blender, Nuke).

Layers are named `<map>.<channel>` in one scanline part, the layout Blender's and Nuke's readers split
into layers: `albedo.R/G/B`, `irradiance.R/G/B`, `color.R/G/B` (linear, i.e. the sRGB decoding of the
maps), `depth.Z` (LumiX's relative distance from the camera centre, 0 nearest, 1 farthest) and
`normal.X/Y/Z` (unit vectors, camera space, OpenGL axes). Every channel is float32. The header says
how to read them: the conventions, the horizontal field of view and the depth range in the file.
"""
from __future__ import annotations

import numpy as np
import torch

from .conventions import decode_depth, decode_normals, srgb_to_linear
from .export import _check_exr_written, atomic_path
from .maps import ENCODINGS, MAPS

# channel suffixes per map encoding
CHANNELS = {"srgb": ("R", "G", "B"), "depth": ("Z",), "normal": ("X", "Y", "Z")}
HEADER_PREFIX = "lumix:"


def layer_channels(name: str, image: torch.Tensor) -> dict[str, np.ndarray]:
    """`{"<name>.<channel>": float32 [H, W]}` for one map; `image` is an IMAGE [H, W, >=3] in 0..1."""
    encoding = next(m.encoding for m in MAPS if m.name == name)
    image = image.double()
    if encoding == "srgb":
        values = srgb_to_linear(image[..., :3])
    elif encoding == "depth":
        values = decode_depth(image)[..., None]
    else:
        values = decode_normals(image)
    values = values.float().cpu().numpy()
    return {f"{name}.{suffix}": np.ascontiguousarray(values[..., k]) for k, suffix in enumerate(CHANNELS[encoding])}


def header_attributes(maps: dict[str, torch.Tensor], fov_degrees: float) -> dict:
    """The `lumix:*` header attributes: conventions (text), field of view, and the depth range."""
    attributes = {
        f"{HEADER_PREFIX}format": "lumix-maps multilayer 1",
        f"{HEADER_PREFIX}fovDegrees": float(fov_degrees),
        f"{HEADER_PREFIX}fovAxis": "horizontal (pinhole, principal point at the image centre)",
        f"{HEADER_PREFIX}colorLayers": "albedo, irradiance, color: linear RGB (the sRGB decoding of the PNG maps), "
                                       "Rec.709/sRGB primaries",
        f"{HEADER_PREFIX}depthConvention": "depth.Z: " + ENCODINGS["depth"],
        f"{HEADER_PREFIX}normalConvention": "normal.X/Y/Z: unit vector in camera space, OpenGL axes (+x right, "
                                            "+y up, +z towards the camera); DirectX: negate Y",
    }
    if "depth" in maps:
        depth = decode_depth(maps["depth"].double())
        low, high = float(depth.min()), float(depth.max())
        attributes[f"{HEADER_PREFIX}depthRange"] = f"{low:.9g} {high:.9g}"
        attributes[f"{HEADER_PREFIX}depthUnits"] = "relative (not metric): 0 nearest point of the scene, 1 farthest"
    return attributes


def write_multilayer_exr(path: str, maps: dict[str, torch.Tensor], fov_degrees: float) -> list[str]:
    """Writes one scene's maps (IMAGE [H, W, C] each, same size) to `path` atomically; returns the
    channel names in the order written. Needs the optional `openexr` package."""
    import OpenEXR

    channels: dict[str, np.ndarray] = {}
    for spec in MAPS:  # registry order: albedo, irradiance, color, depth, normal
        if spec.name in maps:
            channels.update(layer_channels(spec.name, maps[spec.name]))
    if not channels:
        raise ValueError("write_multilayer_exr needs at least one map")
    shapes = {name: value.shape for name, value in channels.items()}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage,
              **header_attributes(maps, fov_degrees)}
    names = list(channels)
    with OpenEXR.File(header, channels) as f, atomic_path(path) as temporary:
        f.write(temporary)
        _check_exr_written(temporary, path, shapes, separate_channels=True)
    return names
