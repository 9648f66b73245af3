"""Given maps are resized as the reference resizes them (issue 21): Pillow's antialiased bicubic on the
8-bit image. Checked against Pillow called here on the 8-bit photo (what the reference runs) and
against the filter written out independently in float64 (Pillow's kernel and support, per axis)."""
import numpy as np
import pytest
import torch
from PIL import Image

from lumix_core.map_resize import (centre_crop_box, geometry_safe_resize, on_8bit_grid, reference_resize,
                                   to_uint8)


def photo(width, height, seed=0):
    """An 8-bit photo as Load Image gives it (float32 k/255) and its bytes: texture and sharp edges."""
    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3),
                                                     dtype=np.uint8)).resize((width, height), Image.Resampling.NEAREST))
    noise = rng.integers(0, 40, (height, width, 3))
    pixels = np.clip(smooth.astype(int) + noise - 20, 0, 255).astype(np.uint8)
    pixels[height // 3: height // 2, width // 4: width // 2] = (250, 10, 128)  # a sharp-edged block
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)[None], pixels


def pil_resize(pixels, width, height, box=None):
    """What the reference runs: Image.resize with its default filter on the 8-bit RGB image, as 0..1."""
    out = Image.fromarray(pixels).resize((width, height), box=box)  # the default filter, as the reference
    return np.asarray(out).astype(np.float64) / 255.0


