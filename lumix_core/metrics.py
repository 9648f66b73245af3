"""Objective consistency checks between the five maps of one scene.

Every function takes one scene's IMAGE tensors [H, W, 3] in 0..1 (decoded by the conventions of
lumix_core.maps) and returns plain numbers plus a per-pixel map for a heat-map preview.

* photometric residual: color against albedo x irradiance in linear RGB, after the global scale s
  that fits best (least squares): mean over pixels of |color - s * albedo * irradiance|.
* geometric residual: angle in degrees between the normal map and normals derived from the depth
  map (back-projected through a pinhole of the given FOV; the unknown depth offset is fitted),
  ignoring depth discontinuities and the image border.
* structural alignment: correlation of edge strength (Sobel) between each map and color, at zero
  offset; also the pixel offset at which each map's edges best match color's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .conventions import camera_rays, decode_depth, decode_normals, srgb_to_linear
from .maps import DEFAULT_FOV_DEGREES, MAP_NAMES, SOURCE_MAP

# Above this jump in relative depth between neighbours a pixel is on an occlusion boundary.
DEPTH_EDGE_THRESHOLD = 0.04
DEPTH_OFFSETS = torch.logspace(math.log10(0.02), math.log10(50.0), 48, dtype=torch.float64)


def photometric_residual(color, albedo, irradiance) -> dict:
    c, a, i = (srgb_to_linear(t.double()[..., :3]) for t in (color, albedo, irradiance))
    product = a * i
    scale = ((c * product).sum() / (product * product).sum().clamp_min(1e-12)).item()
    residual = (c - scale * product).abs().mean(dim=-1)
    mean = residual.mean().item()
    return {"residual": mean, "relative": mean / max(c.mean().item(), 1e-12), "scale": scale, "map": residual}


def normals_from_depth(distance: torch.Tensor, fov_degrees: float, rays: torch.Tensor | None = None) -> torch.Tensor:
    """[H, W] distance along each ray -> [H, W, 3] unit normals facing the camera (borders invalid).

    `rays` (camera_rays for this size and FOV) may be passed in when called for many depths."""
    if rays is None:
        rays = camera_rays(*distance.shape, fov_degrees, dtype=distance.dtype, device=distance.device)
    points = distance[..., None] * rays
    d_col = torch.zeros_like(points)
    d_row = torch.zeros_like(points)
    d_col[:, 1:-1] = points[:, 2:] - points[:, :-2]
    d_row[1:-1] = points[2:] - points[:-2]
    n = torch.linalg.cross(d_col, d_row, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    facing = (n * points).sum(-1, keepdim=True) > 0  # must point back towards the camera at the origin
    return torch.where(facing, -n, n)


def _valid_geometry_mask(value: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(value, dtype=torch.bool)
    mask[1:-1, 1:-1] = True
    jump = torch.zeros_like(value)
    jump[1:-1, 1:-1] = torch.stack([(value[1:-1, 2:] - value[1:-1, :-2]).abs(),
                                    (value[2:, 1:-1] - value[:-2, 1:-1]).abs()]).amax(0)
    # a pixel next to a discontinuity has its central difference spanning it
    return mask & (jump < DEPTH_EDGE_THRESHOLD)


def geometric_residual(depth, normal, fov_degrees: float = DEFAULT_FOV_DEGREES, near_is_bright: bool = False) -> dict:
    value = decode_depth(depth.double(), near_is_bright)
    n = decode_normals(normal.double())
    mask = _valid_geometry_mask(value)
    if mask.sum() == 0:
        return {"mean_degrees": float("nan"), "median_degrees": float("nan"), "offset": float("nan"),
                "valid_fraction": 0.0, "map": torch.zeros_like(value)}
    best = None
    rays = camera_rays(*value.shape, fov_degrees, dtype=value.dtype, device=value.device)  # same for every offset
    for offset in DEPTH_OFFSETS:
        from_depth = normals_from_depth(value + offset, fov_degrees, rays)
        angle = torch.rad2deg(torch.acos((from_depth * n).sum(-1).clamp(-1.0, 1.0)))
        mean = angle[mask].mean().item()
        if best is None or mean < best[0]:
            best = (mean, offset.item(), angle)
    mean, offset, angle = best
    return {"mean_degrees": mean, "median_degrees": angle[mask].median().item(), "offset": offset,
            "valid_fraction": mask.double().mean().item(), "map": torch.where(mask, angle, torch.zeros_like(angle))}


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)


def edge_strength(image: torch.Tensor) -> torch.Tensor:
    """[H, W, C] -> [H, W] Sobel gradient magnitude summed over channels, border zeroed."""
    x = image.double()[..., :3].permute(2, 0, 1)[:, None]  # C,1,H,W
    gx = F.conv2d(x, _SOBEL.view(1, 1, 3, 3), padding=1)
    gy = F.conv2d(x, _SOBEL.t().contiguous().view(1, 1, 3, 3), padding=1)
    magnitude = (gx ** 2 + gy ** 2).sqrt().sum(0)[0]
    magnitude[[0, -1], :] = 0
    magnitude[:, [0, -1]] = 0
    return magnitude


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return (a * b).sum().item() / denominator if denominator > 0 else 0.0


def structural_alignment(maps: dict[str, torch.Tensor], max_offset: int = 4) -> dict:
    """Edge agreement of every map with color: correlation at zero offset and the best offset."""
    if SOURCE_MAP not in maps or len(maps) < 2:
        raise ValueError("structural alignment needs color and at least one other map")
    edges = {name: edge_strength(image) for name, image in maps.items()}
    ref = edges[SOURCE_MAP]
    h, w = ref.shape
    r = max_offset
    core = ref[r:h - r, r:w - r]
    per_map = {}
    for name, e in edges.items():
        if name == SOURCE_MAP:
            continue
        scores = {(dx, dy): _correlation(core, e[r + dy:h - r + dy, r + dx:w - r + dx])
                  for dy in range(-r, r + 1) for dx in range(-r, r + 1)}
        best = max(scores, key=scores.get)
        per_map[name] = {"correlation": scores[(0, 0)], "best_offset": best, "best_correlation": scores[best]}
    normalised = {name: e / torch.quantile(e.flatten(), 0.99).clamp_min(1e-12) for name, e in edges.items()}
    disagreement = torch.stack([(normalised[name] - normalised[SOURCE_MAP]).abs().clamp(0, 1)
                                for name in per_map]).mean(0)
    score = sum(m["correlation"] for m in per_map.values()) / len(per_map)
    return {"alignment": score, "maps": per_map, "map": disagreement}


@dataclass
class ConsistencyReport:
    photometric: dict | None = None
    geometric: dict | None = None
    structural: dict | None = None
    missing: dict[str, list[str]] = field(default_factory=dict)

    def numbers(self) -> dict:
        """The values without per-pixel maps (for JSON sidecars)."""
        out = {}
        for key in ("photometric", "geometric", "structural"):
            value = getattr(self, key)
            if value is not None:
                out[key] = {k: v for k, v in value.items() if k != "map"}
        return out

    def text(self) -> str:
        lines = []
        p, g, s = self.photometric, self.geometric, self.structural
        if p:
            lines.append(f"photometric residual: {p['residual']:.4f} mean |color - s*albedo*irradiance| in linear RGB "
                         f"({100 * p['relative']:.1f}% of mean color; fitted s = {p['scale']:.3f})")
        if g:
            lines.append(f"geometric residual: {g['mean_degrees']:.2f} deg mean angle between normal and normals from "
                         f"depth (median {g['median_degrees']:.2f} deg over {100 * g['valid_fraction']:.0f}% of pixels; "
                         f"fitted depth offset {g['offset']:.2f} x its range)")
        if s:
            offsets = ", ".join(f"{name} {m['correlation']:.2f} at (0,0), best {m['best_offset']}"
                                for name, m in s["maps"].items())
            lines.append(f"structural alignment: {s['alignment']:.3f} mean edge correlation with color ({offsets})")
        for check, needs in self.missing.items():
            lines.append(f"{check}: not computed (needs {' and '.join(needs)})")
        return "\n".join(lines)


NEEDS = {"photometric residual": ["color", "albedo", "irradiance"], "geometric residual": ["depth", "normal"],
         "structural alignment": ["color", "another map"]}


def consistency(maps: dict[str, torch.Tensor], fov_degrees: float = DEFAULT_FOV_DEGREES,
                near_is_bright: bool = False) -> ConsistencyReport:
    """Every check the given maps of one scene allow (any map may be missing)."""
    unknown = set(maps) - set(MAP_NAMES)
    if unknown:
        raise ValueError(f"unknown maps {sorted(unknown)}; expected some of {', '.join(MAP_NAMES)}")
    report = ConsistencyReport()
    if {"color", "albedo", "irradiance"} <= set(maps):
        report.photometric = photometric_residual(maps["color"], maps["albedo"], maps["irradiance"])
    else:
        report.missing["photometric residual"] = [m for m in NEEDS["photometric residual"] if m not in maps]
    if {"depth", "normal"} <= set(maps):
        report.geometric = geometric_residual(maps["depth"], maps["normal"], fov_degrees, near_is_bright)
    else:
        report.missing["geometric residual"] = [m for m in NEEDS["geometric residual"] if m not in maps]
    if SOURCE_MAP in maps and len(maps) > 1:
        report.structural = structural_alignment(maps)
    else:
        report.missing["structural alignment"] = [m for m in NEEDS["structural alignment"]
                                                  if m == "another map" or m not in maps]
    return report
