import json
import math

import numpy as np
import pytest
import torch

from lumix_core import maps as registry
from lumix_core.conventions import (decode_depth, decode_normals, encode_normals, flip_normal_y, linear_to_srgb,
                                    srgb_to_linear)
from lumix_core.display import COLORMAPS, apply_colormap, colorize_depth
from lumix_core.export import exr_available, linear_channels, scene_folder, to_uint16, write_exr, write_png16, write_sidecar
from lumix_core.metrics import consistency, geometric_residual, normals_from_depth, photometric_residual, structural_alignment
from lumix_core.relight import light_direction, parse_hex_color, relight
from synthetic_scene import AMBIENT, COLOR_SCALE, FOV, scene, shift


@pytest.fixture(scope="module")
def sc():
    return scene()


# ---- conventions ------------------------------------------------------------------------------

def test_registry_states_every_maps_encoding():
    assert {m.name: m.encoding for m in registry.MAPS} == {
        "albedo": "srgb", "irradiance": "srgb", "color": "srgb", "depth": "depth", "normal": "normal"}
    assert set(registry.ENCODINGS) == {"srgb", "depth", "normal"}
    assert "+z towards the camera" in registry.ENCODINGS["normal"] and "0 is the nearest" in registry.ENCODINGS["depth"]


def test_srgb_curve_matches_the_standard_and_round_trips():
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12, rtol=0)
    assert abs(srgb_to_linear(torch.tensor(0.5, dtype=torch.float64)).item() - 0.21404114) < 1e-7
    assert abs(srgb_to_linear(torch.tensor(0.04, dtype=torch.float64)).item() - 0.04 / 12.92) < 1e-12


