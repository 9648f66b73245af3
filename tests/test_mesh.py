"""Depth -> mesh -> .glb, read back by a GLB reader written here (struct + json, independent of the
pygltflib that writes it): counts, discontinuities, normals, texture, camera."""
import io
import json
import math
import struct

import numpy as np
import pytest
from PIL import Image

from lumix_core import mesh as lm
from render_pass_scene import FOV, PLANE_D, PLANE_NORMAL, lumix_depth, rays, render

pytest.importorskip("pygltflib", reason="pygltflib (requirements.txt) is not installed")

COMPONENTS = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(data: bytes):
    """(json, {accessor index: array}, {image index: bytes}) of a binary glTF."""
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    doc = json.loads(data[20:20 + json_length])
    bin_length, bin_type = struct.unpack_from("<I4s", data, 20 + json_length)
    assert bin_type == b"BIN\x00"
    blob = data[28 + json_length:28 + json_length + bin_length]
    assert doc["buffers"][0]["byteLength"] <= len(blob)

    def view_bytes(index):
        view = doc["bufferViews"][index]
        return blob[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]

    arrays = {}
    for i, acc in enumerate(doc["accessors"]):
        values = np.frombuffer(view_bytes(acc["bufferView"]), dtype=COMPONENTS[acc["componentType"]])
        arrays[i] = values.reshape(acc["count"], WIDTHS[acc["type"]])
    images = {i: view_bytes(img["bufferView"]) for i, img in enumerate(doc.get("images", []))}
    return doc, arrays, images


def primitive(doc, arrays):
    prim = doc["meshes"][0]["primitives"][0]
    get = {name: arrays[index] for name, index in prim["attributes"].items()}
    return prim, get, arrays[prim["indices"]].reshape(-1, 3)


def plane_only(height, width):
    """Distance and normals of the tilted plane alone (no sphere), computed here."""
    r = rays(height, width)
    D = PLANE_D / (r @ PLANE_NORMAL)
    return D, np.broadcast_to(PLANE_NORMAL, r.shape).copy()


def test_plane_counts_positions_and_winding():
    D, N = plane_only(30, 44)
    m = lm.depth_to_mesh(D, FOV, N)
    doc, arrays, _ = read_glb(lm.mesh_glb(m, FOV, (44, 30)))
    prim, attr, tris = primitive(doc, arrays)
    assert len(attr["POSITION"]) == 30 * 44 and len(tris) == 2 * 29 * 43 and prim.get("mode", 4) == 4
    want = (D[..., None] * rays(30, 44)).reshape(-1, 3)
    assert np.abs(attr["POSITION"] - want).max() < 1e-5  # one vertex per pixel, row-major here
    acc = doc["accessors"][prim["attributes"]["POSITION"]]
    assert np.allclose(acc["min"], want.min(0), atol=1e-5) and np.allclose(acc["max"], want.max(0), atol=1e-5)
    p = attr["POSITION"].astype(np.float64)
    face = np.cross(p[tris[:, 1]] - p[tris[:, 0]], p[tris[:, 2]] - p[tris[:, 0]])
    centroid = p[tris].mean(1)
    assert ((face * -centroid).sum(1) > 0).all()  # counter-clockwise from the camera: front faces
    face /= np.linalg.norm(face, axis=1, keepdims=True)
    assert np.abs(face @ PLANE_NORMAL - 1).max() < 1e-5  # the geometry is the plane
    uv = attr["TEXCOORD_0"]
    assert np.allclose(uv[0], [0.5 / 44, 0.5 / 30]) and np.allclose(uv[-1], [43.5 / 44, 29.5 / 30])


def independent_kept(D, jump):
    """Triangles the rule keeps, counted here: two per quad, (a, c, b) and (b, c, d), kept when the
    largest distance is within (1 + jump) of the smallest."""
    a, b, c, d = D[:-1, :-1], D[:-1, 1:], D[1:, :-1], D[1:, 1:]
    kept = 0
    for t in ((a, c, b), (b, c, d)):
        stack = np.stack(t)
        kept += int((stack.max(0) <= stack.min(0) * (1 + jump)).sum())
    return kept


