"""The numbers and warnings the map-tool nodes show in the UI, computed from plain tensors.

Each function takes IMAGE tensors (one image [H, W, C] in 0..1, by the conventions of lumix_core.maps)
and returns short text lines; warnings are separate so the node can also log them. Thresholds are
deliberately loose: a warning means "look at this", not "the maps are wrong".
"""
from __future__ import annotations

import math

import torch

from .conventions import decode_depth
from .metrics import ConsistencyReport

# Consistency: beyond these values a check's number says the maps do not describe one scene.
PHOTOMETRIC_RELATIVE_LIMIT = 0.5       # residual over half the mean colour
GEOMETRIC_LIMIT_DEGREES = 45.0         # the top of the geometric heat map
STRUCTURAL_LIMIT = 0.2                 # mean edge correlation with color
MIN_VALID_GEOMETRY = 0.2               # fraction of pixels away from depth jumps
# A map is misaligned when shifting it improves its edge correlation with color by at least this much.
MISALIGNMENT_GAIN = 0.02
# Depth whose values span less than this is flat: a colour map of it is noise.
FLAT_DEPTH_RANGE = 1e-3
# Normals: mean length of 2*rgb-1 and share facing the camera (+z) expected of a camera-space normal map.
NORMAL_LENGTH_RANGE = (0.7, 1.3)
MIN_FACING_CAMERA = 0.5
# Relight: share of pixels at white (any channel) above which the preview is overexposed, and share
# the light must reach (n.l > 0) for the preview to show anything but ambient light.
CLIPPED_LIMIT = 0.1
MIN_LIT = 0.05


def consistency_warnings(report: ConsistencyReport) -> list[str]:
    """What in one scene's report says the maps disagree, in words a user can act on."""
    warnings = []
    p, g, s = report.photometric, report.geometric, report.structural
    if p is not None and p["relative"] > PHOTOMETRIC_RELATIVE_LIMIT:
        warnings.append(f"color is far from albedo x irradiance (residual {100 * p['relative']:.0f}% of mean color, "
                        f"limit {100 * PHOTOMETRIC_RELATIVE_LIMIT:.0f}%): the three maps may not show one scene")
    if g is not None:
        if g["valid_fraction"] == 0 or math.isnan(g["mean_degrees"]):
            warnings.append("geometric residual not computed: depth jumps at every pixel; is the depth input a depth map?")
        else:
            if g["mean_degrees"] > GEOMETRIC_LIMIT_DEGREES:
                warnings.append(f"normals disagree with depth by {g['mean_degrees']:.1f} deg on average (limit "
                                f"{GEOMETRIC_LIMIT_DEGREES:g}): check the depth convention, fov_degrees and "
                                "whether the normal map is OpenGL (LumiX) or DirectX")
            if g["valid_fraction"] < MIN_VALID_GEOMETRY:
                warnings.append(f"geometric residual uses only {100 * g['valid_fraction']:.0f}% of pixels (depth jumps "
                                "elsewhere): treat it as unreliable")
    if s is not None:
        for name, m in s["maps"].items():
            if m["best_offset"] != (0, 0) and m["best_correlation"] - m["correlation"] >= MISALIGNMENT_GAIN:
                warnings.append(f"{name} is misaligned with color: its content sits {_offset_words(*m['best_offset'])} "
                                f"of color's (edge correlation {m['correlation']:.2f} in place, "
                                f"{m['best_correlation']:.2f} there)")
        if s["alignment"] < STRUCTURAL_LIMIT:
            warnings.append(f"structural alignment {s['alignment']:.2f} is below {STRUCTURAL_LIMIT}: the maps' edges "
                            "hardly follow color's")
    return warnings


def _offset_words(dx: int, dy: int) -> str:
    """(dx, dy) in pixels, x right and y down, as words: '3 px right, 1 px up'."""
    parts = [f"{abs(v)} px {pos if v > 0 else neg}" for v, pos, neg in ((dx, "right", "left"), (dy, "down", "up")) if v]
    return ", ".join(parts)


def depth_readout(depth: torch.Tensor, near_is_bright_input: bool) -> tuple[str, list[str]]:
    """One image's depth range as the colour map stretches it, and a warning when it is flat."""
    value = decode_depth(depth.double(), near_is_bright_input)  # 0 near .. 1 far
    low, high = value.min().item(), value.max().item()
    line = f"relative distance {low:.3f} (nearest) to {high:.3f} (farthest)"
    warnings = []
    if high - low < FLAT_DEPTH_RANGE:
        warnings.append(f"depth is flat (range {high - low:.1e}): the colour map shows nothing; is this a depth map?")
    return line, warnings


def normal_readout(normal: torch.Tensor) -> tuple[dict, list[str]]:
    """Mean length and mean y of the raw vectors 2*rgb-1, and the share facing the camera (+z, OpenGL)."""
    n = normal[..., :3].double() * 2.0 - 1.0
    stats = {"length": n.norm(dim=-1).mean().item(), "mean_y": n[..., 1].mean().item(),
             "facing": (n[..., 2] > 0).double().mean().item()}
    warnings = []
    low, high = NORMAL_LENGTH_RANGE
    if not low <= stats["length"] <= high or stats["facing"] < MIN_FACING_CAMERA:
        warnings.append(f"this does not look like a camera-space normal map (mean |2*rgb-1| = {stats['length']:.2f}, "
                        f"{100 * stats['facing']:.0f}% of pixels face the camera): connect a normal map")
    return stats, warnings


def relight_readout(normal: torch.Tensor, light_dir: torch.Tensor, relit: torch.Tensor) -> tuple[dict, list[str]]:
    """Share of pixels the light reaches (n.l > 0) and share clipped at white in the preview."""
    n = normal[..., :3].double() * 2.0 - 1.0
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    lit = ((n * light_dir.double().to(n.device)).sum(-1) > 0).double().mean().item()
    clipped = (relit[..., :3] >= 1.0 - 1e-6).any(-1).double().mean().item()
    warnings = []
    if lit < MIN_LIT:
        warnings.append(f"the light reaches only {100 * lit:.0f}% of pixels: it shines from behind the surfaces; "
                        "change azimuth/elevation (or flip a DirectX normal map)")
    if clipped > CLIPPED_LIMIT:
        warnings.append(f"{100 * clipped:.0f}% of pixels are clipped at white: lower intensity or ambient")
    return {"lit": lit, "clipped": clipped}, warnings