def test_normal_encoding_and_directx_flip():
    n = torch.nn.functional.normalize(torch.randn(8, 8, 3, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(decode_normals(encode_normals(n)), n)
    facing = decode_normals(torch.tensor([[[0.5, 0.5, 1.0]]]))
    assert torch.allclose(facing, torch.tensor([[[0.0, 0.0, 1.0]]]))
    rgb = encode_normals(n)
    flipped = flip_normal_y(rgb)
    assert torch.equal(flipped[..., [0, 2]], rgb[..., [0, 2]]) and torch.allclose(decode_normals(flipped)[..., 1], -n[..., 1])
    assert torch.allclose(flip_normal_y(flipped), rgb)


def test_depth_decoding():
    rgb = torch.tensor([[[0.2, 0.3, 0.4]]])
    assert torch.allclose(decode_depth(rgb), torch.tensor([[0.3]]))
    assert torch.allclose(decode_depth(rgb, near_is_bright=True), torch.tensor([[0.7]]))


# ---- metrics on a scene consistent by construction ------------------------------------------------

def test_photometric_near_zero_when_consistent_and_larger_when_shifted(sc):
    good = photometric_residual(sc["color"], sc["albedo"], sc["irradiance"])
    assert good["residual"] < 1e-9 and abs(good["scale"] - COLOR_SCALE) < 1e-9
    bad = photometric_residual(sc["color"], shift(sc["albedo"], 3), sc["irradiance"])
    assert bad["residual"] > 0.005 and bad["residual"] > 1000 * max(good["residual"], 1e-12)
    assert bad["map"].shape == (96, 96)


def test_normals_from_depth_of_the_sphere(sc):
    n = normals_from_depth(sc["D"], FOV)
    def eroded(mask):  # pixels whose central differences stay on the same surface
        return mask & torch.roll(mask, 2, 0) & torch.roll(mask, -2, 0) & torch.roll(mask, 2, 1) & torch.roll(mask, -2, 1)

    interior = eroded(sc["hit_sphere"])
    angle = torch.rad2deg(torch.acos((n * sc["N"]).sum(-1).clamp(-1, 1)))
    assert angle[interior].mean() < 1.0
    wall = eroded(~sc["hit_sphere"])
    wall[[0, -1], :] = False
    wall[:, [0, -1]] = False
    assert torch.allclose(n[wall], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9)


def test_geometric_near_zero_when_consistent_large_for_a_wrong_normal_sign(sc):
    good = geometric_residual(sc["depth"], sc["normal"], FOV)
    assert good["mean_degrees"] < 2.0
    assert good["valid_fraction"] > 0.8
    assert abs(math.log(good["offset"] / sc["offset"])) < math.log(1.6)  # the fitted offset is close to the truth
    wrong = geometric_residual(sc["depth"], flip_normal_y(sc["normal"]), FOV)
    assert wrong["mean_degrees"] > 10 * good["mean_degrees"] and wrong["mean_degrees"] > 10
    shifted = geometric_residual(sc["depth"], shift(sc["normal"], 4), FOV)
    assert shifted["mean_degrees"] > 2 * good["mean_degrees"]


def test_structural_alignment_finds_the_shift(sc):
    maps = {k: sc[k] for k in registry.MAP_NAMES}
    good = structural_alignment(maps)
    assert all(m["best_offset"] == (0, 0) for m in good["maps"].values())
    bad = structural_alignment({**maps, "albedo": shift(sc["albedo"], 3)})
    assert bad["maps"]["albedo"]["best_offset"] == (3, 0)
    assert bad["maps"]["albedo"]["correlation"] < good["maps"]["albedo"]["correlation"] - 0.2
    assert bad["alignment"] < good["alignment"]
    down = structural_alignment({**maps, "depth": shift(sc["depth"], 0, 2)})
    assert down["maps"]["depth"]["best_offset"] == (0, 2)


def test_consistency_report_with_missing_maps(sc):
    full = consistency({k: sc[k] for k in registry.MAP_NAMES}, FOV)
    text = full.text()
    assert "photometric residual: 0.0000" in text and "geometric residual:" in text and "structural alignment:" in text
    numbers = full.numbers()
    assert set(numbers) == {"photometric", "geometric", "structural"} and "map" not in numbers["photometric"]
    json.dumps(numbers, default=float)
    partial = consistency({"color": sc["color"], "depth": sc["depth"]})
    assert partial.photometric is None and partial.geometric is None and partial.structural is not None
    assert "photometric residual: not computed (needs albedo and irradiance)" in partial.text()
    assert "geometric residual: not computed (needs normal)" in partial.text()
    with pytest.raises(ValueError, match="unknown maps"):
        consistency({"roughness": sc["color"]})


# ---- relighting --------------------------------------------------------------------------------

def test_light_direction_conventions():
    assert torch.allclose(light_direction(0, 90), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(light_direction(0, 0), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(light_direction(90, 0), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert parse_hex_color("#ff8000") == (1.0, 128 / 255, 0.0) and parse_hex_color("fff") == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="not a hex colour"):
        parse_hex_color("orange")


@pytest.mark.parametrize("azimuth,elevation", [(0, 90), (0, 0), (135, 30)])
def test_relight_sphere_closed_form(sc, azimuth, elevation):
    a = torch.full((96, 96, 3), 0.5, dtype=torch.float64)
    out = relight(linear_to_srgb(a), sc["normal"], azimuth, elevation, light_rgb=(1.0, 0.5, 0.25),
                  intensity=0.8, ambient=0.1)
    az, el = math.radians(azimuth), math.radians(elevation)
    l_dir = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float64)
    shade = (sc["N"] * l_dir).sum(-1, keepdim=True).clamp_min(0)
    expected = linear_to_srgb(0.5 * (0.8 * shade * torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) + 0.1))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_relight_uses_irradiance_for_ambient(sc):
    dark = relight(sc["albedo"], sc["normal"], 0, 90, intensity=0.0, ambient=1.0, irradiance=sc["irradiance"])
    expected = linear_to_srgb(sc["albedo_linear"] * srgb_to_linear(sc["irradiance"]))
    torch.testing.assert_close(dark, expected, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="differ in size"):
        relight(sc["albedo"], sc["normal"][:10], 0, 90)


# ---- display -------------------------------------------------------------------------------------

def test_colormaps():
    for name, points in COLORMAPS.items():
        ends = apply_colormap(torch.tensor([0.0, 1.0], dtype=torch.float64), name)
        assert torch.allclose(ends, torch.tensor([points[0][1], points[-1][1]], dtype=torch.float64))
    ramp = apply_colormap(torch.linspace(0, 1, 50, dtype=torch.float64), "inferno")
    luminance = ramp @ torch.tensor([0.2126, 0.7152, 0.0722], dtype=torch.float64)
    assert (luminance[1:] >= luminance[:-1] - 1e-9).all()
    with pytest.raises(ValueError, match="unknown colour map"):
        apply_colormap(torch.zeros(2), "jet")


def test_colorize_depth_puts_near_at_the_top(sc):
    out = colorize_depth(sc["depth"], "gray")
    nearest = torch.unravel_index(sc["D"].argmin(), sc["D"].shape)
    farthest = torch.unravel_index(sc["D"].argmax(), sc["D"].shape)
    assert torch.allclose(out[nearest], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(out[farthest], torch.zeros(3, dtype=torch.float64))


# ---- export --------------------------------------------------------------------------------------

def test_png16_reads_back_bit_exact(tmp_path):
    import png
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, size=(7, 5, 3), dtype=np.uint16)
    grey = rng.integers(0, 65536, size=(6, 9), dtype=np.uint16)
    write_png16(str(tmp_path / "rgb.png"), rgb)
    write_png16(str(tmp_path / "grey.png"), grey)
    w, h, rows, info = png.Reader(filename=str(tmp_path / "rgb.png")).read()
    assert (w, h, info["bitdepth"], info["planes"]) == (5, 7, 16, 3)
    assert np.array_equal(np.array(list(rows), dtype=np.uint16).reshape(7, 5, 3), rgb)
    w, h, rows, info = png.Reader(filename=str(tmp_path / "grey.png")).read()
    assert info["greyscale"] and np.array_equal(np.array(list(rows), dtype=np.uint16), grey)
    assert to_uint16(np.array([0.0, 0.5, 1.0, 2.0])).tolist() == [0, 32768, 65535, 65535]
    with pytest.raises(ValueError, match="uint16"):
        write_png16(str(tmp_path / "x.png"), rgb.astype(np.float32))


@pytest.mark.skipif(not exr_available(), reason="openexr is not installed (optional extra)")
def test_exr_reads_back_bit_exact(tmp_path, sc):
    import OpenEXR
    channels = linear_channels("normal", sc["normal"])
    write_exr(str(tmp_path / "n.exr"), channels)
    write_exr(str(tmp_path / "d.exr"), linear_channels("depth", sc["depth"]))
    with OpenEXR.File(str(tmp_path / "n.exr")) as f:
        back = f.channels()["RGB"].pixels
    assert back.dtype == np.float32 and np.array_equal(back, channels["RGB"])
    assert np.allclose(back, sc["N"].numpy(), atol=1e-6)
    with OpenEXR.File(str(tmp_path / "d.exr")) as f:
        depth = f.channels()["Y"].pixels
    assert np.array_equal(depth, sc["depth"][..., 0].float().numpy())
    albedo = linear_channels("albedo", sc["albedo"])["RGB"]
    assert np.allclose(albedo, sc["albedo_linear"].numpy(), atol=1e-6)  # EXR colour maps are linear


def test_scene_folders_never_overwrite(tmp_path):
    def save():
        with scene_folder(str(tmp_path), "LumiX/scene") as scene:
            pass
        return scene.path
    first = save()
    second = save()
    assert first.endswith("scene_00001") and second.endswith("scene_00002")
    (tmp_path / "LumiX" / "scene_00007").mkdir()
    assert save().endswith("scene_00008")
    write_sidecar(first + "/lumix.json", {"seed": 1})
    with pytest.raises(FileExistsError):
        write_sidecar(first + "/lumix.json", {"seed": 2})
    assert json.load(open(first + "/lumix.json")) == {"seed": 1}
