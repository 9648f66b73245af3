"""A Lambertian preview from albedo and normals under one directional light.

Light direction in camera space (OpenGL axes): elevation is the angle out of the image plane
towards the viewer (90 = light from the camera), azimuth the direction within the image plane
(0 = from the right, 90 = from above).
"""
from __future__ import annotations

import math

import torch

from .conventions import decode_normals, linear_to_srgb, srgb_to_linear


def light_direction(azimuth_degrees: float, elevation_degrees: float, dtype=torch.float64) -> torch.Tensor:
    az, el = math.radians(azimuth_degrees), math.radians(elevation_degrees)
    return torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=dtype)


def parse_hex_color(text: str) -> tuple[float, float, float]:
    value = text.strip().lstrip("#")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"light colour {text!r} is not a hex colour like #ffffff or #fa8")
    return tuple(int(value[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


def relight(albedo: torch.Tensor, normal: torch.Tensor, azimuth: float, elevation: float,
            light_rgb=(1.0, 1.0, 1.0), intensity: float = 1.0, ambient: float = 0.1,
            irradiance: torch.Tensor | None = None) -> torch.Tensor:
    """sRGB preview [..., H, W, 3] of linear(albedo) * (intensity * light * max(n.l, 0) + ambient term).

    The ambient term is `ambient` times the generated irradiance (linear) where one is given,
    else `ambient` times white.
    """
    if albedo.shape[:-1] != normal.shape[:-1]:
        raise ValueError(f"albedo {tuple(albedo.shape)} and normal {tuple(normal.shape)} differ in size; "
                         "relight maps of the same scene and size")
    dtype = torch.float64 if albedo.dtype == torch.float64 else torch.float32
    a = srgb_to_linear(albedo[..., :3].to(dtype))
    n = decode_normals(normal[..., :3].to(dtype))
    l_dir = light_direction(azimuth, elevation, dtype).to(n.device)
    lambert = (n * l_dir).sum(-1, keepdim=True).clamp_min(0.0)
    light = torch.tensor(light_rgb, dtype=dtype, device=n.device) * intensity
    ambient_term = ambient * (srgb_to_linear(irradiance[..., :3].to(dtype)) if irradiance is not None else 1.0)
    return linear_to_srgb(a * (lambert * light + ambient_term))
