"""What the map-tool nodes show in the UI: the `ui` payload each sends, its numbers and warnings."""
import logging
import re
from pathlib import Path

import pytest
import torch

from comfy_host import comfy_nodes, load_extension
from lumix_core import MAP_NAMES  # noqa: E402
from synthetic_scene import FOV, scene  # noqa: E402

NODES = load_extension()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def maps():
    sc = scene(64)
    return {name: sc[name][None].float() for name in MAP_NAMES}, sc


def shown(out):
    text = out.ui.as_dict()["text"]
    assert isinstance(text, tuple) and len(text) == 1 and isinstance(text[0], str)
    return text[0]


def test_consistency_shows_its_report_and_tool_nodes_are_output_nodes(maps):
    good, _ = maps
    out = NODES["LumiXConsistency"].execute(FOV, "far is bright (LumiX)", **good)
    report = out.result[3]
    assert "WARNING" not in report and "WARNING" not in shown(out)
    residual = float(report.split("photometric residual: ")[1].split()[0])
    degrees = float(report.split("geometric residual: ")[1].split()[0])
    alignment = float(report.split("structural alignment: ")[1].split()[0])
    assert residual < 0.001
    # the node: the three numbers on one line (the report output keeps them in full)
    assert shown(out) == f"photometric {residual:.4f} (0.0% of color), geometric {degrees:.1f} deg, alignment {alignment:.3f}"
    for key in ("LumiXConsistency", "LumiXRelight", "LumiXDepthColormap", "LumiXNormalFlip"):
        # output nodes run with nothing connected, and a cached one's readout is sent again
        assert NODES[key].GET_NODE_INFO_V1()["output_node"] is True, key


def test_consistency_warns_in_the_node_and_the_log_per_scene(maps, caplog):
    good, sc = maps
    moved = torch.roll(sc["albedo"], shifts=(0, 3), dims=(0, 1))[None].float()
    batch = {name: torch.cat([good[name], moved if name == "albedo" else good[name]]) for name in MAP_NAMES}
    with caplog.at_level(logging.WARNING, logger="LumiX"):
        out = NODES["LumiXConsistency"].execute(FOV, "far is bright (LumiX)", **batch)
    text = shown(out)
    lines = text.splitlines()
    warnings = [line for line in lines if line.startswith("WARNING:")]
    assert lines[0].startswith("scene 1: photometric") and lines[1].startswith("scene 2: photometric")  # numbers first
    assert lines[2:] == warnings and all(w.startswith("WARNING: scene 2: ") for w in warnings)  # scene 1 is clean
    assert any("albedo is misaligned with color: its content sits 3 px right" in w for w in warnings)
    assert "scene 1:" in out.result[3] and "WARNING" not in out.result[3]  # the STRING output: numbers only
    assert any("albedo is misaligned" in r.getMessage() for r in caplog.records)


def test_relight_shows_light_and_coverage(maps):
    good, sc = maps
    out = NODES["LumiXRelight"].execute(good["albedo"], good["normal"], 0.0, 90.0, "#ff8000", 1.0, 0.15)
    text = shown(out)
    assert "light from (+0.00, +0.00, +1.00)" in text and "colour (1.00, 0.50, 0.00) x 1" in text
    facing = (sc["N"][..., 2] > 0).double().mean().item()  # light from the camera reaches what faces it
    assert f"light reaches {100 * facing:.0f}% of pixels" in text and "WARNING" not in text
    behind = shown(NODES["LumiXRelight"].execute(good["albedo"], good["normal"], 0.0, -90.0, "#ffffff", 1.0, 0.15))
    lines = behind.splitlines()  # the numbers first, then the light, then the warnings
    assert lines[0] == "light reaches 0% of pixels; 0.0% clipped at white" and lines[1].startswith("light from (")
    assert lines[2].startswith("WARNING: the light reaches only 0% of pixels")


