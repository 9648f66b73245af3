"""A synthetic scene whose five maps agree by construction: a sphere before a back wall, seen by a
pinhole camera (OpenGL axes), lit by a directional light plus ambient. Written independently of
lumix_core (its own rays, intersections and encodings)."""
import math

import torch

FOV = 60.0
SPHERE_CENTRE = torch.tensor([0.0, 0.0, -3.0], dtype=torch.float64)
SPHERE_RADIUS = 1.0
WALL_Z = -4.5
LIGHT = torch.tensor([0.4, 0.6, 0.7], dtype=torch.float64)
LIGHT = LIGHT / LIGHT.norm()
AMBIENT = 0.15
COLOR_SCALE = 0.8


def srgb_encode(linear):
    linear = linear.clamp(0, 1)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def scene(size=96):
    """Linear and encoded maps: dict with D (distance), N (normals), and IMAGE-style encodings."""
    f = 0.5 * size / math.tan(math.radians(FOV) / 2)
    jj, ii = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="xy")
    rays = torch.stack([jj + 0.5 - size / 2, size / 2 - (ii + 0.5), torch.full_like(jj, -f)], -1)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    # sphere: |t r - c|^2 = R^2
    b = (rays * SPHERE_CENTRE).sum(-1)
    disc = b ** 2 - (SPHERE_CENTRE.dot(SPHERE_CENTRE) - SPHERE_RADIUS ** 2)
    t_sphere = torch.where(disc > 0, b - disc.clamp_min(0).sqrt(), torch.full_like(b, float("inf")))
    t_wall = WALL_Z / rays[..., 2]
    hit_sphere = t_sphere < t_wall
    D = torch.where(hit_sphere, t_sphere, t_wall)
    P = D[..., None] * rays
    N = torch.where(hit_sphere[..., None], (P - SPHERE_CENTRE) / SPHERE_RADIUS,
                    torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(P))
    checker = ((torch.div(jj, 12, rounding_mode="floor") + torch.div(ii, 12, rounding_mode="floor")) % 2)[..., None]
    albedo = torch.where(checker > 0, torch.tensor([0.7, 0.4, 0.2], dtype=torch.float64),
                         torch.tensor([0.2, 0.5, 0.6], dtype=torch.float64))
    irradiance = (AMBIENT + (N * LIGHT).sum(-1).clamp_min(0))[..., None].expand_as(albedo) * 0.8
    color = COLOR_SCALE * albedo * irradiance
    value = (D - D.min()) / (D.max() - D.min())
    return {
        "D": D, "N": N, "offset": (D.min() / (D.max() - D.min())).item(), "hit_sphere": hit_sphere,
        "albedo": srgb_encode(albedo), "irradiance": srgb_encode(irradiance), "color": srgb_encode(color),
        "depth": value[..., None].expand(*value.shape, 3), "normal": (N + 1) / 2,
        "albedo_linear": albedo,
    }


def shift(image, dx, dy=0):
    """Content moved dx pixels right and dy down (edges repeat)."""
    out = torch.roll(image, shifts=(dy, dx), dims=(0, 1))
    if dx > 0:
        out[:, :dx] = image[:, :1]
    if dy > 0:
        out[:dy] = image[:1]
    return out
