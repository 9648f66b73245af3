"""The map-tool nodes inside a real ComfyUI, on maps made by the LumiX Intrinsic Sampler."""
import json
import os

import numpy as np
import pytest
import torch

from comfy_host import TinyVAE, conditioning, load_extension, output_dir, tiny_lumix_model, with_hidden  # noqa: F401  (output_dir: a fixture)
from lumix_core import MAP_NAMES  # noqa: E402
from lumix_core.export import exr_available  # noqa: E402
from synthetic_scene import FOV, scene, shift  # noqa: E402

NODES = load_extension()


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    model = tiny_lumix_model(tmp_path_factory.mktemp("tools_models"), "tools_lumix.safetensors")
    out = NODES["LumiXSampler"].execute(model, conditioning(1), conditioning(2), TinyVAE(), 5, 2, 1.0, "euler",
                                        "simple", 64, 64, 2, True).result
    return dict(zip(MAP_NAMES, out[:5]))


def test_tool_nodes_are_registered():
    for key, name in (("LumiXConsistency", "LumiX Map Consistency"), ("LumiXRelight", "LumiX Relight"),
                      ("LumiXSaveMaps", "LumiX Save Maps"), ("LumiXDepthColormap", "LumiX Depth Colormap"),
                      ("LumiXNormalFlip", "LumiX Normal OpenGL <-> DirectX")):
        assert NODES[key].GET_NODE_INFO_V1()["display_name"] == name
    assert NODES["LumiXSaveMaps"].GET_NODE_INFO_V1()["output_node"] is True


def test_consistency_on_sampler_maps(sampled):
    out = NODES["LumiXConsistency"].execute(FOV, "far is bright (LumiX)", **sampled)
    heat_p, heat_g, heat_s, report = out.result
    for heat in (heat_p, heat_g, heat_s):
        assert heat.shape == (2, 64, 64, 3) and heat.min() >= 0 and heat.max() <= 1
    assert report.count("photometric residual:") == 2 and "scene 2:" in report
    shown = out.ui.as_dict()["text"][0]  # random tiny-model maps: warnings first, then the report
    assert shown.endswith(report) and all(line.startswith("WARNING: scene ") for line in shown[:-len(report)].splitlines())


def test_consistency_separates_consistent_from_broken_maps():
    sc = scene(64)
    good = {name: sc[name][None].float() for name in MAP_NAMES}
    bad = dict(good, normal=torch.flip(good["normal"], dims=[2]), albedo=shift(sc["albedo"], 3)[None].float())
    text_good = NODES["LumiXConsistency"].execute(FOV, "far is bright (LumiX)", **good).result[3]
    text_bad = NODES["LumiXConsistency"].execute(FOV, "far is bright (LumiX)", **bad).result[3]

    def number(text, label):
        return float(text.split(label + ": ")[1].split()[0])

    assert number(text_good, "photometric residual") < 0.001 < number(text_bad, "photometric residual")
    assert number(text_good, "geometric residual") * 5 < number(text_bad, "geometric residual")
    assert number(text_good, "structural alignment") > number(text_bad, "structural alignment")


def test_consistency_errors():
    with pytest.raises(ValueError, match="connect at least one map"):
        NODES["LumiXConsistency"].execute(FOV, "far is bright (LumiX)")
    with pytest.raises(ValueError, match="differ in batch or size"):
        NODES["LumiXConsistency"].execute(FOV, "far is bright (LumiX)", color=torch.zeros(1, 64, 64, 3),
                                          depth=torch.zeros(1, 32, 64, 3))


def test_relight_and_display_nodes(sampled):
    relit = NODES["LumiXRelight"].execute(sampled["albedo"], sampled["normal"], 45.0, 45.0, "#ffe8c0", 1.0, 0.15,
                                          sampled["irradiance"]).result[0]
    assert relit.shape == (2, 64, 64, 3) and relit.dtype == torch.float32 and torch.isfinite(relit).all()
    with pytest.raises(ValueError, match="not a hex colour"):
        NODES["LumiXRelight"].execute(sampled["albedo"], sampled["normal"], 0.0, 90.0, "warm", 1.0, 0.1)
    colored = NODES["LumiXDepthColormap"].execute(sampled["depth"], "turbo", True, "far is bright (LumiX)").result[0]
    assert colored.shape == (2, 64, 64, 3)
    flipped = NODES["LumiXNormalFlip"].execute(sampled["normal"]).result[0]
    assert torch.allclose(flipped[..., 1], 1 - sampled["normal"][..., 1]) and torch.equal(flipped[..., 0], sampled["normal"][..., 0])


