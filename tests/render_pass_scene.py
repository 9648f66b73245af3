"""An analytic scene for the 3D-software tests, written independently of lumix_core in float64: a sphere
resting before a tilted plane, seen by a pinhole camera with a horizontal field of view (OpenGL axes:
looking down -z, +y up), rendered into the passes 3D software writes."""
import math

import numpy as np

FOV = 55.0
SPHERE_CENTRE = np.array([0.3, -0.2, -4.0])
SPHERE_RADIUS = 1.1
# plane n . p = d, facing the camera, tilted (a floor-to-wall slope)
PLANE_NORMAL = np.array([0.15, 0.45, 0.88]) / np.linalg.norm([0.15, 0.45, 0.88])
PLANE_D = -5.5


def rays(height, width, fov=FOV):
    focal = 0.5 * width / math.tan(math.radians(fov) / 2)
    x = np.arange(width) + 0.5 - width / 2
    y = height / 2 - (np.arange(height) + 0.5)
    xx, yy = np.meshgrid(x, y)
    r = np.stack([xx, yy, np.full_like(xx, -focal)], -1)
    return r / np.linalg.norm(r, axis=-1, keepdims=True)


def render(height=40, width=56, fov=FOV, sky_rows=0):
    """dict: D (distance along the ray), Z (planar depth, positive), N (camera-space unit normals, OpenGL),
    sphere (hit mask), sky (no surface: the top `sky_rows` rows see nothing)."""
    r = rays(height, width, fov)
    b = r @ SPHERE_CENTRE
    disc = b ** 2 - (SPHERE_CENTRE @ SPHERE_CENTRE - SPHERE_RADIUS ** 2)
    t_sphere = np.where(disc > 0, b - np.sqrt(np.maximum(disc, 0)), np.inf)
    t_plane = PLANE_D / (r @ PLANE_NORMAL)
    t_plane = np.where(t_plane > 0, t_plane, np.inf)
    sphere = t_sphere < t_plane
    D = np.minimum(t_sphere, t_plane)
    assert np.isfinite(D).all(), "the plane must fill the view"
    P = D[..., None] * r
    N = np.where(sphere[..., None], (P - SPHERE_CENTRE) / SPHERE_RADIUS, PLANE_NORMAL)
    sky = np.zeros((height, width), dtype=bool)
    sky[:sky_rows] = True
    return {"D": D, "Z": -P[..., 2], "N": N, "sphere": sphere, "sky": sky, "rays": r}


def lumix_depth(D, sky=None):
    """LumiX's relative distance, computed here: 0 at the nearest surface, 1 at the farthest, sky 1."""
    surface = np.ones_like(D, dtype=bool) if sky is None else ~sky
    low, high = D[surface].min(), D[surface].max()
    value = (D - low) / (high - low)
    return np.where(surface, value, 1.0)


def lumix_normal(N):
    return (N + 1) / 2


def blender_rotation(rx, ry, rz):
    """Camera-to-world rotation of a Blender XYZ Euler (degrees), built from axis-angle rotations
    (Rodrigues) applied in turn to the basis: X first, then Y, then Z, all about world axes."""
    def axis_angle(axis, degrees):
        k = np.array(axis, dtype=np.float64)
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        a = math.radians(degrees)
        return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K
    R = np.eye(3)
    for axis, angle in (((1, 0, 0), rx), ((0, 1, 0), ry), ((0, 0, 1), rz)):
        R = axis_angle(axis, angle) @ R
    return R
