"""Draws docs/from_3d_software.png, the README's picture for "From and to 3D software":

    python scripts/docs_from_3d_picture.py

An analytic scene (floor, back wall, sphere) seen by a Blender-style camera (XYZ Euler 75, 0, 0, looking
down its -Z) is rendered into the passes Blender writes (planar Z, world-space normals), converted by
lumix_core.render_passes into LumiX depth and normal, and turned into a mesh by lumix_core.mesh, drawn here
from another viewpoint. The albedo and shading are drawn stand-ins: no model runs here.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lumix_core import mesh as lm  # noqa: E402
from lumix_core import render_passes as rp  # noqa: E402
from lumix_core.display import apply_colormap  # noqa: E402

W, H, FOV = 192, 144, 60.0
ROTATION = (75.0, 0.0, 0.0)
CAMERA = np.array([0.0, -1.0, 1.6])
SPHERE, RADIUS = np.array([0.3, 4.0, 0.9]), 0.9
WALL_Y = 7.0
TILE = 200


def passes():
    focal = 0.5 * W / math.tan(math.radians(FOV) / 2)
    x, y = np.meshgrid(np.arange(W) + 0.5 - W / 2, H / 2 - (np.arange(H) + 0.5))
    cam = np.stack([x, y, np.full_like(x, -focal)], -1)
    cam /= np.linalg.norm(cam, axis=-1, keepdims=True)
    R = rp.euler_xyz_matrix(*ROTATION)
    ray = cam @ R.T  # world directions
    t_floor = np.where(ray[..., 2] < 0, -CAMERA[2] / np.minimum(ray[..., 2], -1e-9), np.inf)
    t_wall = np.where(ray[..., 1] > 0, (WALL_Y - CAMERA[1]) / np.maximum(ray[..., 1], 1e-9), np.inf)
    oc = CAMERA - SPHERE
    b = ray @ oc
    disc = b ** 2 - (oc @ oc - RADIUS ** 2)
    t_sphere = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
    t = np.minimum(np.minimum(t_floor, t_wall), t_sphere)
    point = CAMERA + t[..., None] * ray
    normal = np.where((t == t_sphere)[..., None], (point - SPHERE) / RADIUS,
                      np.where((t == t_wall)[..., None], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]))
    checker = ((np.floor(point[..., 0] * 1.5) + np.floor(point[..., 1] * 1.5)) % 2)[..., None]
    albedo = np.where((t == t_sphere)[..., None], [0.75, 0.25, 0.2],
                      np.where((t == t_wall)[..., None], [0.55, 0.6, 0.7], 0.35 + 0.35 * checker))
    return t * -cam[..., 2], normal, albedo  # planar Z, world normals, albedo


def shaded_mesh(mesh, albedo, size=(TILE * 2, int(TILE * 1.5))):
    """The mesh from a viewpoint turned 30 deg about the scene's centre: flat-shaded triangles by the
    vertex normals, coloured by the albedo texture, painter's order."""
    p = mesh.positions.astype(np.float64)
    centre = (p.min(0) + p.max(0)) / 2
    a = math.radians(-30)
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    q = (p - centre) @ turn.T + centre - np.array([0.0, 0.0, 1.5])
    f = 0.5 * size[0] / math.tan(math.radians(55) / 2)
    sx = size[0] / 2 + f * q[:, 0] / -q[:, 2]
    sy = size[1] / 2 - f * q[:, 1] / -q[:, 2]
    light = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
    n = mesh.normals.astype(np.float64) @ turn.T
    tri = mesh.indices.astype(np.int64)
    depth = q[tri, 2].mean(1)
    shade = 0.25 + 0.75 * np.clip((n[tri].mean(1) @ light), 0, 1)
    pix = mesh.pixels[tri].mean(1).astype(int)
    colour = np.clip(albedo[pix[:, 0], pix[:, 1]] * shade[:, None] * 255, 0, 255).astype(int)
    image = Image.new("RGB", size, (28, 28, 34))
    draw = ImageDraw.Draw(image)
    for k in np.argsort(depth):  # far to near
        pts = [(sx[v], sy[v]) for v in tri[k]]
        draw.polygon(pts, fill=tuple(colour[k]))
    return image


def tile(array, caption, draw_on, x, y, size=(TILE, int(TILE * 0.75))):
    image = Image.fromarray(np.clip(np.round(array * 255), 0, 255).astype(np.uint8)).resize(size, Image.NEAREST)
    draw_on.paste(image, (x, y))
    ImageDraw.Draw(draw_on).text((x, y + size[1] + 4), caption, fill=(230, 230, 230))


def main():
    z, world_normal, albedo = passes()
    depth = rp.depth_to_lumix(z, rp.DEPTH_Z, FOV)
    normal = rp.normals_to_lumix(world_normal, rp.NORMAL_WORLD, rp.VALUES_RAW, camera_rotation_xyz=ROTATION)
    distance = lm.relative_to_distance(depth.value, *depth.distance_range)
    normals = normal.image * 2 - 1
    mesh = lm.depth_to_mesh(distance, FOV, normals / np.linalg.norm(normals, axis=-1, keepdims=True), max_side=128)
    import torch
    z_shown = apply_colormap(torch.from_numpy((z - z.min()) / (z.max() - z.min())), "turbo").numpy()
    canvas = Image.new("RGB", (5 * TILE + 60, int(TILE * 1.5) + 70), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    tile(z_shown, "Z pass (planar, turbo)", canvas, 10, 10)
    tile((world_normal + 1) / 2, "Normal pass (world)", canvas, 10, int(TILE * 0.75) + 40)
    tile(np.repeat(depth.value[..., None], 3, -1), "LumiX depth", canvas, TILE + 20, 10)
    tile(normal.image, "LumiX normal (camera, OpenGL)", canvas, TILE + 20, int(TILE * 0.75) + 40)
    tile(albedo, "albedo (drawn stand-in)", canvas, 2 * TILE + 30, 10)
    ImageDraw.Draw(canvas).text((2 * TILE + 30, int(TILE * 0.75) + 40),
                                "Render Passes to Maps ->\nsampler holds depth + normal,\ngenerates albedo, irradiance,\n"
                                "color -> Depth to Mesh (.glb)", fill=(255, 200, 120))
    canvas.paste(shaded_mesh(mesh, albedo), (3 * TILE + 50, 10))
    ImageDraw.Draw(canvas).text((3 * TILE + 50, int(TILE * 1.5) + 16),
                                f"the .glb mesh seen 30 deg to the side: {len(mesh.indices)} triangles,\n"
                                "none across the silhouette (the gap behind the sphere)", fill=(230, 230, 230))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "from_3d_software.png")
    canvas.save(out, optimize=True)
    print("wrote", os.path.normpath(out))


if __name__ == "__main__":
    main()
