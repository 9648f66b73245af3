"""LumiX Depth to Mesh inside a real ComfyUI: the .glb in the output folder (numbered, never overwritten),
read back by the test's own GLB reader, and handed to core's Preview 3D."""
import os

import numpy as np
import pytest
import torch

from comfy_host import load_extension, output_dir  # noqa: F401  (output_dir: a fixture)
from synthetic_scene import FOV, scene

pytest.importorskip("pygltflib", reason="pygltflib (requirements.txt) is not installed")
from test_mesh import primitive, read_glb  # noqa: E402  (the independent GLB reader)

NODES = load_extension()
NODE = NODES["LumiXDepthToMesh"]


def maps(size=64):
    sc = scene(size)
    return sc, {name: sc[name][None].float() for name in ("depth", "normal", "albedo")}


def run(depth, normal=None, albedo=None, depth_scale="fit to the normals", near=1.0,
        far=3.0, prefix="LumiX/mesh", max_side=512):
    return NODE.execute(depth, FOV, depth_scale, near, far, 0.05, max_side, prefix, normal=normal, albedo=albedo)


def test_registered_with_a_string_output_for_preview3d():
    info = NODE.GET_NODE_INFO_V1()
    assert info["display_name"] == "LumiX Depth to Mesh" and info["category"] == "LumiX/3D"
    assert info["output"] == ["STRING"] and info["output_node"] is True


def test_mesh_file_in_the_output_folder_read_back(output_dir):
    sc, m = maps()
    out = run(m["depth"], m["normal"], m["albedo"])
    assert out.result[0] == "LumiX/mesh_00001.glb"
    assert run(m["depth"], m["normal"], m["albedo"]).result[0] == "LumiX/mesh_00002.glb"  # never overwritten
    assert sorted(os.listdir(output_dir / "LumiX")) == ["mesh_00001.glb", "mesh_00002.glb"]  # no temporary left
    doc, arrays, images = read_glb((output_dir / "LumiX" / "mesh_00001.glb").read_bytes())
    _, attr, tris = primitive(doc, arrays)
    assert 0.95 * 64 * 64 < len(attr["POSITION"]) <= 64 * 64 and len(tris) > 2 * 63 * 63 * 0.9
    # each vertex's pixel, from its texture coordinate (pixel centres)
    pixel = np.round(attr["TEXCOORD_0"].astype(np.float64) * 64 - 0.5).astype(int)
    index = pixel[:, 1] * 64 + pixel[:, 0]
    # the fitted scale recovers the scene's shape: distances proportional to the true ones
    distance = np.linalg.norm(attr["POSITION"].astype(np.float64), axis=1)
    truth = sc["D"].numpy().ravel()[index]
    ratio = distance / truth
    assert distance.min() == pytest.approx(1.0, abs=1e-5)  # nearest point at `near`
    assert np.percentile(np.abs(ratio / np.median(ratio) - 1), 95) < 0.03
    # no triangle joins the sphere and the wall
    on_sphere = sc["hit_sphere"].numpy().ravel()[index]
    assert not (on_sphere[tris].any(1) & ~on_sphere[tris].all(1)).any()
    normal = attr["NORMAL"].astype(np.float64)
    angle = np.degrees(np.arccos(np.clip((normal * sc["N"].numpy().reshape(-1, 3)[index]).sum(1), -1, 1)))
    assert angle.max() < 0.5
    from PIL import Image
    import io
    texture = Image.open(io.BytesIO(images[0]))
    assert texture.size == (64, 64)
    assert np.array_equal(np.asarray(texture), np.round(m["albedo"][0].double().numpy() * 255).astype(np.uint8))
    assert doc["extras"]["lumix"]["fov_degrees"] == FOV
    text = out.ui.as_dict()["text"][0]
    assert f"{len(attr['POSITION'])} vertices" in text and "WARNING" not in text


def test_preview3d_shows_the_file(output_dir):
    _, m = maps(32)
    model_file = run(m["depth"], m["normal"], m["albedo"]).result[0]
    from comfy_extras import nodes_load_3d  # core's 3D nodes (not loaded by load_extension)
    preview = nodes_load_3d.Preview3D
    if hasattr(preview, "define_schema"):  # 0.8.0: a V3 node with UI.PreviewUI3D
        ui = preview.execute(model_file).ui
        result = (ui if isinstance(ui, dict) else ui.as_dict())["result"]
    else:  # 0.3.64: a V1 node returning {"ui": {"result": [model_file, camera_info]}}
        result = preview().process(model_file)["ui"]["result"]
    assert result[0] == model_file and (output_dir / model_file).is_file()


def test_batches_near_far_and_warnings(output_dir):
    _, m = maps(32)
    two = {k: torch.cat([v, v.flip(2)]) for k, v in m.items()}
    out = run(two["depth"], two["normal"], two["albedo"], depth_scale="near..far", near=2.0, far=5.0, prefix="b/m")
    assert out.result[0] == "b/m_00001.glb" and sorted(os.listdir(output_dir / "b")) == ["m_00001.glb", "m_00002.glb"]
    doc, arrays, _ = read_glb((output_dir / "b" / "m_00001.glb").read_bytes())
    d = np.linalg.norm(primitive(doc, arrays)[1]["POSITION"].astype(np.float64), axis=1)
    assert d.min() == pytest.approx(2.0, abs=1e-5) and d.max() == pytest.approx(5.0, abs=1e-5)
    text = run(m["depth"]).ui.as_dict()["text"][0]  # fit without a normal map: near..far, said so
    assert text.startswith("WARNING: scene 1: no normal map") and "no texture" in text


def test_refusals(output_dir):
    _, m = maps(32)
    with pytest.raises(ValueError, match="outside ComfyUI's output folder"):
        run(m["depth"], prefix="../../escape")
    with pytest.raises(ValueError, match="differs from the depth"):
        run(m["depth"], normal=m["normal"][:, :16])
    with pytest.raises(ValueError, match="near .* must be below far"):
        run(m["depth"], depth_scale="near..far", near=3.0, far=1.0)
    with pytest.raises(ValueError):  # a 0-255 image is refused as for every tool node
        run(m["depth"] * 255)
    assert not any(output_dir.iterdir())


def test_failed_write_leaves_nothing(output_dir, monkeypatch):
    import errno
    _, m = maps(16)
    module = __import__(NODE.__module__, fromlist=["os"])

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(module.os, "link", full_disk)
    with pytest.raises(OSError, match="could not write scene 1's mesh .*nothing half-written"):
        run(m["depth"], m["normal"], m["albedo"])
    assert [p for p in output_dir.rglob("*") if p.is_file()] == []  # no final file, no temporary
