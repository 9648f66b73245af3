"""A depth map as a relightable mesh: back-projected through the pinhole of the consistency metrics,
one vertex per pixel, triangles dropped where they would bridge a depth discontinuity, the normal map
as vertex normals and the albedo as the base-colour texture, written as binary glTF (.glb).

Coordinates are the camera's (OpenGL axes, which are glTF's): camera at the origin looking down -z,
+y up, +x right; units are those of the distances given. glTF is written through pygltflib.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from .conventions import camera_rays

GLTF_INSTALL_HINT = ("the mesh export needs the 'pygltflib' package (listed in this extension's requirements.txt): "
                     "run `python -m pip install pygltflib` with ComfyUI's Python, then restart ComfyUI.")
# Neighbouring pixels whose distances differ by more than this fraction are not joined by a triangle
# (per pixel: vertices k pixels apart, with max_side, may differ by k times as much).
DEFAULT_DISCONTINUITY = 0.05


@dataclass
class Mesh:
    positions: np.ndarray  # float32 [V, 3], camera space
    indices: np.ndarray  # uint32 [T, 3], counter-clockwise seen from the camera (glTF front faces)
    uvs: np.ndarray  # float32 [V, 2], the pixel centre in the full-size image (glTF: origin top-left)
    normals: np.ndarray | None  # float32 [V, 3] unit, camera space, or None
    pixels: np.ndarray  # int64 [V, 2]: (row, column) of each vertex in the full-size image
    dropped: int  # triangles left out at discontinuities


def sample_grid(height: int, width: int, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels that become vertices: every pixel, or an even subset so that the
    mesh is at most `max_side` vertices across (0: every pixel)."""
    if max_side <= 0 or max(height, width) <= max_side:
        return np.arange(height), np.arange(width)
    scale = max_side / max(height, width)
    rows, cols = max(2, round(height * scale)), max(2, round(width * scale))
    return (np.floor((np.arange(rows) + 0.5) * height / rows).astype(np.int64),
            np.floor((np.arange(cols) + 0.5) * width / cols).astype(np.int64))


