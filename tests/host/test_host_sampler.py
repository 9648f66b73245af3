"""LumiX Intrinsic Sampler inside a real ComfyUI: tiny FLUX, tiny VAE, real comfy.sample."""
import logging

import pytest
import torch

from comfy_host import (TinyVAE, conditioning, load_extension, tiny_flux,
                        tiny_lumix_model)  # first: skips this module where there is no ComfyUI

import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.utils  # noqa: E402
from lumix_core import MAP_NAMES  # noqa: E402

NODES = load_extension()
Sampler = NODES["LumiXSampler"]
SIZE = 64  # pixels; 8x8 latents, 16 image tokens


@pytest.fixture(scope="module")
def lumix_model(tmp_path_factory):
    return tiny_lumix_model(tmp_path_factory.mktemp("lumix_sampler_models"), "sampler_lumix.safetensors")


class Spy:
    """A keyed DIFFUSION_MODEL wrapper recording what every model call receives."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, timestep, context, *args, **kwargs):
        self.calls.append({"x": x.clone(), "t": timestep.clone(), "batch": x.shape[0]})
        return executor(x, timestep, context, *args, **kwargs)


def spied(model):
    spy, clone = Spy(), model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    return clone, spy


def sample(model, seed=0, steps=3, cfg=1.0, scenes=1, shared_noise=True, sampler="euler", scheduler="simple",
           width=SIZE, height=SIZE, vae=None, **maps):
    out = Sampler.execute(model, conditioning(1), conditioning(2), vae or TinyVAE(), seed, steps, cfg, sampler,
                          scheduler, width, height, scenes, shared_noise, **maps)
    return out.result


def photo(n=1, seed=5, size=SIZE, channels=3):
    return torch.rand(n, size, size, channels, generator=torch.Generator().manual_seed(seed))


def test_schema_lists_the_contracted_sockets():
    info = Sampler.GET_NODE_INFO_V1()
    assert info["display_name"] == "LumiX Intrinsic Sampler" and info["category"] == "LumiX/sampling"
    assert list(info["input"]["required"]) == ["model", "positive", "negative", "vae", "seed", "steps", "cfg",
                                               "sampler_name", "scheduler", "width", "height", "scenes", "shared_noise"]
    assert list(info["input"]["optional"]) == list(MAP_NAMES)
    assert info["output"] == ["IMAGE"] * 5 + ["LATENT"]
    assert info["output_name"] == list(MAP_NAMES) + ["latent"]
    req = info["input"]["required"]
    assert req["steps"][1]["default"] == 50 and req["cfg"][1]["default"] == 3.0
    assert req["sampler_name"][1]["default"] == "euler" and req["scheduler"][1]["default"] == "simple"
    assert req["width"][1]["default"] == 512 and req["shared_noise"][1]["default"] is True


def test_text_to_intrinsic_shapes_and_order(lumix_model):
    vae = TinyVAE()
    *images, latent = sample(lumix_model, scenes=2, vae=vae)
    samples = latent["samples"]
    assert samples.shape == (10, 16, SIZE // 8, SIZE // 8)
    for i, image in enumerate(images):
        assert image.shape == (2, SIZE, SIZE, 3)
        expected = vae.decode(samples[i::5]).clamp(0, 1)
        torch.testing.assert_close(image, expected)
    assert not torch.allclose(images[0], images[2])  # albedo and color differ


def test_decomposition_timesteps_and_held_latent(lumix_model):
    model, spy = spied(lumix_model)
    vae, color = TinyVAE(), photo()
    *images, latent = sample(model, steps=4, vae=vae, color=color)
    encoded = vae.encode(color)
    clean = lumix_model.model.process_latent_in(encoded)
    assert len(spy.calls) == 4
    schedule = []
    for call in spy.calls:
        t = call["t"]
        assert t.shape == (5,)
        assert t[2] == 0  # held color: timestep 0 at every call
        assert torch.equal(call["x"][2], clean[0])  # and always its clean latent
        others = t[[0, 1, 3, 4]]
        assert (others > 0).all() and torch.equal(others, others[:1].expand(4))
        schedule.append(others[0].item())
    assert schedule == sorted(schedule, reverse=True) and schedule[0] > 0.9  # the schedule, high to low
    assert torch.equal(latent["samples"][2], encoded[0])  # the held latent equals its encoding
    assert torch.equal(images[2], color)  # the given map comes back as given
    assert not torch.equal(latent["samples"][0], torch.zeros_like(latent["samples"][0]))


def test_any_subset_may_be_given(lumix_model):
    model, spy = spied(lumix_model)
    sample(model, steps=2, albedo=photo(seed=1), depth=photo(seed=2), normal=photo(seed=3))
    for call in spy.calls:
        assert call["t"][[0, 3, 4]].eq(0).all() and call["t"][[1, 2]].gt(0).all()


def test_seed_reproducible(lumix_model):
    a = sample(lumix_model, seed=11)[5]["samples"]
    b = sample(lumix_model, seed=11)[5]["samples"]
    c = sample(lumix_model, seed=12)[5]["samples"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_shared_noise_starts_all_maps_equal(lumix_model):
    model, spy = spied(lumix_model)
    sample(model, steps=1, scenes=2)
    x0 = spy.calls[0]["x"]
    for s in (0, 5):
        assert all(torch.equal(x0[s], x0[s + i]) for i in range(1, 5))
    assert not torch.equal(x0[0], x0[5])
    model, spy = spied(lumix_model)
    sample(model, steps=1, shared_noise=False)
    x0 = spy.calls[0]["x"]
    assert not torch.equal(x0[0], x0[1])


def test_cfg_runs_cond_and_uncond_and_equals_scene_by_scene(lumix_model):
    model, spy = spied(lumix_model)
    two = sample(model, seed=20, cfg=3.0, scenes=2)
    assert {c["batch"] for c in spy.calls} == {20}  # 2 scenes x 5 maps x (cond, uncond)
    first = sample(lumix_model, seed=20, cfg=3.0, scenes=1)
    second = sample(lumix_model, seed=21, cfg=3.0, scenes=1)
    torch.testing.assert_close(two[5]["samples"][:5], first[5]["samples"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two[5]["samples"][5:], second[5]["samples"], rtol=1e-4, atol=1e-4)
    for i in range(5):
        torch.testing.assert_close(two[i][1:], second[i], rtol=1e-4, atol=1e-4)
    model, spy = spied(lumix_model)
    sample(model, cfg=1.0)
    assert {c["batch"] for c in spy.calls} == {5}  # cfg 1 skips the negative pass


@pytest.mark.parametrize("sampler,scheduler", [("dpmpp_2m", "karras"), ("euler_ancestral", "beta"),
                                               ("heun", "sgm_uniform")])
def test_other_samplers_and_schedulers_keep_held_maps(lumix_model, sampler, scheduler):
    vae, color = TinyVAE(), photo()
    *_, latent = sample(lumix_model, steps=3, sampler=sampler, scheduler=scheduler, vae=vae, color=color)
    assert torch.equal(latent["samples"][2], vae.encode(color)[0])
    assert torch.isfinite(latent["samples"]).all()


def test_resize_policy_and_alpha(lumix_model):
    vae = TinyVAE()
    rgba = photo(size=96, channels=4)
    images = sample(lumix_model, steps=1, vae=vae, color=rgba)
    expected = comfy.utils.common_upscale(rgba[..., :3].movedim(-1, 1), SIZE, SIZE, "bicubic", "center").movedim(1, -1).clamp(0, 1)
    torch.testing.assert_close(images[2], expected)
    assert images[0].shape == (1, SIZE, SIZE, 3)


def test_progress_bar_and_cancel(lumix_model):
    updates = []

    def hook(value, total, preview, node_id=None):
        updates.append((value, total))
        comfy.model_management.throw_exception_if_processing_interrupted()  # what main.py's hook does

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        sample(lumix_model, steps=3)
        assert [u[0] for u in updates] == [1, 2, 3] and all(u[1] == 3 for u in updates)
        updates.clear()

        def cancel_after_first(value, total, preview, node_id=None):
            updates.append(value)
            if value == 1:
                comfy.model_management.interrupt_current_processing(True)
            comfy.model_management.throw_exception_if_processing_interrupted()

        comfy.utils.set_progress_bar_global_hook(cancel_after_first)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(lumix_model, steps=10)
        assert updates == [1]
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)


def test_unpatched_model_runs_but_warns(caplog):
    with caplog.at_level(logging.WARNING):
        images = sample(tiny_flux(seed=3), steps=1)
    assert "will NOT be aligned" in caplog.text
    assert len(images) == 6


def test_errors_say_what_to_do(lumix_model):
    import comfy.model_patcher

    class NotFlux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)
            self.device = None

    with pytest.raises(ValueError, match="LumiX patches FLUX.1 models"):
        sample(comfy.model_patcher.ModelPatcher(NotFlux(), torch.device("cpu"), torch.device("cpu")))
    with pytest.raises(ValueError, match=r"multiples of 16 \(got 72x64\); try 80x64|multiples of 16 \(got 72x64\); try 64x64"):
        sample(lumix_model, width=72)
    with pytest.raises(ValueError, match="color input holds 2 image\\(s\\) but scenes is 1"):
        sample(lumix_model, color=photo(n=2))
    with pytest.raises(ValueError, match="all five maps are given"):
        sample(lumix_model, **{name: photo() for name in MAP_NAMES})
