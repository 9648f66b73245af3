"""LumiX Save Maps' multilayer EXR option inside a real ComfyUI."""
import json
import os

import numpy as np
import pytest

from comfy_host import load_extension, output_dir  # noqa: F401  (output_dir: a fixture)
from lumix_core import MAP_NAMES  # noqa: E402
from synthetic_scene import FOV, scene  # noqa: E402

NODES = load_extension()
OpenEXR = pytest.importorskip("OpenEXR", reason="the optional openexr package is not installed")


def two_scenes(size=32):
    a, b = scene(size), scene(size)
    return {name: np.stack([a[name].numpy(), np.flip(b[name].numpy(), 1).copy()]) for name in MAP_NAMES}


def test_save_maps_writes_one_multilayer_exr_per_scene(output_dir):
    import torch
    maps = {name: torch.from_numpy(v).float() for name, v in two_scenes().items()}
    NODES["LumiXSaveMaps"].execute("LumiX/ml", 50.0, True, **maps)
    for s, folder in enumerate(("ml_00001", "ml_00002")):
        path = output_dir / "LumiX" / folder / "layers.exr"
        with OpenEXR.File(str(path), separate_channels=True) as f:
            header, channels = dict(f.header()), {k: np.array(c.pixels) for k, c in f.channels().items()}
        assert sorted(channels) == sorted([f"{m}.{c}" for m in ("albedo", "irradiance", "color") for c in "RGB"]
                                          + ["depth.Z", "normal.X", "normal.Y", "normal.Z"])
        assert header["lumix:fovDegrees"] == pytest.approx(50.0)
        # the same numbers as the per-map EXRs of the same scene
        with OpenEXR.File(str(output_dir / "LumiX" / folder / "albedo.exr")) as f:
            albedo = np.array(f.channels()["RGB"].pixels)
        assert np.array_equal(np.stack([channels[f"albedo.{c}"] for c in "RGB"], -1), albedo)
        normal = maps["normal"][s].double().numpy() * 2 - 1
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        assert np.abs(channels["normal.Y"] - normal[..., 1]).max() < 1e-6
        sidecar = json.loads((path.parent / "lumix.json").read_text())
        assert "layers.exr" in sidecar["files"] and "multilayer_exr" in sidecar["conventions"]


def test_multilayer_exr_is_off_by_default(output_dir):
    import torch
    maps = {name: torch.from_numpy(v[:1]).float() for name, v in two_scenes(16).items()}
    NODES["LumiXSaveMaps"].execute("plain", FOV, **maps)
    assert "layers.exr" not in os.listdir(output_dir / "plain_00001")
    schema = NODES["LumiXSaveMaps"].GET_NODE_INFO_V1()["input"]
    assert schema["optional"]["multilayer_exr"][1]["default"] is False