def test_sphere_before_plane_no_triangle_across_the_silhouette():
    sc = render(48, 64)
    value = lumix_depth(sc["D"])  # what LumiX holds, mapped back with the true range
    D = lm.relative_to_distance(value, sc["D"].min(), sc["D"].max())
    assert np.abs(D - sc["D"]).max() < 1e-9
    m = lm.depth_to_mesh(D, FOV, sc["N"], discontinuity=0.05)
    doc, arrays, _ = read_glb(lm.mesh_glb(m, FOV, (64, 48)))
    _, attr, tris = primitive(doc, arrays)
    assert len(tris) == independent_kept(sc["D"], 0.05) and m.dropped == 2 * 47 * 63 - len(tris)
    # every used vertex appears once: vertex count = pixels touched by a kept triangle
    assert len(attr["POSITION"]) == len(np.unique(tris)) == len(m.pixels)
    on_sphere = sc["sphere"][m.pixels[:, 0], m.pixels[:, 1]]
    mixed = on_sphere[tris].any(1) & ~on_sphere[tris].all(1)
    assert not mixed.any()  # no triangle joins the sphere to the plane behind it
    assert on_sphere[tris].all(1).sum() > 100 and (~on_sphere[tris]).all(1).sum() > 1000
    # normals: the vertex normals are the normal map's; the geometry agrees with it inside the sphere
    n = attr["NORMAL"].astype(np.float64)
    truth = sc["N"][m.pixels[:, 0], m.pixels[:, 1]]
    assert np.degrees(np.arccos(np.clip((n * truth).sum(1), -1, 1))).max() < 0.05  # float32
    p = attr["POSITION"].astype(np.float64)
    sphere_tris = tris[on_sphere[tris].all(1)]
    face = np.cross(p[sphere_tris[:, 1]] - p[sphere_tris[:, 0]], p[sphere_tris[:, 2]] - p[sphere_tris[:, 0]])
    face /= np.linalg.norm(face, axis=1, keepdims=True)
    centre_normal = n[sphere_tris].mean(1)
    centre_normal /= np.linalg.norm(centre_normal, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip((face * centre_normal).sum(1), -1, 1)))
    assert np.median(angles) < 3.0 and angles.mean() < 5.0


def test_texture_is_the_albedo_in_srgb_and_camera_matches():
    D, N = plane_only(24, 40)
    albedo = np.random.default_rng(0).random((24, 40, 3))
    m = lm.depth_to_mesh(D, FOV, N)
    doc, _, images = read_glb(lm.mesh_glb(m, FOV, (40, 24), lm.png_bytes(albedo)))
    material = doc["materials"][0]
    pbr = material["pbrMetallicRoughness"]
    texture = doc["textures"][pbr["baseColorTexture"]["index"]]
    assert doc["images"][texture["source"]]["mimeType"] == "image/png"
    png = Image.open(io.BytesIO(images[texture["source"]]))
    assert png.size == (40, 24) and png.mode == "RGB"
    # glTF's baseColorTexture is sRGB-encoded: the albedo (a display image) is stored unchanged, 8 bit
    assert np.array_equal(np.asarray(png), np.round(albedo * 255).astype(np.uint8))
    assert pbr.get("metallicFactor") == 0 and pbr.get("roughnessFactor") == 1
    camera = doc["cameras"][0]["perspective"]
    assert camera["aspectRatio"] == pytest.approx(40 / 24)
    assert camera["yfov"] == pytest.approx(2 * math.atan(math.tan(math.radians(FOV) / 2) * 24 / 40))
    assert doc["asset"]["version"] == "2.0"


def test_max_side_subsamples_vertices_not_texture():
    D, N = plane_only(60, 90)
    m = lm.depth_to_mesh(D, FOV, N, max_side=30)
    assert len(m.positions) == 20 * 30 and len(m.indices) == 2 * 19 * 29
    # each vertex sits exactly on its source pixel's ray
    want = D[m.pixels[:, 0], m.pixels[:, 1], None] * rays(60, 90)[m.pixels[:, 0], m.pixels[:, 1]]
    assert np.abs(m.positions - want).max() < 1e-5


def test_fitted_offset_and_errors():
    D, _ = plane_only(10, 10)
    value = (D - D.min()) / (D.max() - D.min())
    offset = D.min() / (D.max() - D.min())
    assert np.abs(lm.offset_to_distance(value, offset, D.min()) - D).max() < 1e-9
    with pytest.raises(ValueError, match="0 < near < far"):
        lm.relative_to_distance(value, 2.0, 1.0)
    with pytest.raises(ValueError, match="at least 2x2"):
        lm.depth_to_mesh(np.ones((1, 5)), FOV)
    with pytest.raises(ValueError, match="no triangles"):
        lm.mesh_glb(lm.depth_to_mesh(np.where(np.indices((4, 4)).sum(0) % 2, 1.0, 3.0), FOV), FOV, (4, 4))
