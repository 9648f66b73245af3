"""The composable LumiX nodes with ComfyUI's own samplers, against the all-in-one sampler."""
import pytest
import torch

from comfy_host import TinyVAE, conditioning, load_extension, tiny_lumix_model  # first: skips without ComfyUI

import comfy.model_management  # noqa: E402
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


def pillow_bicubic(image, width, height):
    """The reference's resize of a float image, written here: Pillow's bicubic per channel (mode F), clamped."""
    import numpy as np
    from PIL import Image
    channels = [np.asarray(Image.fromarray(image[0, ..., c].numpy().astype(np.float32), mode="F")
                           .resize((width, height), Image.BICUBIC)) for c in range(image.shape[-1])]
    return torch.from_numpy(np.stack(channels, -1))[None].clamp(0, 1)


def test_split_maps_returns_given_maps_as_the_sampler_does(lumix_model):
    """One shared rule on both routes: a given map comes back exactly as encoded, and with output_size
    'original' every map is stretched back to the photo's own size, the photo exactly as given."""
    vae, color = TinyVAE(), torch.rand(1, 48, 80, 3, generator=torch.Generator().manual_seed(4))  # not 64x64
    for output_size in ("sampled", "original"):
        a = NODES["LumiXSampler"].execute(lumix_model, conditioning(1), conditioning(2), vae, 2, 2, 1.0, "euler",
                                          "simple", SIZE, SIZE, 1, True, color=color, held_maps_size="explicit",
                                          output_size=output_size).result
        latent = NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, 1).result[0]
        model, held = NODES["LumiXHoldMaps"].execute(lumix_model, vae, latent, color=color).result
        out = SamplerCustomAdvanced().sample(NODES["LumiXNoise"].execute(2, True).result[0],
                                             CFGGuider().get_guider(model, conditioning(1), conditioning(2), 1.0)[0],
                                             KSamplerSelect().get_sampler("euler")[0],
                                             NODES["LumiXReferenceSigmas"].execute(2, 512, 512, latent=held).result[0],
                                             held)[0]
        b = NODES["LumiXSplitMaps"].execute(latent=out, vae=vae, output_size=output_size).result
        for name, x, y in zip(MAP_NAMES, a[:5], b):
            assert torch.equal(x, y), (output_size, name)
        expected = color if output_size == "original" else pillow_bicubic(color, SIZE, SIZE)
        torch.testing.assert_close(b[2], expected, atol=1e-4, rtol=0)  # the photo, not its VAE round trip
        decoded = vae.decode(out["samples"])[2:3]
        assert output_size == "original" or not torch.equal(decoded.clamp(0, 1), b[2])
    with pytest.raises(ValueError, match="only lines up with held_maps_resize 'stretch'"):
        _, held = NODES["LumiXHoldMaps"].execute(lumix_model, vae, latent, color=color, held_maps_resize="cover").result
        NODES["LumiXSplitMaps"].execute(latent=held, vae=vae, output_size="original")


def test_hold_maps_wraps_core_skip_layer_guidance_in_either_order(lumix_model):
    """Hold Maps' positive-only pass and core Skip Layer Guidance share sampler_calc_cond_batch_function:
    whichever is applied last, both run (SLG's function is called, the negative pass never is)."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiTSimple as SLG  # the one that sets that function

    def slg(model):
        args = dict(model=model, start_percent=0.0, end_percent=1.0, double_layers="0", single_layers="0")
        out = SLG.execute(**args) if hasattr(SLG, "execute") else SLG().skip_guidance(**args)
        patched = (out.result if hasattr(out, "result") else out)[0].clone()
        inner, calls = patched.model_options["sampler_calc_cond_batch_function"], []

        def counted(args):
            calls.append([c is not None for c in args["conds"]])
            return inner(args)
        patched.model_options["sampler_calc_cond_batch_function"] = counted
        return patched, calls

    vae, color = TinyVAE(), photo(seed=9)
    latent = NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, 1).result[0]

    def run(model, held):
        spy_calls = []

        def spy(executor, x, timestep, context, y=None, guidance=None, *args, **kwargs):
            options = args[2] if len(args) > 2 else kwargs.get("transformer_options", {})
            spy_calls.append(list(options.get("cond_or_uncond", [])))
            return executor(x, timestep, context, y, guidance, *args, **kwargs)
        model = model.clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
        out = comfy_nodes.KSampler().sample(model, 1, 2, 4.0, "euler", "simple", conditioning(1), conditioning(2),
                                            held)[0]["samples"]
        return out, spy_calls

    plain_model, held = NODES["LumiXHoldMaps"].execute(lumix_model, vae, latent, color=color).result
    expected, plain_calls = run(plain_model, held)
    assert plain_calls and all(c == [0] for c in plain_calls)  # positive pass only
    # SLG after Hold Maps (it sets its own function on the held model) and SLG before Hold Maps
    after, after_calls = slg(plain_model)
    slg_first, before_calls = slg(lumix_model)
    before, _ = NODES["LumiXHoldMaps"].execute(slg_first, vae, latent, color=color).result
    for model, slg_calls in ((after, after_calls), (before, before_calls)):
        out, model_calls = run(model, held)
        assert slg_calls and all(c == [True, False] for c in slg_calls)  # SLG ran, asked for the positive only
        assert all(c == [0] for c in model_calls)  # no negative pass reached the model
        assert torch.equal(out, expected)


def test_empty_latent_with_the_model_checks_it_as_the_sampler(lumix_model, caplog, monkeypatch):
    from comfy_host import tiny_flux
    from lumix_core.memory_estimate import SamplerMemoryError, check_latent_memory
    latent = NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, 2, model=lumix_model).result[0]["samples"]
    assert latent.shape == (10, lumix_model.get_model_object("latent_format").latent_channels, 8, 8)
    with caplog.at_level("WARNING", logger="LumiX"):
        NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, 1, model=tiny_flux())
    assert "model not patched" in caplog.text and "will NOT be aligned" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="LumiX"):
        NODES["LumiXEmptyLatent"].execute(SIZE, SIZE, 1, model=lumix_model)
    assert "not patched" not in caplog.text
    free = check_latent_memory(1024, 1024, 2, 2 ** 62) + 1  # the latents and maps fit, the run on the model not
    monkeypatch.setattr(comfy.model_management, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free)
    NODES["LumiXEmptyLatent"].execute(1024, 1024, 2)  # no model: only the latents and maps are counted
    with pytest.raises(Exception, match="2 scene\\(s\\) of 1024x1024 .* need at least") as refused:
        NODES["LumiXEmptyLatent"].execute(1024, 1024, 2, model=lumix_model)
    assert type(refused.value).__name__ == SamplerMemoryError.__name__
    with pytest.raises(ValueError, match="latent has 4 channels but the model's latents have 16"):
        NODES["LumiXHoldMaps"].execute(lumix_model, TinyVAE(), {"samples": torch.zeros(5, 4, 8, 8)}, color=photo())
