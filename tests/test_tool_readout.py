"""The numbers and warnings the map-tool nodes show, on a synthetic scene whose maps agree by construction."""
import re

import pytest
import torch

from lumix_core import MAP_NAMES
from lumix_core.metrics import consistency
from lumix_core.relight import light_direction, relight
from lumix_core.tool_readout import (CLIPPED_LIMIT, GEOMETRIC_LIMIT_DEGREES, MIN_LIT, PHOTOMETRIC_RELATIVE_LIMIT,
                                     consistency_warnings, depth_readout, normal_readout, relight_readout)
from synthetic_scene import FOV, scene


@pytest.fixture(scope="module")
def sc():
    return scene(64)


def maps_of(sc, **replace):
    return {name: replace.get(name, sc[name]) for name in MAP_NAMES}


def test_consistent_maps_raise_no_warning(sc):
    assert consistency_warnings(consistency(maps_of(sc), FOV)) == []


@pytest.mark.parametrize("dx,dy,words", [(3, 0, "3 px right"), (0, 2, "2 px down"), (-2, -3, "2 px left, 3 px up")])
def test_a_shifted_map_is_named_with_its_offset(sc, dx, dy, words):
    # roll moves content right (dx > 0) and down (dy > 0)
    moved = torch.roll(sc["depth"], shifts=(dy, dx), dims=(0, 1))
    warnings = consistency_warnings(consistency(maps_of(sc, depth=moved), FOV))
    misaligned = [w for w in warnings if "misaligned" in w]
    assert len(misaligned) == 1 and misaligned[0].startswith("depth is misaligned with color")
    assert f"sits {words} of color's" in misaligned[0]


def test_unrelated_color_trips_the_photometric_limit(sc):
    wrong = 1.0 - sc["color"]
    report = consistency(maps_of(sc, color=wrong), FOV)
    warnings = consistency_warnings(report)
    # the relative residual computed here, independently: least-squares scale, then mean |c - s a i| / mean c
    lin = lambda t: torch.where(t <= 0.04045, t / 12.92, ((t + 0.055) / 1.055) ** 2.4)  # noqa: E731
    c, p = lin(wrong.double()), lin(sc["albedo"].double()) * lin(sc["irradiance"].double())
    s = (c * p).sum() / (p * p).sum()
    relative = ((c - s * p).abs().mean(-1).mean() / c.mean()).item()
    assert relative > PHOTOMETRIC_RELATIVE_LIMIT
    assert any(w.startswith("color is far from albedo x irradiance") and f"{100 * relative:.0f}%" in w for w in warnings)


def test_normals_against_depth_beyond_the_limit_and_a_flat_depth(sc):
    inverted = maps_of(sc, normal=1.0 - sc["normal"])  # every normal reversed: about 180 deg off
    warnings = consistency_warnings(consistency(inverted, FOV))
    degrees = [float(m) for w in warnings for m in re.findall(r"disagree with depth by ([\d.]+) deg", w)]
    assert len(degrees) == 1 and degrees[0] > GEOMETRIC_LIMIT_DEGREES
    flat = consistency_warnings(consistency(maps_of(sc, depth=torch.rand(64, 64, 3, dtype=torch.float64,
                                                                         generator=torch.Generator().manual_seed(0))), FOV))
    assert any("treat it as unreliable" in w or "not computed" in w for w in flat)


def test_depth_readout_decodes_the_input_convention():
    depth = torch.linspace(0.2, 0.7, 16, dtype=torch.float64).view(4, 4, 1).expand(4, 4, 3)
    line, warnings = depth_readout(depth, near_is_bright_input=False)
    assert "0.200 (nearest) to 0.700 (farthest)" in line and warnings == []
    line, _ = depth_readout(depth, near_is_bright_input=True)  # bright = near: distance is 1 - value
    assert "0.300 (nearest) to 0.800 (farthest)" in line
    _, warnings = depth_readout(torch.full((4, 4, 3), 0.4), False)
    assert len(warnings) == 1 and warnings[0].startswith("depth is flat")


def test_normal_readout_against_an_independent_count(sc):
    stats, warnings = normal_readout(sc["normal"])
    n = sc["N"]
    assert stats["mean_y"] == pytest.approx(n[..., 1].mean().item(), abs=1e-9)
    assert stats["facing"] == pytest.approx((n[..., 2] > 0).double().mean().item())
    assert stats["length"] == pytest.approx(1.0, abs=1e-9) and warnings == []
    black = torch.zeros(8, 8, 3)  # 2*0-1 = (-1,-1,-1): length sqrt(3), facing away
    stats, warnings = normal_readout(black)
    assert stats["length"] == pytest.approx(3 ** 0.5) and stats["facing"] == 0 and "normal map" in warnings[0]


@pytest.mark.parametrize("elevation", [90.0, 30.0, -90.0])
def test_relight_readout_counts_lit_and_clipped_pixels(sc, elevation):
    direction = light_direction(20.0, elevation)
    out = relight(sc["albedo"], sc["normal"], 20.0, elevation, (1.0, 1.0, 1.0), 1.0, 0.15)
    stats, warnings = relight_readout(sc["normal"], direction, out)
    lit = ((sc["N"] * direction).sum(-1) > 0).double().mean().item()
    assert stats["lit"] == pytest.approx(lit)
    assert stats["clipped"] == pytest.approx((out >= 1 - 1e-6).any(-1).double().mean().item())
    assert any("shines from behind" in w for w in warnings) == (lit < MIN_LIT)
    assert (elevation == -90.0) == (lit < MIN_LIT)


def test_relight_readout_flags_overexposure(sc):
    direction = light_direction(0.0, 90.0)
    out = relight(sc["albedo"], sc["normal"], 0.0, 90.0, (1.0, 1.0, 1.0), 20.0, 0.15)
    stats, warnings = relight_readout(sc["normal"], direction, out)
    assert stats["clipped"] > CLIPPED_LIMIT and any("clipped at white" in w for w in warnings)


def test_the_readme_states_the_warning_thresholds_in_use():
    from pathlib import Path

    from lumix_core import tool_readout as t
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().replace("\n", " ")
    for phrase in (f"over {100 * t.PHOTOMETRIC_RELATIVE_LIMIT:.0f}% of the mean color",
                   f"over {t.GEOMETRIC_LIMIT_DEGREES:.0f} deg", f"under {100 * t.MIN_VALID_GEOMETRY:.0f}% of the pixels",
                   f"under {t.STRUCTURAL_LIMIT}", f"clips over {100 * t.CLIPPED_LIMIT:.0f}%",
                   f"reaches under {100 * t.MIN_LIT:.0f}% of the pixels"):
        assert phrase in readme, phrase
