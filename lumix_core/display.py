"""Display helpers: colour maps for depth and heat maps."""
from __future__ import annotations

import torch

from .conventions import decode_depth

# Control points (value -> sRGB) of perceptually ordered maps, interpolated linearly between.
COLORMAPS = {
    "inferno": [(0.0, (0.00, 0.00, 0.02)), (0.15, (0.13, 0.05, 0.33)), (0.3, (0.37, 0.07, 0.43)),
                (0.45, (0.58, 0.15, 0.40)), (0.6, (0.78, 0.25, 0.27)), (0.75, (0.93, 0.42, 0.13)),
                (0.9, (0.98, 0.68, 0.10)), (1.0, (0.99, 1.00, 0.64))],
    "turbo": [(0.0, (0.19, 0.07, 0.23)), (0.13, (0.27, 0.40, 0.85)), (0.25, (0.16, 0.68, 0.97)),
              (0.38, (0.10, 0.90, 0.71)), (0.5, (0.45, 0.99, 0.37)), (0.63, (0.82, 0.91, 0.20)),
              (0.75, (0.99, 0.68, 0.15)), (0.88, (0.91, 0.33, 0.05)), (1.0, (0.48, 0.02, 0.01))],
    "gray": [(0.0, (0.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 1.0))],
}


def apply_colormap(values: torch.Tensor, name: str = "inferno") -> torch.Tensor:
    """[..., H, W] values in 0..1 (clamped) -> [..., H, W, 3] colours."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    points = COLORMAPS[name]
    xs = torch.tensor([p[0] for p in points], dtype=values.dtype, device=values.device)
    colours = torch.tensor([p[1] for p in points], dtype=values.dtype, device=values.device)
    v = values.clamp(0.0, 1.0)
    upper = torch.searchsorted(xs, v.contiguous(), right=True).clamp(1, len(points) - 1)
    lower = upper - 1
    t = ((v - xs[lower]) / (xs[upper] - xs[lower]))[..., None]
    return colours[lower] * (1 - t) + colours[upper] * t


def colorize_depth(depth_rgb: torch.Tensor, name: str = "turbo", input_near_is_bright: bool = False,
                   show_near_high: bool = True) -> torch.Tensor:
    """Depth IMAGE -> colour-mapped IMAGE, normalised per image.

    `input_near_is_bright` says how the input encodes depth (the registry's convention is False);
    `show_near_high` puts near points at the top end of the colour map (bright / warm)."""
    value = decode_depth(depth_rgb, input_near_is_bright)  # 0 near .. 1 far
    flat = value.flatten(-2)
    low, high = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    value = (value - low) / (high - low).clamp_min(1e-12)
    return apply_colormap(1.0 - value if show_near_high else value, name)
