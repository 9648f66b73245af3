"""Given maps are checked and normalised before sampling (issue 10, items 1 and 8)."""
import pytest
import torch

from lumix_core.given_maps import MIN_SIDE, RANGE_TOLERANCE, GivenMapError, check_given_map


def image(n=2, h=32, w=32, c=3, seed=0):
    return torch.rand(n, h, w, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_pixel_is_refused_naming_map_and_scene(bad):
    x = image(n=3)
    x[1, 5, 7, 2] = bad
    with pytest.raises(GivenMapError) as err:
        check_given_map("depth", x)
    text = str(err.value)
    assert "depth" in text and "scene 2 of 3" in text and "1 non-finite" in text and "node that made" in text


def test_all_nan_image_is_refused():
    with pytest.raises(GivenMapError, match=r"color map of scene 1 of 1 .* 3072 non-finite value\(s\) \(3072 NaN"):
        check_given_map("color", torch.full((1, 32, 32, 3), float("nan")))


def test_nan_in_a_dropped_alpha_channel_is_harmless():
    x = image(c=4)
    x[..., 3] = float("nan")
    torch.testing.assert_close(check_given_map("color", x), x[..., :3])


def test_uint8_range_values_are_refused_with_advice():
    x = image() * 255.0
    with pytest.raises(GivenMapError, match="0-255 image.*Divide it by 255"):
        check_given_map("color", x)


def test_minus_one_to_one_values_are_refused_with_advice():
    with pytest.raises(GivenMapError, match=r"-1\.\.1 image"):
        check_given_map("normal", image() * 2 - 1)


def test_hdr_values_are_refused():
    x = image()
    x[0, 0, 0, 0] = 7.5
    with pytest.raises(GivenMapError, match="Tone-map"):
        check_given_map("irradiance", x)


def test_small_overshoot_is_clamped():
    x = image()
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 1.0 + RANGE_TOLERANCE / 2, -RANGE_TOLERANCE / 2
    out = check_given_map("albedo", x)
    expected = x.double().clamp(0, 1).float()
    assert out[0, 0, 0, 0] == 1.0 and out[1, 1, 1, 1] == 0.0
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("channels", [1, 2])
def test_grey_and_grey_alpha_become_rgb(channels):
    x = image(c=channels)
    out = check_given_map("depth", x)
    assert out.shape == (2, 32, 32, 3)
    for c in range(3):
        assert torch.equal(out[..., c], x[..., 0])


def test_rgba_drops_alpha():
    x = image(c=4)
    assert torch.equal(check_given_map("color", x), x[..., :3])


@pytest.mark.parametrize("channels", [0, 5])
def test_other_channel_counts_are_refused(channels):
    with pytest.raises(GivenMapError, match=f"has {channels} channels.*Convert it to RGB"):
        check_given_map("color", torch.zeros(1, 32, 32, channels))


@pytest.mark.parametrize("h,w", [(0, 0), (1, 1000), (1000, 1), (MIN_SIDE - 1, 64)])
def test_degenerate_sizes_are_refused(h, w):
    with pytest.raises(GivenMapError, match=f"is {w}x{h} pixels.*at least {MIN_SIDE}"):
        check_given_map("color", torch.zeros(1, h, w, 3))


def test_a_crop_that_keeps_too_little_is_refused():
    strip = torch.zeros(1, 16, 1024, 3)  # 64:1 strip, sampler at 512x512 keeps 16x16: allowed
    assert check_given_map("color", strip, (512, 512)).shape == (1, 16, 1024, 3)
    with pytest.raises(GivenMapError, match="keeps only 4x16 pixels"):
        check_given_map("color", strip, (16, 64))


def test_empty_batch_wrong_rank_and_integer_dtype_are_refused():
    with pytest.raises(GivenMapError, match="empty batch"):
        check_given_map("color", torch.zeros(0, 32, 32, 3))
    with pytest.raises(GivenMapError, match=r"not an IMAGE batch.*\(32, 32, 3\)"):
        check_given_map("color", torch.zeros(32, 32, 3))
    with pytest.raises(GivenMapError, match="dtype torch.uint8.*divide 8-bit values by 255"):
        check_given_map("color", torch.zeros(1, 32, 32, 3, dtype=torch.uint8))


def test_valid_image_passes_unchanged_as_float32():
    x = image().double()
    out = check_given_map("albedo", x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float())
