"""LumiX Save Maps: a scene folder is complete or absent (full disk, odd inputs), lumix.json is strict
JSON and non-finite maps are reported in the UI (issue 10, items 3 and 8)."""
import errno
import os
import sys

import numpy as np
import pytest
import torch

from comfy_host import load_extension, output_dir, with_hidden  # noqa: F401  (first: skips without ComfyUI; output_dir: a fixture)
from lumix_core import MAP_NAMES  # noqa: E402
from disk_faults import FullDisk, strict_loads  # noqa: E402
from synthetic_scene import FOV, scene  # noqa: E402

NODES = load_extension()
Save = NODES["LumiXSaveMaps"]
EXPORT = sys.modules[Save.__module__.replace("nodes.map_tool_nodes", "lumix_core.export")]


@pytest.fixture(scope="module")
def maps():
    one = scene(size=32)
    return {name: torch.stack([one[name].float(), one[name].flip(1).float()]) for name in MAP_NAMES}


def strict_json(path):
    return strict_loads(path.read_text())


def assert_only_complete_scenes(root):
    """Every folder holds lumix.json and exactly the files it lists; no temporary leftovers anywhere."""
    leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if ".part" in n]
    assert leftovers == []
    folders = sorted(p for p in root.rglob("scene_*") if p.is_dir())
    for folder in folders:
        sidecar = strict_json(folder / "lumix.json")
        assert sorted(os.listdir(folder)) == sorted(sidecar["files"] + ["lumix.json"])
    return [f.name for f in folders]


@pytest.mark.parametrize("scene_fraction", [0.0, 0.5, 1.5])
def test_full_disk_leaves_only_complete_scene_folders(output_dir, maps, monkeypatch, scene_fraction):
    counter = FullDisk()
    monkeypatch.setattr(EXPORT, "open_for_writing", counter)
    Save.execute("measure/scene", FOV, **{n: m[:1] for n, m in maps.items()})
    one_scene = counter.written  # bytes of one scene through open_for_writing
    monkeypatch.setattr(EXPORT, "open_for_writing", FullDisk(int(one_scene * scene_fraction)))
    with pytest.raises(OSError, match="could not write scene .*No space left on device.*folder was removed") as err:
        Save.execute("LumiX/scene", FOV, **maps)
    assert err.value.errno == errno.ENOSPC
    done = assert_only_complete_scenes(output_dir / "LumiX") if (output_dir / "LumiX").exists() else []
    assert done == (["scene_00001"] if scene_fraction > 1 else [])


def test_nan_maps_are_reported_and_the_sidecar_is_strict_json(output_dir, maps):
    broken = {n: m.clone() for n, m in maps.items()}
    broken["albedo"][1, :4, :4] = float("nan")  # scene 2: 16 pixels x 3 channels
    broken["normal"][1] = float("inf")
    out = Save.execute("nan/scene", FOV, **broken)
    text = out.ui["text"][0]
    assert "WARNING scene 2" in text and "albedo: 48" in text and f"normal: {32 * 32 * 3}" in text
    assert "scene 1" not in text
    second = output_dir / "nan" / "scene_00002"
    sidecar = strict_json(second / "lumix.json")
    assert sidecar["non_finite_pixels"]["albedo"] == 48 and sidecar["non_finite_pixels"]["color"] == 0
    for path in sidecar.get("non_finite_numbers", []):  # any NaN metric is a flagged null
        value = sidecar
        for part in path.replace("]", "").replace("[", ".").split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        assert value is None
    from PIL import Image
    albedo = np.asarray(Image.open(second / "albedo.png"))
    assert (albedo[:4, :4] == 0).all()
    expected = np.clip(255.0 * maps["albedo"][1, 4:].numpy(), 0, 255).round().astype(np.uint8)
    assert np.array_equal(albedo[4:], expected)
    assert (np.asarray(Image.open(second / "normal.png")) == 255).all()  # +Inf written as 1
    assert strict_json(output_dir / "nan" / "scene_00001" / "lumix.json")["non_finite_pixels"]["albedo"] == 0


def test_grey_maps_are_saved_as_rgb(output_dir, maps):
    grey = maps["depth"][..., :1]
    Save.execute("grey/scene", FOV, depth=grey, color=maps["color"])
    from PIL import Image
    depth = np.asarray(Image.open(output_dir / "grey" / "scene_00001" / "depth.png"))
    expected = np.clip(255.0 * grey[0].numpy(), 0, 255).round().astype(np.uint8)
    assert depth.shape == (32, 32, 3) and all(np.array_equal(depth[..., c:c + 1], expected) for c in range(3))
    assert assert_only_complete_scenes(output_dir / "grey") == ["scene_00001", "scene_00002"]


@pytest.mark.parametrize("shape,problem", [((1, 0, 0, 3), "is empty"), ((1, 32, 32, 5), "has 5 channels")])
def test_odd_shapes_are_refused_before_any_folder(output_dir, maps, shape, problem):
    with pytest.raises(ValueError, match=f"the depth input {problem}"):
        Save.execute("odd/scene", FOV, depth=torch.rand(shape))
    assert not (output_dir / "odd").exists() or os.listdir(output_dir / "odd") == []


def test_strip_image_is_saved_completely_with_strict_json(output_dir):
    Save.execute("strip/scene", FOV, color=torch.rand(1, 1, 1000, 3), depth=torch.rand(1, 1, 1000, 1),
                 normal=torch.rand(1, 1, 1000, 3))
    assert assert_only_complete_scenes(output_dir / "strip") == ["scene_00001"]
    sidecar = strict_json(output_dir / "strip" / "scene_00001" / "lumix.json")
    assert "metrics.geometric.mean_degrees" in sidecar["non_finite_numbers"]  # no valid normals on a 1-pixel strip
    assert sidecar["metrics"]["geometric"]["mean_degrees"] is None


def test_seed_of_the_last_scene_wraps(output_dir, maps):
    graph = {"10": {"class_type": "LumiXSampler", "inputs": {"seed": 2**64 - 1}},
             "40": {"class_type": "LumiXSaveMaps", "inputs": {"color": ["10", 2]}}}
    from comfy_api.v0_0_2 import io
    save = with_hidden(Save, {io.Hidden.prompt: graph, io.Hidden.unique_id: "40"})
    save.execute("seed/scene", FOV, color=maps["color"])
    seeds = [strict_json(output_dir / "seed" / f"scene_0000{i}" / "lumix.json")["generation"].get("seed")
             for i in (1, 2)]
    assert seeds == [2**64 - 1, 0]