def test_depth_colormap_shows_each_images_range(maps):
    good, _ = maps
    depth = torch.cat([good["depth"] * 0.5 + 0.25, torch.full_like(good["depth"], 0.5)])
    text = shown(NODES["LumiXDepthColormap"].execute(depth, "turbo", True, "far is bright (LumiX)"))
    assert "image 1: relative distance 0.250 (nearest) to 0.750 (farthest)" in text
    assert "WARNING: image 2: depth is flat" in text and "top (warm/bright) end of turbo" in text
    text = shown(NODES["LumiXDepthColormap"].execute(depth[:1], "gray", False, "near is bright"))
    assert "relative distance 0.250 (nearest) to 0.750 (farthest)" in text and "bottom (cool/dark)" in text


def test_normal_flip_shows_the_y_axis_it_flipped(maps):
    good, sc = maps
    mean_y = sc["N"][..., 1].mean().item()
    out = NODES["LumiXNormalFlip"].execute(good["normal"])
    assert f"mean y {mean_y:+.3f} -> {-mean_y:+.3f}" in shown(out)
    not_normals = shown(NODES["LumiXNormalFlip"].execute(torch.zeros(1, 8, 8, 3))).splitlines()
    assert not_normals[0].startswith("mean y ") and not_normals[1].startswith("WARNING: this does not look like a camera")


def test_warnings_of_several_scenes_are_summarised_in_the_node():
    import sys
    summarised = sys.modules[next(n for n in sys.modules if n.endswith("nodes.map_tool_nodes"))].summarised_warnings
    same = [f"scene {i}: depth is flat" for i in (1, 2, 3)] + ["scene 2: albedo is misaligned"]
    assert summarised(same) == ["WARNING: scenes 1, 2, 3: depth is flat", "WARNING: scene 2: albedo is misaligned"]
    many = [f"image {i}: warning {i}" for i in range(1, 8)]
    assert summarised(many) == ["WARNING: image 1: warning 1", "WARNING: image 2: warning 2",
                                "WARNING: image 3: warning 3", "WARNING: 4 more (see the console)"]


def test_the_web_extension_that_shows_node_text_is_registered():
    web = [Path(d) for d in comfy_nodes.EXTENSION_WEB_DIRS.values() if Path(d).resolve() == (REPO / "web").resolve()]
    assert len(web) == 1
    script = (web[0] / "lumix_readout.js").read_text()
    # it reads the `text` of the executed message, on LumiX nodes, into a widget left out of the prompt
    assert "message?.text" in script and 'startsWith("LumiX")' in script and "serialize: false" in script


@pytest.mark.parametrize("near_points,convention,near_column,far_column", [
    (True, "far is bright (LumiX)", 0, -1), (False, "far is bright (LumiX)", 0, -1),
    (True, "near is bright", -1, 0), (False, "near is bright", -1, 0)])
def test_depth_colormap_options_say_what_they_do(near_points, convention, near_column, far_column):
    ramp = torch.linspace(0.1, 0.9, 8).view(1, 1, 8, 1).expand(1, 4, 8, 3)  # grey rises to the right
    out = NODES["LumiXDepthColormap"].execute(ramp, "gray", near_points, convention).result[0]
    near, far = out[0, 0, near_column], out[0, 0, far_column]
    expected_near = 1.0 if near_points else 0.0  # gray: the top end is white
    assert torch.allclose(near, torch.full((3,), expected_near), atol=1e-6)
    assert torch.allclose(far, torch.full((3,), 1.0 - expected_near), atol=1e-6)


def test_depth_colormap_toggle_names_its_two_states():
    required = NODES["LumiXDepthColormap"].GET_NODE_INFO_V1()["input"]["required"]
    assert list(required) == ["depth", "colormap", "near_points", "depth_convention"]  # widget order of old workflows
    kind, options = required["near_points"]
    assert kind == "BOOLEAN" and options["default"] is True
    assert (options["label_on"], options["label_off"]) == ("at the warm/bright end", "at the cool/dark end")
