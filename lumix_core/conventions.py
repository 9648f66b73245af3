"""Decoding and encoding the maps' RGB images by the conventions of lumix_core.maps.ENCODINGS.

Images are torch tensors [..., H, W, C] with values in 0..1 (ComfyUI's IMAGE layout).
"""
from __future__ import annotations

import math

import torch


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """The sRGB EOTF (IEC 61966-2-1), piecewise."""
    rgb = rgb.clamp(0.0, 1.0)
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    linear = linear.clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def decode_depth(rgb: torch.Tensor, near_is_bright: bool = False) -> torch.Tensor:
    """[..., H, W, C] image -> [..., H, W] relative distance (0 nearest, 1 farthest)."""
    value = rgb[..., :3].mean(dim=-1)
    return 1.0 - value if near_is_bright else value


def encode_depth(distance: torch.Tensor) -> torch.Tensor:
    """[..., H, W] relative distance -> grey [..., H, W, 3] image, normalised to 0..1 per image."""
    flat = distance.flatten(-2)
    low, high = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    value = (distance - low) / (high - low).clamp_min(1e-12)
    return value[..., None].expand(*value.shape, 3)


def decode_normals(rgb: torch.Tensor) -> torch.Tensor:
    """[..., H, W, 3] image -> unit camera-space normals (OpenGL axes)."""
    n = rgb[..., :3] * 2.0 - 1.0
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def encode_normals(normals: torch.Tensor) -> torch.Tensor:
    return ((normals + 1.0) * 0.5).clamp(0.0, 1.0)


def flip_normal_y(rgb: torch.Tensor) -> torch.Tensor:
    """OpenGL <-> DirectX normal maps: the green (y) axis points the other way."""
    out = rgb.clone()
    out[..., 1] = 1.0 - out[..., 1]
    return out


def camera_rays(height: int, width: int, fov_degrees: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Unit view rays [H, W, 3] of a pinhole camera (OpenGL axes: looking down -z, +y up)."""
    focal = 0.5 * width / math.tan(math.radians(fov_degrees) / 2)
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5 - width / 2
    ys = height / 2 - (torch.arange(height, dtype=dtype, device=device) + 0.5)
    x, y = torch.meshgrid(xs, ys, indexing="xy")
    rays = torch.stack([x, y, torch.full_like(x, -focal)], dim=-1)
    return rays / rays.norm(dim=-1, keepdim=True)
