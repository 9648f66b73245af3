"""LumiX Intrinsic Sampler refuses bad given maps before encoding them and converts grey/alpha images
(issue 10, items 1 and 8); given maps are resized as the reference resizes them (issue 21)."""
import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host import CountingVAE, TinyVAE, conditioning, load_extension, tiny_lumix_model  # first: skips without ComfyUI
from lumix_core import MAP_NAMES

# The extension is loaded under ComfyUI's module name, so its GivenMapError is not lumix_core's: match ValueError.


NODES = load_extension()
Sampler = NODES["LumiXSampler"]
SIZE = 32


@pytest.fixture(scope="module")
def lumix_model(tmp_path_factory):
    return tiny_lumix_model(tmp_path_factory.mktemp("lumix_given_maps"), "given_maps_lumix.safetensors")


def sample(model, vae, scenes=1, **maps):
    # sampled at SIZE x SIZE, not at the photo's aspect within the reference's 1536x1152 budget (slow here)
    return Sampler.execute(model, conditioning(1), conditioning(2), vae, 0, 2, 1.0, "euler", "simple",
                           SIZE, SIZE, scenes, True, held_maps_size="width x height", **maps).result


def photo(n=1, channels=3, seed=3):
    return torch.rand(n, SIZE, SIZE, channels, generator=torch.Generator().manual_seed(seed))


def test_one_nan_pixel_is_refused_before_encoding(lumix_model):
    color = photo(2)
    color[1, 3, 4, 0] = float("nan")
    vae = CountingVAE()
    with pytest.raises(ValueError, match="color map of scene 2 of 2.*non-finite"):
        sample(lumix_model, vae, scenes=2, color=color)
    assert vae.calls == 0


def test_inf_in_given_depth_is_refused(lumix_model):
    depth = photo()
    depth[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="depth map of scene 1 of 1"):
        sample(lumix_model, CountingVAE(), depth=depth)


def test_uint8_range_image_is_refused_not_clamped_to_white(lumix_model):
    with pytest.raises(ValueError, match="0-255 image"):
        sample(lumix_model, CountingVAE(), color=photo() * 255)


@pytest.mark.parametrize("channels", [1, 2])
def test_grey_images_are_used_as_rgb(lumix_model, channels):
    grey = photo(channels=channels)
    out = sample(lumix_model, CountingVAE(), color=grey)
    color = out[2]
    assert color.shape == (1, SIZE, SIZE, 3) and torch.isfinite(torch.stack(out[:5])).all()
    for c in range(3):  # the held map is returned as given, grey repeated
        torch.testing.assert_close(color[..., c], grey[..., 0])


def test_rgba_alpha_is_dropped(lumix_model):
    rgba = photo(channels=4)
    out = sample(lumix_model, CountingVAE(), color=rgba)
    torch.testing.assert_close(out[2], rgba[..., :3])


@pytest.mark.parametrize("shape", [(1, 0, 0, 3), (1, 1, 1000, 3), (1, 1000, 1, 3)])
def test_degenerate_sizes_are_refused_clearly(lumix_model, shape):
    vae = CountingVAE()
    with pytest.raises(ValueError, match="at least 16 pixels on each side"):
        sample(lumix_model, vae, color=torch.rand(shape))
    assert vae.calls == 0


# ---- resizing as the reference (issue 21) -----------------------------------------------------------
# The reference opens a given map as 8-bit RGB and calls img.resize((width, height)) (Pillow's default
# filter); the expected pixels below are that call, made here on the photo's bytes.

AREA = (64, 48)  # the sampler's area budget in these tests (the reference's config: 1536x1152)


class RecordingVAE(TinyVAE):
    """TinyVAE keeping every image it is asked to encode (what the given map became)."""

    def __init__(self):
        super().__init__()
        self.encoded = []

    def encode(self, pixels):
        self.encoded.append(pixels.detach().clone())
        return super().encode(pixels)