def test_save_maps_writes_scene_folders_without_overwriting(sampled, output_dir):
    from PIL import Image
    import png
    graph = {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a tiny room", "clip": ["2", 0]}},
        "8": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 0]}},
        "10": {"class_type": "LumiXSampler", "inputs": {"seed": 5, "steps": 2, "cfg": 1.0, "positive": ["8", 0],
                                                         "negative": ["7", 0], "width": 64, "height": 64}},
        "40": {"class_type": "LumiXSaveMaps", "inputs": {"albedo": ["10", 0], "depth": ["10", 3]}},
    }
    from comfy_api.v0_0_2 import io
    # what ComfyUI's executor does: a class clone carrying the hidden inputs
    save = with_hidden(NODES["LumiXSaveMaps"], {io.Hidden.prompt: graph, io.Hidden.unique_id: "40",
                                                io.Hidden.extra_pnginfo: {"workflow": {"nodes": []}}})
    out = save.execute("LumiX/scene", FOV, **sampled)
    save.execute("LumiX/scene", FOV, **sampled)
    folders = sorted(p.name for p in (output_dir / "LumiX").iterdir())
    assert folders == ["scene_00001", "scene_00002", "scene_00003", "scene_00004"]  # 2 scenes x 2 runs, none overwritten
    first = output_dir / "LumiX" / "scene_00001"
    names = set(os.listdir(first))
    expected = {f"{m}.png" for m in MAP_NAMES} | {"depth_16bit.png", "normal_16bit.png", "lumix.json"}
    if exr_available():
        expected |= {f"{m}.exr" for m in MAP_NAMES}
    assert names == expected
    png8 = np.asarray(Image.open(first / "albedo.png"))
    assert np.array_equal(png8, np.clip(255.0 * sampled["albedo"][0].numpy(), 0, 255).round().astype(np.uint8))
    assert json.loads(Image.open(first / "albedo.png").text["prompt"]) == graph
    w, h, rows, meta = png.Reader(filename=str(first / "normal_16bit.png")).read()
    normal16 = np.array(list(rows), dtype=np.uint16).reshape(64, 64, 3)
    assert meta["bitdepth"] == 16
    assert np.array_equal(normal16, np.round(np.clip(sampled["normal"][0].double().numpy(), 0, 1) * 65535).astype(np.uint16))
    sidecar = json.loads((first / "lumix.json").read_text())
    assert sidecar["generation"]["prompt"] == "a tiny room" and sidecar["generation"]["negative_prompt"] == "blurry"
    assert sidecar["generation"]["seed"] == 5
    assert json.loads((output_dir / "LumiX" / "scene_00002" / "lumix.json").read_text())["generation"]["seed"] == 6
    assert set(sidecar["metrics"]) == {"photometric", "geometric", "structural"}
    assert sidecar["conventions"]["maps"]["normal"] == "normal"
    images = out.ui["images"] if isinstance(out.ui, dict) else out.ui.as_dict()["images"]
    assert len(images) == 10 and images[0]["subfolder"] == os.path.join("LumiX", "scene_00001")


def test_save_maps_without_openexr_still_saves_pngs(sampled, output_dir, monkeypatch):
    module = __import__(NODES["LumiXSaveMaps"].__module__, fromlist=["exr_available"])
    monkeypatch.setattr(module, "exr_available", lambda: False)
    out = NODES["LumiXSaveMaps"].execute("nox", FOV, color=sampled["color"][:1], depth=sampled["depth"][:1])
    folder = output_dir / "nox_00001"
    assert sorted(os.listdir(folder)) == ["color.png", "depth.png", "depth_16bit.png", "lumix.json"]
    assert "pip install openexr" in out.ui["text"][0]
    with pytest.raises(ValueError, match="outside ComfyUI's output folder"):
        NODES["LumiXSaveMaps"].execute("../../escape", FOV, color=sampled["color"])
