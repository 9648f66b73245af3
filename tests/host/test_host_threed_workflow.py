"""The shipped 3D workflow (lumix_from_3d_render_passes) run in this process with tiny models: a Blender-like
multilayer EXR in input/ -> depth and normal held at t = 0 with guidance 1.0 and no CFG -> three maps
generated, the maps and layers.exr saved, a .glb written."""
from pathlib import Path

import numpy as np
import pytest

from test_host_workflows import (MODEL_CALLS, all_nodes, placeholder_models, run_shipped,  # noqa: F401  (fixtures)
                                 output_dir)
from comfy_host import folder_paths
from render_pass_scene import blender_rotation, render

OpenEXR = pytest.importorskip("OpenEXR", reason="the optional openexr package is not installed")
pytest.importorskip("pygltflib", reason="pygltflib (requirements.txt) is not installed")


def test_render_passes_workflow_holds_depth_and_normal(run_shipped):
    sc = render(48, 64, fov=60.0)  # the workflow's field of view
    channels = {"ViewLayer.Depth.Z": sc["Z"].astype(np.float32)}
    world = sc["N"] @ blender_rotation(90.0, 0.0, 0.0).T  # the workflow's camera rotation
    for k, axis in enumerate("XYZ"):
        channels[f"ViewLayer.Normal.{axis}"] = world[..., k].astype(np.float32)
    path = Path(folder_paths.get_input_directory()) / "render_passes.exr"
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as f:
        f.write(str(path))

    def edit(prompt):
        for node in prompt.values():
            if node["class_type"] == "LumiXSampler":
                node["inputs"].update(steps=3, area_width=256, area_height=192)
    _, executor = run_shipped("lumix_from_3d_render_passes", edit)
    assert len(MODEL_CALLS) == 3
    for call in MODEL_CALLS:
        assert call["batch"] == 5 and call["conds"] == [0]  # no negative pass
        assert call["guidance"].tolist() == [1.0] * 5
        assert call["t"][3] == 0 and call["t"][4] == 0 and (call["t"][:3] > 0).all()  # depth, normal held
        assert call["x"].shape[-2:] == (192 // 8, 256 // 8)  # the passes' 4:3 aspect within the area budget
    out = Path(folder_paths.get_output_directory()) / "LumiX"
    assert sorted(p.name.split("_")[0] for p in out.glob("*.png")) == ["albedo", "color", "irradiance"]
    assert [p.name for p in out.glob("mesh_*.glb")] == ["mesh_00001.glb"]
    layers = out / "from3d_00001" / "layers.exr"
    with OpenEXR.File(str(layers), separate_channels=True) as f:
        names = set(f.channels())
        depth_z = np.array(f.channels()["depth.Z"].pixels)
    assert {"albedo.R", "depth.Z", "normal.X"} <= names and depth_z.shape == (192, 256)
    assert depth_z.min() == pytest.approx(0.0, abs=0.02) and depth_z.max() == pytest.approx(1.0, abs=0.02)
