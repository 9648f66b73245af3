"""The composable LumiX nodes with ComfyUI's own samplers, against the all-in-one sampler."""
import pytest
import torch

from comfy_host import TinyVAE, conditioning, load_extension, tiny_lumix_model  # first: skips without ComfyUI

import comfy.patcher_extension  # noqa: E402
from comfy_extras.nodes_custom_sampler import CFGGuider, KSamplerSelect, SamplerCustomAdvanced  # noqa: E402
from lumix_core import MAP_NAMES  # noqa: E402
import nodes as comfy_nodes  # noqa: E402

NODES = load_extension()
SIZE = 64


@pytest.fixture(scope="module")
def lumix_model(tmp_path_factory):
    return tiny_lumix_model(tmp_path_factory.mktemp("lumix_composable"), "composable_lumix.safetensors")


def all_in_one(model, seed, steps, cfg, scenes=1, **maps):
    return NODES["LumiXSampler"].execute(model, conditioning(1), conditioning(2), TinyVAE(), seed, steps, cfg, "euler",
                                         "simple", SIZE, SIZE, scenes, True, held_maps_size="width x height",
                                         **maps).result


def composable(model, seed, steps, cfg, scenes=1, sampler="euler", **maps):
    """LumiX Empty Latent -> LumiX Hold Maps -> core SamplerCustomAdvanced (LumiX Noise, CFGGuider,
    KSamplerSelect, LumiX Reference Sigmas from the latent) -> LumiX Split Maps."""
    vae = TinyVAE()
    latent = NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, scenes).result[0]
    if maps:
        model, latent = NODES["LumiXHoldMaps"].execute(model, vae, latent, **maps).result
    noise = NODES["LumiXNoise"].execute(seed, True).result[0]
    sigmas = NODES["LumiXReferenceSigmas"].execute(steps, 512, 512, latent=latent).result[0]
    guider = CFGGuider().get_guider(model, conditioning(1), conditioning(2), cfg)[0]
    out = SamplerCustomAdvanced().sample(noise, guider, KSamplerSelect().get_sampler(sampler)[0], sigmas, latent)[0]
    images = NODES["LumiXSplitMaps"].execute(latent=out, vae=vae).result
    return (*images, out)


def photo(seed=5):
    return torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed))


def test_text_route_gives_the_all_in_one_latents(lumix_model):
    a = all_in_one(lumix_model, seed=3, steps=3, cfg=3.0, scenes=2)
    b = composable(lumix_model, seed=3, steps=3, cfg=3.0, scenes=2)
    assert torch.equal(a[5]["samples"], b[5]["samples"])
    for x, y in zip(a[:5], b[:5]):
        assert torch.equal(x, y)


def test_decomposition_route_gives_the_all_in_one_latents(lumix_model):
    color = photo()
    a = all_in_one(lumix_model, seed=8, steps=3, cfg=3.0, color=color)
    b = composable(lumix_model, seed=8, steps=3, cfg=3.0, color=color)
    assert torch.equal(a[5]["samples"], b[5]["samples"])
    assert torch.equal(b[5]["samples"][2], TinyVAE().encode(color)[0])  # held exactly


def test_hold_maps_under_core_ksampler(lumix_model):
    """A plain KSampler on the held model: the given map stays exactly its encoding, guidance 1.0, no negative pass."""
    vae, color = TinyVAE(), photo(seed=2)
    latent = NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, 1).result[0]
    model, held = NODES["LumiXHoldMaps"].execute(lumix_model, vae, latent, color=color).result
    calls = []

    def spy(executor, x, timestep, context, y=None, guidance=None, *args, **kwargs):
        calls.append((x.shape[0], timestep.clone(), guidance.clone()))
        return executor(x, timestep, context, y, guidance, *args, **kwargs)

    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    out = comfy_nodes.KSampler().sample(model, 1, 3, 4.0, "dpmpp_2m", "karras", conditioning(1), conditioning(2), held)[0]
    assert torch.equal(out["samples"][2], vae.encode(color)[0])
    assert calls and all(b == 5 and t[2] == 0 and g.tolist() == [1.0] * 5 for b, t, g in calls)
    assert lumix_model.model_options.get("sampler_calc_cond_batch_function") is None  # base model untouched
    assert not comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                                        lumix_model.model_options.get("transformer_options", {}))


def test_empty_latent_and_sigmas_nodes():
    latent = NODES["LumiXEmptyLatent"].execute(96, 64, 3).result[0]["samples"]
    assert latent.shape == (15, 16, 8, 12) and not latent.any()
    from_photo = NODES["LumiXEmptyLatent"].execute(512, 512, 1, photo=torch.rand(1, 60, 80, 3),
                                                   area_width=64, area_height=48).result[0]["samples"]
    assert from_photo.shape == (5, 16, 6, 8)  # 4:3 photo -> 64x48
    sigmas = NODES["LumiXReferenceSigmas"].execute(4, 512, 512).result[0]
    import math
    mu = 0.5 + 0.65 * (16 - 256) / 3840
    expected = [math.exp(mu) / (math.exp(mu) + 1 / t - 1) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float32))
    with pytest.raises(ValueError, match="multiples of 16"):
        NODES["LumiXEmptyLatent"].execute(72, 64, 1)


def test_split_maps_images_and_errors():
    batch = torch.rand(10, 8, 8, 3)
    maps = NODES["LumiXSplitMaps"].execute(images=batch).result
    for i, name in enumerate(MAP_NAMES):
        assert torch.equal(maps[i], batch[i::5])
    with pytest.raises(ValueError, match="either images"):
        NODES["LumiXSplitMaps"].execute()
    with pytest.raises(ValueError, match="needs the vae"):
        NODES["LumiXSplitMaps"].execute(latent={"samples": torch.zeros(5, 16, 1, 1)})
    with pytest.raises(ValueError, match="not a multiple of 5"):
        NODES["LumiXSplitMaps"].execute(images=torch.rand(4, 8, 8, 3))


def test_hold_maps_errors(lumix_model):
    latent = {"samples": torch.zeros(4, 16, 8, 8)}
    with pytest.raises(ValueError, match="not whole scenes of 5"):
        NODES["LumiXHoldMaps"].execute(lumix_model, TinyVAE(), latent, color=photo())
    latent = NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, 2).result[0]
    with pytest.raises(ValueError, match="holds 1 image"):
        NODES["LumiXHoldMaps"].execute(lumix_model, TinyVAE(), latent, color=photo())
    with pytest.raises(ValueError, match="not whole scenes"):
        NODES["LumiXNoise"].execute(0, True).result[0].generate_noise({"samples": torch.zeros(3, 16, 2, 2)})


def test_plain_ksampler_batch_error_counts_the_users_batch(lumix_model):
    latent = comfy_nodes.EmptyLatentImage().generate(SIZE, SIZE, 4)[0]
    with pytest.raises(ValueError, match="batch has 4 latents, which is not a multiple of 5"):
        comfy_nodes.KSampler().sample(lumix_model, 0, 1, 3.0, "euler", "simple", conditioning(1), conditioning(2), latent)
