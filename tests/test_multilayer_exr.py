"""The multilayer EXR (layers.exr): channel names, values exact to float32 against decodings written
here in float64, header attributes, atomic writing."""
import os

import numpy as np
import pytest
import torch

from lumix_core.multilayer_exr import write_multilayer_exr
from synthetic_scene import FOV, scene

OpenEXR = pytest.importorskip("OpenEXR", reason="the optional openexr package is not installed")

EXPECTED_CHANNELS = ["albedo.R", "albedo.G", "albedo.B", "irradiance.R", "irradiance.G", "irradiance.B",
                     "color.R", "color.G", "color.B", "depth.Z", "normal.X", "normal.Y", "normal.Z"]


def srgb_decode64(v):
    v = np.clip(v.astype(np.float64), 0, 1)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def five_maps(size=48):
    sc = scene(size)
    maps = {name: sc[name].float() for name in ("albedo", "irradiance", "color", "depth", "normal")}
    # a depth image whose channels differ a little (the value is their mean) and an unnormalised normal
    maps["depth"] = maps["depth"] * torch.tensor([1.0, 0.98, 1.02])
    maps["normal"] = (maps["normal"] * 0.9 + 0.05).clamp(0, 1)
    return maps


def expected_values(maps):
    out = {}
    for name in ("albedo", "irradiance", "color"):
        linear = srgb_decode64(maps[name].numpy())
        for k, c in enumerate("RGB"):
            out[f"{name}.{c}"] = linear[..., k]
    out["depth.Z"] = maps["depth"].numpy().astype(np.float64).mean(-1)
    n = maps["normal"].numpy().astype(np.float64) * 2 - 1
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    for k, c in enumerate("XYZ"):
        out[f"normal.{c}"] = n[..., k]
    return out


def read_exr(path):
    with OpenEXR.File(str(path), separate_channels=True) as f:
        header = dict(f.header())
        channels = {name: np.array(c.pixels) for name, c in f.channels().items()}
    return header, channels


def test_channels_and_values_exact_to_float32(tmp_path):
    maps = five_maps()
    path = tmp_path / "layers.exr"
    names = write_multilayer_exr(str(path), maps, FOV)
    assert names == EXPECTED_CHANNELS
    header, channels = read_exr(path)
    assert sorted(channels) == sorted(EXPECTED_CHANNELS)
    assert [c.name for c in header["channels"]] == sorted(EXPECTED_CHANNELS)  # EXR stores them sorted
    expected = expected_values(maps)
    for name, value in channels.items():
        assert value.dtype == np.float32 and value.shape == (48, 48), name
        want = expected[name].astype(np.float32)
        # float64 decoding rounded once to float32: equal, or one float32 step apart where the two
        # pow()/division implementations round differently
        ulps = np.abs(value.astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        assert ulps.max() <= 1.0, (name, ulps.max())
        assert np.mean(value == want) > 0.99, name
    assert header["compression"] == OpenEXR.ZIP_COMPRESSION


def test_header_states_conventions_fov_and_depth_range(tmp_path):
    maps = five_maps()
    path = tmp_path / "layers.exr"
    write_multilayer_exr(str(path), maps, 47.5)
    header, _ = read_exr(path)
    assert header["lumix:fovDegrees"] == pytest.approx(47.5)
    assert "horizontal" in header["lumix:fovAxis"]
    depth = maps["depth"].numpy().astype(np.float64).mean(-1)
    low, high = (float(v) for v in header["lumix:depthRange"].split())
    assert low == pytest.approx(depth.min(), abs=1e-7) and high == pytest.approx(depth.max(), abs=1e-7)
    assert "relative" in header["lumix:depthUnits"]
    assert "OpenGL" in header["lumix:normalConvention"] and "linear" in header["lumix:colorLayers"]


def test_subset_of_maps_writes_only_their_layers(tmp_path):
    maps = five_maps()
    path = tmp_path / "two.exr"
    names = write_multilayer_exr(str(path), {"color": maps["color"], "normal": maps["normal"]}, FOV)
    header, channels = read_exr(path)
    assert names == ["color.R", "color.G", "color.B", "normal.X", "normal.Y", "normal.Z"]
    assert sorted(channels) == sorted(names) and "lumix:depthRange" not in header
    with pytest.raises(ValueError, match="at least one map"):
        write_multilayer_exr(str(tmp_path / "none.exr"), {}, FOV)
    assert sorted(os.listdir(tmp_path)) == ["two.exr"]  # nothing half-written left behind


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import lumix_core.multilayer_exr as module

    def broken(temporary, path, shapes, separate_channels=False):
        raise OSError(28, "no space left")
    monkeypatch.setattr(module, "_check_exr_written", broken)
    with pytest.raises(OSError):
        write_multilayer_exr(str(tmp_path / "layers.exr"), five_maps(16), FOV)
    assert os.listdir(tmp_path) == []
