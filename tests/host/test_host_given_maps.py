"""LumiX Intrinsic Sampler refuses bad given maps before encoding them and converts grey/alpha images
(issue 10, items 1 and 8)."""
import pytest
import torch

from comfy_host import CountingVAE, conditioning, load_extension, tiny_lumix_model  # first: skips without ComfyUI

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