def bicubic(x, a=-0.5):
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def antialiased_weights(in_size, out_size, start=0.0, end=None):
    """[out, in] float64 weights of an antialiased bicubic resize (kernel widened by the scale when
    shrinking, centres at pixel middles, each row normalised), over the source range start..end."""
    end = in_size if end is None else end
    scale = (end - start) / out_size
    widen = max(scale, 1.0)
    support = 2.0 * widen
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = start + (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        row = np.array([bicubic((x - centre + 0.5) / widen) for x in range(lo, hi)])
        weights[i, lo:hi] = row / row.sum()
    return weights


def float64_resize(image, width, height, box=None):
    """[H, W, C] float64 -> [height, width, C] with the antialiased bicubic above (no rounding, no clipping)."""
    h, w = image.shape[:2]
    left, top, right, bottom = box or (0, 0, w, h)
    rows = antialiased_weights(h, height, top, bottom)
    cols = antialiased_weights(w, width, left, right)
    return np.einsum("xw,ywc->yxc", cols, np.einsum("yh,hwc->ywc", rows, image))


# downscale 2x, 2.625x (a phone photo to 1536x1152), 3x; upscale 1.5x (Hypersim to 1536x1152); a 2:3
# photo stretched to 4:3; an odd factor
SIZES = [((384, 288), (192, 144)), ((504, 378), (192, 144)), ((576, 432), (192, 144)), ((128, 96), (192, 144)),
         ((96, 144), (192, 144)), ((200, 150), (96, 80))]


@pytest.mark.parametrize("source,target", SIZES)
def test_an_8bit_photo_is_resized_byte_for_byte_as_the_reference(source, target):
    image, pixels = photo(*source)
    ours = reference_resize(image, *target)
    assert ours.shape == (1, target[1], target[0], 3) and ours.dtype == torch.float32
    expected = pil_resize(pixels, *target)
    assert np.abs(ours[0].double().numpy() - expected).max() < 1e-6  # the same 8-bit levels


@pytest.mark.parametrize("source,target", SIZES)
def test_the_filter_is_the_antialiased_bicubic(source, target):
    """The 8-bit result is the float64 filter, rounded per pass (two passes: within a few levels where
    the first pass clips), and far from torch's non-antialiased bicubic when shrinking."""
    image, pixels = photo(*source)
    ours = reference_resize(image, *target)[0].double().numpy()
    exact = np.clip(float64_resize(pixels / 255.0, *target), 0, 1)
    assert np.median(np.abs(ours - exact)) <= 0.5 / 255 + 1e-9
    assert np.mean(np.abs(ours - exact) <= 1.0 / 255 + 1e-9) > 0.97
    plain = torch.nn.functional.interpolate(image.movedim(-1, 1), size=target[::-1], mode="bicubic",
                                            align_corners=False).movedim(1, -1).clamp(0, 1)[0].double().numpy()
    if source[0] >= 2 * target[0]:
        assert np.abs(plain - ours).max() > 20 / 255  # what the previous resize (torch bicubic) was off by


def test_off_grid_images_keep_their_precision_with_the_same_filter():
    """A float image not on the 8-bit grid is resized with the filter in float, not rounded to 8 bits."""
    image, pixels = photo(384, 288, seed=2)
    image = (image * 0.9 + 0.05 + 1e-3).clamp(0, 1)  # off the grid
    assert not on_8bit_grid(image)
    ours = reference_resize(image, 192, 144)[0].double().numpy()
    exact = np.clip(float64_resize(image[0].double().numpy(), 192, 144), 0, 1)
    assert np.abs(ours - exact).max() < 1e-5
    levels = ours * 255
    assert np.abs(levels - levels.round()).max() > 0.1  # not quantised


def test_on_grid_detection_and_to_uint8():
    image, pixels = photo(40, 30)
    assert on_8bit_grid(image) and np.array_equal(to_uint8(image[0]), pixels)
    assert not on_8bit_grid(image + 0.3 / 255)


def test_same_size_is_a_copy_and_batches_resize_per_image():
    a, pa = photo(64, 48, seed=1)
    b, pb = photo(64, 48, seed=2)
    out = reference_resize(torch.cat([a, b]), 32, 24)
    assert np.abs(out[1].double().numpy() - pil_resize(pb, 32, 24)).max() < 1e-6
    assert torch.equal(reference_resize(a, 64, 48), a)


def test_crop_box_is_centred_and_exact():
    assert centre_crop_box(400, 200, 100, 100) == (100.0, 0.0, 300.0, 200.0)  # wide: trim the sides
    assert centre_crop_box(200, 400, 200, 100) == (0.0, 150.0, 200.0, 250.0)  # tall: trim top and bottom
    image, pixels = photo(400, 300)
    box = centre_crop_box(400, 300, 160, 160)
    assert box == (50.0, 0.0, 350.0, 300.0)
    ours = reference_resize(image, 160, 160, box)[0].double().numpy()
    assert np.abs(ours - pil_resize(pixels, 160, 160, box)).max() < 1e-6
    # the crop's pixels through the filter (its kernel reaches past the crop into the photo, not a mirror)
    exact = np.clip(float64_resize(pixels / 255.0, 160, 160, box), 0, 1)
    assert np.median(np.abs(ours - exact)) <= 0.5 / 255 + 1e-9 and np.mean(np.abs(ours - exact) <= 1 / 255 + 1e-9) > 0.97


def step_depth(width, height, near=0.8, far=0.2):
    depth = np.full((height, width), far)
    depth[:, width // 2 - 3:] = near
    return torch.from_numpy(np.repeat(depth[..., None], 3, -1).astype(np.float32))[None]


@pytest.mark.parametrize("target", [(40, 30), (200, 150)])
def test_geometry_safe_depth_does_not_ring(target):
    depth = step_depth(96, 72)
    safe = geometry_safe_resize(depth, *target, "depth")
    assert float(safe.min()) >= 0.2 - 1e-6 and float(safe.max()) <= 0.8 + 1e-6
    # the reference's bicubic overshoots next to the step (what geometry-safe avoids)
    ringing = reference_resize(depth, *target)
    assert float(ringing.max()) > 0.8 + 2 / 255 or float(ringing.min()) < 0.2 - 2 / 255


@pytest.mark.parametrize("target", [(40, 30), (200, 150), (64, 64)])
def test_geometry_safe_normals_stay_unit_vectors(target):
    g = torch.Generator().manual_seed(3)
    coarse = torch.randn(1, 3, 9, 12, generator=g)
    vectors = torch.nn.functional.interpolate(coarse, size=(72, 96), mode="nearest").movedim(1, -1)  # sharp edges
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    normal = (vectors + 1) / 2
    out = geometry_safe_resize(normal, *target, "normal") * 2 - 1
    length = out.double().norm(dim=-1)
    nonzero = length > 1e-3
    assert nonzero.float().mean() > 0.99
    assert (length[nonzero] - 1).abs().max() < 1e-5
    # the reference's filter does not keep them unit length
    ref = reference_resize(normal, *target).double() * 2 - 1
    assert (ref.norm(dim=-1) - 1).abs().max() > 0.05
    # a uniform field keeps its direction exactly
    flat = torch.tensor([0.3, -0.5, 0.8124]).div(torch.tensor([0.3, -0.5, 0.8124]).norm())
    uniform = ((flat + 1) / 2).expand(1, 72, 96, 3)
    torch.testing.assert_close(geometry_safe_resize(uniform, *target, "normal")[0] * 2 - 1,
                               flat.expand(target[1], target[0], 3), atol=1e-5, rtol=0)


def test_geometry_safe_colour_maps_are_the_references():
    image, _ = photo(96, 72)
    for kind in ("color", "albedo", "irradiance"):
        assert torch.equal(geometry_safe_resize(image, 40, 30, kind), reference_resize(image, 40, 30))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="RGB IMAGE batch"):
        reference_resize(torch.zeros(1, 8, 8, 4), 4, 4)
    with pytest.raises(ValueError, match="must be positive"):
        geometry_safe_resize(torch.zeros(1, 8, 8, 3), 0, 4, "depth")
