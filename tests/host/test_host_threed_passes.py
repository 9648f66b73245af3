"""LumiX Render Passes to Maps inside a real ComfyUI: files from the input folder only, full precision,
the analytic scene's LumiX maps, and the maps held by the sampler coming out as given."""
import numpy as np
import pytest
import torch

from comfy_host import TinyVAE, conditioning, folder_paths, load_extension, tiny_lumix_model
from render_pass_scene import FOV, blender_rotation, lumix_depth, lumix_normal, render

NODES = load_extension()
NODE = NODES["LumiXRenderPassesToMaps"]
ROTATION = (65.0, 5.0, -20.0)
NEAR, FAR = 2.0, 12.0


@pytest.fixture
def input_dir(tmp_path):
    before = folder_paths.get_input_directory()
    folder = tmp_path / "input"
    folder.mkdir()
    folder_paths.set_input_directory(str(folder))
    yield folder
    folder_paths.set_input_directory(before)


def run(depth_file="(none)", normal_file="(none)", depth_encoding="planar Z (scene units)",
        depth_range="image's nearest..farthest", normal_space=None, normal_values=None,
        rotation=ROTATION, **images):
    from lumix_core import render_passes as rp
    return NODE.execute(depth_file, normal_file, depth_encoding, depth_range, NEAR, FAR,
                        normal_space or rp.NORMAL_WORLD, normal_values or rp.VALUES_AUTO, *rotation, FOV, **images)


def write_blender_exr(path, sc):
    import OpenEXR
    channels = {"ViewLayer.Depth.Z": sc["Z"].astype(np.float32)}
    world = sc["N"] @ blender_rotation(*ROTATION).T
    for k, axis in enumerate("XYZ"):
        channels[f"ViewLayer.Normal.{axis}"] = world[..., k].astype(np.float32)
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as f:
        f.write(str(path))


def test_registered_in_the_3d_menu():
    info = NODE.GET_NODE_INFO_V1()
    assert info["display_name"] == "LumiX Render Passes to Maps" and info["category"] == "LumiX/3D"
    assert info["output"] == ["IMAGE", "IMAGE"]


def test_blender_exr_from_the_input_folder(input_dir):
    pytest.importorskip("OpenEXR")
    sc = render(48, 64)
    (input_dir / "renders").mkdir()
    write_blender_exr(input_dir / "renders" / "passes.exr", sc)
    (input_dir / "notes.txt").write_text("not a pass")
    spec = NODE.GET_NODE_INFO_V1()["input"]["required"]["depth_file"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    assert options == ["(none)", "renders/passes.exr"]  # listed from input/, subfolders included
    out = run("renders/passes.exr", "renders/passes.exr")
    depth, normal = out.result
    assert depth.shape == (1, 48, 64, 3) and normal.shape == (1, 48, 64, 3) and depth.dtype == torch.float32
    assert np.abs(depth[0, ..., 0].double().numpy() - lumix_depth(sc["D"])).max() < 2e-6
    assert np.abs(normal[0].double().numpy() - lumix_normal(sc["N"])).max() < 2e-6
    text = out.ui.as_dict()["text"][0]
    assert "WARNING" not in text and "agree to" in text
    agreement = float(text.split("agree to ")[1].split(" deg")[0])
    assert agreement < 10.0


def test_wrong_rotation_is_flagged(input_dir):
    pytest.importorskip("OpenEXR")
    write_blender_exr(input_dir / "passes.exr", render(48, 64))
    text = run("passes.exr", "passes.exr", rotation=(0.0, 0.0, 0.0)).ui.as_dict()["text"][0]
    assert text.startswith("WARNING: ")


def test_image_inputs_and_16bit_png(input_dir):
    import png
    from lumix_core import render_passes as rp
    sc = render(32, 32)
    z = (sc["Z"] - NEAR) / (FAR - NEAR)
    pixels = np.round(z * 65535).astype(np.uint16)
    with open(input_dir / "z16.png", "wb") as f:
        png.Writer(32, 32, greyscale=True, bitdepth=16).write(f, pixels.tolist())
    normal_image = torch.from_numpy(sc["N"] * [1, -1, 1])[None].float()  # DirectX vectors as an IMAGE
    depth, normal = run("z16.png", depth_encoding=rp.DEPTH_Z_NORMALISED, normal_space=rp.NORMAL_CAMERA_DIRECTX,
                        normal_image=normal_image).result
    assert np.abs(depth[0, ..., 0].double().numpy() - lumix_depth(sc["D"])).max() < 1e-4
    assert np.abs(normal[0].double().numpy() - lumix_normal(sc["N"])).max() < 1e-6


def test_refusals_never_leave_the_input_folder(input_dir, tmp_path):
    (tmp_path / "secret.png").write_bytes(b"x")
    for name in ("../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(ValueError, match="not a file in ComfyUI's input folder") as info:
            run(name)
        assert str(tmp_path) not in str(info.value).replace(name, "")
    with pytest.raises(ValueError, match="no pass given"):
        run()
    sc = render(16, 16)
    (input_dir / "d.png").write_bytes(b"")
    with pytest.raises(ValueError, match="both depth_file and depth_image"):
        run("d.png", depth_image=torch.zeros(1, 16, 16, 3))
    with pytest.raises(ValueError, match="differ in count or size"):
        run(depth_image=torch.from_numpy(sc["Z"])[None, ..., None].float(), normal_image=torch.zeros(1, 8, 16, 3))


def test_sampler_holds_the_converted_maps_as_given(tmp_path):
    """depth + normal from render passes held by the LumiX sampler: they come out exactly as given, the
    other three maps are generated."""
    from lumix_core import render_passes as rp
    sc = render(64, 64)
    depth, normal = run(depth_image=torch.from_numpy(sc["D"])[None, ..., None].expand(-1, -1, -1, 3).float(),
                        normal_image=torch.from_numpy(sc["N"])[None].float(), depth_encoding=rp.DEPTH_DISTANCE,
                        normal_space=rp.NORMAL_CAMERA_OPENGL).result
    model = tiny_lumix_model(tmp_path, "threed_lumix.safetensors")
    out = NODES["LumiXSampler"].execute(model, conditioning(1), conditioning(2), TinyVAE(), 3, 2, 1.0, "euler",
                                        "simple", 64, 64, 1, True, depth=depth, normal=normal,
                                        held_maps_size="width x height").result
    assert torch.equal(out[3], depth) and torch.equal(out[4], normal)
    for generated in out[:3]:
        assert generated.shape == (1, 64, 64, 3) and torch.isfinite(generated).all()
        assert not torch.equal(generated, depth)


def test_grey_alpha_depth_image_reads_the_grey_channel():
    from lumix_core import render_passes as rp
    sc = render(24, 32)
    grey = torch.from_numpy(sc["D"])[None, ..., None].float()
    with_alpha = torch.cat([grey, torch.ones_like(grey)], -1)
    one = run(depth_image=grey, depth_encoding=rp.DEPTH_DISTANCE).result[0]
    two = run(depth_image=with_alpha, depth_encoding=rp.DEPTH_DISTANCE).result[0]
    assert torch.equal(one, two)
    assert np.abs(one[0, ..., 0].double().numpy() - lumix_depth(sc["D"])).max() < 1e-6