def photo_bytes(width, height, seed=0, grey=False):
    """An 8-bit image with texture and a sharp-edged block (what a resize filter acts on)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 1 if grey else 3)).astype(np.uint8)
    pixels[height // 4: height // 2, width // 3: width // 2] = 200
    return np.repeat(pixels, 3, -1) if grey else pixels


def loaded(pixels):
    """As Load Image hands a file over: float32 0..1, [1, H, W, 3]."""
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]


def pil_resized(pixels, width, height, box=None):
    return torch.from_numpy(np.asarray(Image.fromarray(pixels).resize((width, height), box=box)).astype(np.float32) / 255.0)[None]


def run(model, vae, given, image, **kwargs):
    """One sampler step with `image` as the given map `given`, sized from it within AREA by default."""
    settings = {"held_maps_size": "from the given map (aspect kept, area budget)", "area_width": AREA[0],
                "area_height": AREA[1], **kwargs}
    width, height = settings.pop("width", SIZE), settings.pop("height", SIZE)
    return Sampler.execute(model, conditioning(1), conditioning(2), vae, 0, 1, 1.0, "euler", "simple",
                           width, height, 1, True, **{given: image}, **settings).result


# (photo size, given map, sampler settings, sampled size)
RESIZE_CASES = {
    "4:3 downscaled 2x": ((128, 96), "color", {}, (64, 48)),
    "4:3 downscaled 2.625x (phone photo)": ((168, 126), "color", {}, (64, 48)),
    "4:3 downscaled 3x": ((192, 144), "color", {}, (64, 48)),
    "4:3 upscaled 1.33x": ((48, 36), "color", {}, (64, 48)),
    "4:3 upscaled 2x": ((32, 24), "color", {}, (64, 48)),
    "2:3 from the photo": ((64, 96), "color", {}, (32, 64)),
    "2:3 stretched to width x height": ((64, 96), "color", {"held_maps_size": "width x height", "width": 64,
                                                            "height": 48}, (64, 48)),
    "depth held, downscaled 2x": ((128, 96), "depth", {}, (64, 48)),
    "normal held, upscaled 2x": ((32, 24), "normal", {}, (64, 48)),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_given_map_is_resized_byte_for_byte_as_the_reference(lumix_model, case):
    (w, h), given, settings, (sw, sh) = RESIZE_CASES[case]
    pixels = photo_bytes(w, h, seed=len(case), grey=given == "depth")
    vae = RecordingVAE()
    out = run(lumix_model, vae, given, loaded(pixels), **settings)
    expected = pil_resized(pixels, sw, sh)
    assert len(vae.encoded) == 1 and vae.encoded[0].shape == (1, sh, sw, 3)
    torch.testing.assert_close(vae.encoded[0].float(), expected, atol=1e-6, rtol=0)  # the same 8-bit levels
    torch.testing.assert_close(out[MAP_NAMES.index(given)].float(), expected, atol=1e-6, rtol=0)  # returned as held


def test_the_previous_resize_would_fail_this_check():
    """torch's bicubic (no antialiasing), the resize before issue 21, is many levels from the reference."""
    pixels = photo_bytes(128, 96)
    plain = torch.nn.functional.interpolate(loaded(pixels).movedim(-1, 1), size=(48, 64), mode="bicubic",
                                            align_corners=False).movedim(1, -1).clamp(0, 1)
    assert float((plain - pil_resized(pixels, 64, 48)).abs().max()) > 20 / 255


def test_hold_maps_node_resizes_as_the_reference(lumix_model):
    pixels = photo_bytes(192, 144, seed=4)
    vae = RecordingVAE()
    latent = {"samples": torch.zeros(5, 16, 48 // 8, 64 // 8)}
    NODES["LumiXHoldMaps"].execute(lumix_model, vae, latent, color=loaded(pixels))
    torch.testing.assert_close(vae.encoded[0].float(), pil_resized(pixels, 64, 48), atol=1e-6, rtol=0)


def test_cover_crops_the_centre_then_uses_the_same_filter(lumix_model):
    pixels = photo_bytes(128, 64, seed=5)  # 2:1 photo covering a 4:3 size: 85.33 of 128 columns kept
    vae = RecordingVAE()
    run(lumix_model, vae, "color", loaded(pixels), held_maps_size="width x height", width=64, height=48,
        held_maps_resize="cover and centre-crop")
    kept = 64 * 64 / 48
    box = ((128 - kept) / 2, 0, (128 + kept) / 2, 64)
    torch.testing.assert_close(vae.encoded[0].float(), pil_resized(pixels, 64, 48, box), atol=1e-6, rtol=0)


def test_off_grid_float_images_are_resized_in_float_not_rounded(lumix_model):
    image = loaded(photo_bytes(128, 96, seed=6)) * 0.9 + 0.0517  # not on the 8-bit grid
    vae = RecordingVAE()
    run(lumix_model, vae, "color", image)
    expected = np.stack([np.asarray(Image.fromarray(image[0, ..., c].numpy()).resize((64, 48), Image.Resampling.BICUBIC))
                         for c in range(3)], -1)
    torch.testing.assert_close(vae.encoded[0][0].float(), torch.from_numpy(expected).clamp(0, 1), atol=1e-6, rtol=0)
    levels = vae.encoded[0] * 255
    assert float((levels - levels.round()).abs().max()) > 0.1


def test_geometry_safe_choice_keeps_normals_unit_and_depth_without_ringing(lumix_model):
    g = torch.Generator().manual_seed(8)
    vectors = torch.nn.functional.interpolate(torch.randn(1, 3, 6, 8, generator=g), size=(96, 128),
                                              mode="nearest").movedim(1, -1)
    normal = (vectors / vectors.norm(dim=-1, keepdim=True) + 1) / 2
    depth = torch.full((1, 96, 128, 3), 0.25)
    depth[:, :, 61:] = 0.75  # a step edge
    vae = RecordingVAE()
    out = run(lumix_model, vae, "depth", depth, normal=normal, held_maps_resize="stretch, depth/normal geometry-safe")
    held_depth, held_normal = out[MAP_NAMES.index("depth")], out[MAP_NAMES.index("normal")]
    assert held_depth.shape == (1, 48, 64, 3)
    assert float(held_depth.min()) >= 0.25 - 1e-6 and float(held_depth.max()) <= 0.75 + 1e-6
    length = (held_normal.double() * 2 - 1).norm(dim=-1)
    assert float((length - 1).abs().max()) < 1e-5
    # the default (the reference's bicubic) does ring on the same step and shortens the normals
    out = run(lumix_model, RecordingVAE(), "depth", depth, normal=normal)
    assert float(out[MAP_NAMES.index("depth")].max()) > 0.75 + 2 / 255
    assert float(((out[MAP_NAMES.index("normal")].double() * 2 - 1).norm(dim=-1) - 1).abs().max()) > 0.05