def grid_triangles(distance: np.ndarray, discontinuity: float) -> tuple[np.ndarray, int]:
    """[T, 3] vertex indices into the flattened grid: two triangles per quad, counter-clockwise as seen
    from the camera, each kept only when its three distances lie within a factor (1 + discontinuity)
    of one another and are finite and positive."""
    rows, cols = distance.shape
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()  # top-left, top-right
    c, d = index[1:, :-1].ravel(), index[1:, 1:].ravel()  # bottom-left, bottom-right
    triangles = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    flat = distance.ravel()
    corner = flat[triangles]
    ok = np.isfinite(corner).all(1) & (corner > 0).all(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok &= corner.max(1) <= corner.min(1) * (1.0 + discontinuity)
    return triangles[ok], int((~ok).sum())


def depth_to_mesh(distance: np.ndarray, fov_degrees: float, normals: np.ndarray | None = None,
                  discontinuity: float = DEFAULT_DISCONTINUITY, max_side: int = 0) -> Mesh:
    """`distance` [H, W]: distance from the camera centre along each pixel's ray (scene units);
    `normals` [H, W, 3]: unit camera-space normals (OpenGL), or None."""
    distance = np.asarray(distance, dtype=np.float64)
    height, width = distance.shape
    if height < 2 or width < 2:
        raise ValueError(f"a mesh needs a depth map of at least 2x2 pixels, got {width}x{height}")
    if not discontinuity > 0:
        raise ValueError(f"discontinuity must be above 0, got {discontinuity}")
    rows, cols = sample_grid(height, width, max_side)
    rays = camera_rays(height, width, fov_degrees, dtype=torch.float64).numpy()[np.ix_(rows, cols)]
    sampled = distance[np.ix_(rows, cols)]
    step = max(height / len(rows), width / len(cols))  # pixels between vertices: the jump allowed grows with it
    triangles, dropped = grid_triangles(sampled, discontinuity * step)
    used = np.unique(triangles)
    remap = np.full(sampled.size, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    pixels = np.stack([rr.ravel()[used], cc.ravel()[used]], 1)
    positions = (sampled[..., None] * rays).reshape(-1, 3)[used]
    uvs = np.stack([(pixels[:, 1] + 0.5) / width, (pixels[:, 0] + 0.5) / height], 1)
    vertex_normals = None
    if normals is not None:
        n = np.asarray(normals, dtype=np.float64)[pixels[:, 0], pixels[:, 1]]
        vertex_normals = (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return Mesh(positions.astype(np.float32), remap[triangles].astype(np.uint32), uvs.astype(np.float32),
                vertex_normals, pixels, dropped)


def relative_to_distance(value: np.ndarray, near: float, far: float) -> np.ndarray:
    """LumiX relative depth (0 nearest, 1 farthest) -> distance, 0 at `near` and 1 at `far`."""
    if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
        raise ValueError(f"near ({near}) and far ({far}) must be finite with 0 < near < far")
    return near + np.asarray(value, dtype=np.float64) * (far - near)


def offset_to_distance(value: np.ndarray, offset: float, near: float) -> np.ndarray:
    """Relative depth with the distance offset fitted by the consistency metric (in units of the depth
    range): shape from value + offset, scaled so that the nearest point is at `near`."""
    value = np.asarray(value, dtype=np.float64)
    if not (math.isfinite(offset) and offset > 0 and math.isfinite(near) and near > 0):
        raise ValueError(f"the fitted depth offset ({offset}) and near ({near}) must be positive")
    return near * (value + offset) / (value.min() + offset)


def png_bytes(image: np.ndarray) -> bytes:
    """float [H, W, 3] in 0..1 -> 8-bit RGB PNG (values kept as they are: an sRGB image stays sRGB)."""
    from PIL import Image

    pixels = np.clip(np.round(255.0 * np.asarray(image, dtype=np.float64)[..., :3]), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def mesh_glb(mesh: Mesh, fov_degrees: float, image_size: tuple[int, int], texture_png: bytes | None = None,
             name: str = "LumiX scene", extras: dict | None = None) -> bytes:
    """The mesh as a binary glTF 2.0: one node with the mesh (POSITION, NORMAL when given, TEXCOORD_0),
    a PBR material (base colour from `texture_png`, an sRGB image as glTF specifies; not metallic, fully
    rough), and a perspective camera at the origin matching the depth map's (image_size = (W, H))."""
    try:
        import pygltflib as g
    except ImportError:
        raise ImportError(GLTF_INSTALL_HINT) from None
    if len(mesh.indices) == 0:
        raise ValueError("the mesh has no triangles (every quad crosses a discontinuity or has no depth)")
    blob = bytearray()
    views, accessors = [], []

    def add_view(data: bytes, target=None) -> int:
        while len(blob) % 4:
            blob.append(0)
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob.extend(data)
        return len(views) - 1

    def add_accessor(array: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        view = add_view(np.ascontiguousarray(array).tobytes(), target)
        extra = {"min": array.min(0).tolist(), "max": array.max(0).tolist()} if bounds else {}
        accessors.append(g.Accessor(bufferView=view, componentType=component, count=len(array), type=kind, **extra))
        return len(accessors) - 1

    attributes = g.Attributes(POSITION=add_accessor(mesh.positions, g.VEC3, g.FLOAT, g.ARRAY_BUFFER, bounds=True))
    if mesh.normals is not None:
        attributes.NORMAL = add_accessor(mesh.normals, g.VEC3, g.FLOAT, g.ARRAY_BUFFER)
    attributes.TEXCOORD_0 = add_accessor(mesh.uvs, g.VEC2, g.FLOAT, g.ARRAY_BUFFER)
    indices = add_accessor(mesh.indices.reshape(-1), g.SCALAR, g.UNSIGNED_INT, g.ELEMENT_ARRAY_BUFFER)

    pbr = g.PbrMetallicRoughness(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0)
    textures, images, samplers = [], [], []
    if texture_png is not None:
        images.append(g.Image(bufferView=add_view(texture_png), mimeType=g.IMAGEPNG, name="albedo"))
        samplers.append(g.Sampler(magFilter=g.LINEAR, minFilter=g.LINEAR, wrapS=g.CLAMP_TO_EDGE, wrapT=g.CLAMP_TO_EDGE))
        textures.append(g.Texture(sampler=0, source=0))
        pbr.baseColorTexture = g.TextureInfo(index=0)
    else:
        pbr.baseColorFactor = [0.8, 0.8, 0.8, 1.0]
    width, height = image_size
    yfov = 2 * math.atan(math.tan(math.radians(fov_degrees) / 2) * height / width)
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0", generator="ComfyUI-LumiX"),
        scene=0, scenes=[g.Scene(nodes=[0, 1], name=name)],
        nodes=[g.Node(mesh=0, name=name), g.Node(camera=0, name="LumiX camera")],
        meshes=[g.Mesh(name=name, primitives=[g.Primitive(attributes=attributes, indices=indices, material=0,
                                                          mode=g.TRIANGLES)])],
        materials=[g.Material(name="albedo", pbrMetallicRoughness=pbr, doubleSided=True)],
        textures=textures, images=images, samplers=samplers,
        cameras=[g.Camera(type=g.PERSPECTIVE, name="LumiX camera",
                          perspective=g.Perspective(yfov=yfov, aspectRatio=width / height,
                                                    znear=max(float(np.linalg.norm(mesh.positions, axis=1).min()) * 0.1,
                                                              1e-4)))],
        accessors=accessors, bufferViews=views, buffers=[g.Buffer(byteLength=len(blob))],
        extras=extras or {},
    )
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())
