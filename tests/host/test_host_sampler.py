"""LumiX Intrinsic Sampler inside a real ComfyUI: tiny FLUX, tiny VAE, real comfy.sample."""
import logging

import numpy
import pytest
import torch

from comfy_host import (with_hidden, TinyVAE, conditioning, load_extension, tiny_flux,
                        tiny_lumix_model)  # first: skips this module where there is no ComfyUI

import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.utils  # noqa: E402
from lumix_core import MAP_NAMES  # noqa: E402

NODES = load_extension()
Sampler = NODES["LumiXSampler"]
SIZE = 64  # pixels; 8x8 latents, 16 image tokens


@pytest.fixture(scope="module")
def lumix_model(tmp_path_factory):
    return tiny_lumix_model(tmp_path_factory.mktemp("lumix_sampler_models"), "sampler_lumix.safetensors")


class Spy:
    """A keyed DIFFUSION_MODEL wrapper recording what every model call receives (x, timestep,
    guidance, batch size, which conditions are batched); with `short_circuit` the model is not run."""

    def __init__(self, short_circuit=False):
        self.calls, self.short_circuit = [], short_circuit

    def __call__(self, executor, x, timestep, context, y=None, guidance=None, *args, **kwargs):
        options = args[2] if len(args) > 2 else kwargs.get("transformer_options", {})  # after ref_latents, control
        self.calls.append({"x": x.clone(), "t": timestep.clone(), "batch": x.shape[0],
                           "guidance": None if guidance is None else guidance.clone(),
                           "conds": list(options.get("cond_or_uncond", []))})
        if self.short_circuit:
            return torch.zeros_like(x)
        return executor(x, timestep, context, y, guidance, *args, **kwargs)


def spied(model, short_circuit=False):
    spy, clone = Spy(short_circuit), model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    return clone, spy


def sample(model, seed=0, steps=3, cfg=1.0, scenes=1, shared_noise=True, sampler="euler", scheduler="simple",
           width=SIZE, height=SIZE, vae=None, held_maps_size="width x height", **kwargs):
    out = Sampler.execute(model, conditioning(1), conditioning(2), vae or TinyVAE(), seed, steps, cfg, sampler,
                          scheduler, width, height, scenes, shared_noise, held_maps_size=held_maps_size, **kwargs)
    return out.result


def photo(n=1, seed=5, size=SIZE, channels=3):
    return torch.rand(n, size, size, channels, generator=torch.Generator().manual_seed(seed))


def test_schema_lists_the_contracted_sockets():
    info = Sampler.GET_NODE_INFO_V1()
    assert info["display_name"] == "LumiX Intrinsic Sampler" and info["category"] == "LumiX/sampling"
    assert list(info["input"]["required"]) == ["model", "positive", "negative", "vae", "seed", "steps", "cfg",
                                               "sampler_name", "scheduler", "width", "height", "scenes", "shared_noise"]
    assert list(info["input"]["optional"]) == list(MAP_NAMES) + [
        "schedule", "held_maps_guidance", "held_maps_size", "area_width", "area_height", "held_maps_resize",
        "output_size"]
    opt = info["input"]["optional"]
    assert opt["schedule"][1]["default"] == "reference"
    assert opt["held_maps_guidance"][1]["default"] == "reference: guidance 1.0, no CFG"
    assert "1.0" in opt["held_maps_guidance"][1]["tooltip"] and "no CFG" in opt["held_maps_guidance"][1]["tooltip"]
    assert (opt["area_width"][1]["default"], opt["area_height"][1]["default"]) == (1536, 1152)
    assert opt["held_maps_resize"][1]["default"].startswith("stretch")
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


def test_resize_policies_and_alpha(lumix_model):
    """Stretch and cover use the reference's filter (Pillow's bicubic; this float image is off the 8-bit
    grid, so per channel in float: see test_host_given_maps for 8-bit photos); alpha is dropped."""
    from PIL import Image

    def pillow(rgb, box=None):  # [H, W, 3] float -> [1, SIZE, SIZE, 3], Pillow mode "F" per channel
        planes = [numpy.asarray(Image.fromarray(rgb[..., c].numpy()).resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box))
                  for c in range(3)]
        return torch.from_numpy(numpy.stack(planes, -1)).clamp(0, 1)[None]

    vae = TinyVAE()
    rgba = torch.rand(1, 96, 80, 4, generator=torch.Generator().manual_seed(3))
    images = sample(lumix_model, steps=1, vae=vae, color=rgba)  # default: stretch, as the reference
    torch.testing.assert_close(images[2], pillow(rgba[0, ..., :3]), rtol=0, atol=1e-6)
    images = sample(lumix_model, steps=1, vae=vae, color=rgba, held_maps_resize="cover and centre-crop")
    torch.testing.assert_close(images[2], pillow(rgba[0, ..., :3], box=(0, 8, 80, 88)), rtol=0, atol=1e-6)
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


class FakeServer:
    def __init__(self):
        self.texts = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((node_id, text))


def test_unpatched_model_runs_and_warns_in_the_ui(caplog, monkeypatch):
    import sys
    import types
    fake = FakeServer()
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=fake)))
    node = with_hidden(Sampler, {"UNIQUE_ID": "17"})
    with caplog.at_level(logging.WARNING):
        out = node.execute(tiny_flux(seed=3), conditioning(1), conditioning(2), TinyVAE(), 0, 1, 1.0, "euler",
                           "simple", SIZE, SIZE, 1, True)
    assert "will NOT be aligned" in caplog.text
    assert len(fake.texts) == 1 and fake.texts[0][0] == "17" and "will NOT be aligned" in fake.texts[0][1]
    # what to do is named, within the ~120 characters the node's text box shows without scrolling
    assert "LumiX Tensor LoRA Loader" in fake.texts[0][1] and len(fake.texts[0][1]) <= 120
    assert len(out.result) == 6


def test_errors_say_what_to_do(lumix_model):
    import comfy.model_patcher

    class NotFlux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)
            self.device = None

    with pytest.raises(ValueError, match="LumiX patches FLUX.1-dev, but this MODEL"):
        sample(comfy.model_patcher.ModelPatcher(NotFlux(), torch.device("cpu"), torch.device("cpu")))
    with pytest.raises(ValueError, match=r"multiples of 16 \(got 72x64\); try 80x64|multiples of 16 \(got 72x64\); try 64x64"):
        sample(lumix_model, width=72)
    with pytest.raises(ValueError, match="color input holds 2 image\\(s\\) but scenes is 1"):
        sample(lumix_model, color=photo(n=2))
    with pytest.raises(ValueError, match="only lines up with held_maps_resize 'stretch"):
        sample(lumix_model, color=photo(), held_maps_resize="cover and centre-crop", output_size="given map's original size")
    with pytest.raises(ValueError, match="unknown schedule"):
        sample(lumix_model, schedule="karras")
    with pytest.raises(ValueError, match="unknown held_maps_guidance"):
        sample(lumix_model, color=photo(), held_maps_guidance="strong")
    with pytest.raises(ValueError, match="all five maps are given"):
        sample(lumix_model, **{name: photo() for name in MAP_NAMES})


# ---- the reference's schedule and decomposition settings ----------------------------------------

def formula_sigmas(width, height, steps):
    """The reference's schedule written out independently: mu from (W//8)*(H//8)//256 tokens."""
    import math
    n = (width // 8) * (height // 8) // 256
    mu = 0.5 + (1.15 - 0.5) * (n - 256) / (4096 - 256)
    return [math.exp(mu) / (math.exp(mu) + 1 / t - 1) for t in (1 - i / steps for i in range(steps))]


@pytest.mark.parametrize("width,height,steps", [(64, 64, 30), (256, 128, 28), (128, 192, 5)])
def test_default_schedule_is_the_references(lumix_model, width, height, steps):
    model, spy = spied(lumix_model, short_circuit=True)
    sample(model, steps=steps, width=width, height=height)
    timesteps = [call["t"][0].item() for call in spy.calls]
    assert len(timesteps) == steps
    torch.testing.assert_close(torch.tensor(timesteps, dtype=torch.float64),
                               torch.tensor(formula_sigmas(width, height, steps), dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)  # float32 sigmas
    for call in spy.calls:
        assert call["batch"] == 5 and torch.equal(call["t"], call["t"][:1].expand(5))
        assert call["guidance"].tolist() == [3.5] * 5  # text: the conditioning's FluxGuidance


def test_model_schedule_option_uses_the_models_own_sampling(lumix_model):
    model, spy = spied(lumix_model, short_circuit=True)
    sample(model, steps=6, schedule="model sampling + scheduler", scheduler="beta")
    expected = comfy.samplers.calculate_sigmas(lumix_model.get_model_object("model_sampling"), "beta", 6)[:-1]
    torch.testing.assert_close(torch.stack([c["t"][0] for c in spy.calls]).float(), expected.float())
    reference = torch.tensor(formula_sigmas(SIZE, SIZE, 6), dtype=torch.float32)
    assert not torch.allclose(expected.float(), reference, atol=1e-3)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_decomposition_runs_as_the_reference(lumix_model, cfg):
    model, spy = spied(lumix_model, short_circuit=True)
    sample(model, steps=4, cfg=cfg, color=photo())
    for call in spy.calls:
        assert call["batch"] == 5 and call["conds"] == [0]  # no negative pass, whatever cfg says
        assert call["guidance"].tolist() == [1.0] * 5  # hard-coded guidance embed 1.0
        assert call["t"][2] == 0


def test_decomposition_as_connected_uses_cfg_and_guidance(lumix_model):
    model, spy = spied(lumix_model, short_circuit=True)
    sample(model, steps=2, cfg=3.0, color=photo(), held_maps_guidance="as connected: conditioning guidance and cfg")
    for call in spy.calls:
        assert call["batch"] == 10 and sorted(call["conds"]) == [0, 1]
        assert call["guidance"].tolist() == [3.5] * 10
        assert call["t"][2] == 0 and call["t"][7] == 0


def test_reference_decomposition_equals_cfg_1_with_guidance_1(lumix_model):
    """'reference' with cfg 3 gives exactly what cfg 1 with a FluxGuidance of 1.0 gives."""
    color = photo()
    ours = sample(lumix_model, seed=4, steps=3, cfg=3.0, color=color)[5]["samples"]
    out = Sampler.execute(lumix_model, conditioning(1, guidance=1.0), conditioning(2), TinyVAE(), 4, 3, 1.0, "euler",
                          "simple", SIZE, SIZE, 1, True, color=color, held_maps_size="width x height",
                          held_maps_guidance="as connected: conditioning guidance and cfg").result[5]["samples"]
    assert torch.equal(ours, out)


@pytest.mark.parametrize("photo_size,sampled", [((80, 60), (64, 48)), ((60, 80), (48, 64))])
def test_size_from_photo_and_original_size_output(lumix_model, photo_size, sampled):
    w, h = photo_size
    color = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(9))
    model, spy = spied(lumix_model)
    *images, latent = sample(model, steps=2, color=color, held_maps_size="from the given map (aspect kept, area budget)",
                             area_width=64, area_height=48)
    assert latent["samples"].shape[-2:] == (sampled[1] // 8, sampled[0] // 8)
    assert all(image.shape == (1, sampled[1], sampled[0], 3) for image in images)
    assert spy.calls[0]["x"].shape[-2:] == (sampled[1] // 8, sampled[0] // 8)
    *originals, latent2 = sample(lumix_model, steps=2, color=color, area_width=64, area_height=48,
                                 held_maps_size="from the given map (aspect kept, area budget)",
                                 output_size="given map's original size")
    assert torch.equal(latent2["samples"], latent["samples"])
    assert all(image.shape == (1, h, w, 3) for image in originals)
    assert torch.equal(originals[2], color)  # the photo comes back as given
    back = torch.nn.functional.interpolate(images[0].movedim(-1, 1), size=(h, w), mode="bicubic", align_corners=False)
    torch.testing.assert_close(originals[0], back.movedim(1, -1).clamp(0, 1), rtol=1e-5, atol=1e-5)


def test_preview_tiles_the_five_maps_of_the_first_scene(lumix_model, monkeypatch):
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod
    monkeypatch.setattr(latent_preview.args, "preview_method", LatentPreviewMethod.Latent2RGB)
    previews = []
    model, spy = spied(lumix_model)

    def hook(value, total, preview, node_id=None):
        previews.append(preview)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        *_, latent = sample(model, steps=2, scenes=2)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert len(previews) == 2 and all(p is not None for p in previews)
    fmt, image, _max_size = previews[-1]
    assert fmt == "JPEG" and image.size == (5 * SIZE // 8, SIZE // 8)
    # Independent: each map of scene 0 through ComfyUI's latent2rgb on its own, placed side by side.
    latent_format = lumix_model.model.latent_format
    single = latent_preview.Latent2RGBPreviewer(latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias)
    x0 = lumix_model.model.process_latent_in(latent["samples"])  # the last preview shows the final x0
    parts = [torch.from_numpy(numpy.array(single.decode_latent_to_preview(x0[i:i + 1]))) for i in range(5)]
    expected = torch.cat(parts, dim=1).float()
    got = torch.from_numpy(numpy.array(image)).float()
    assert (got - expected).abs().mean() < 12  # JPEG-compressed
    assert (got[:, :SIZE // 8] - expected[:, :SIZE // 8]).abs().mean() < (got[:, :SIZE // 8] - expected[:, SIZE // 8:2 * SIZE // 8]).abs().mean()


def reference_loop(model, noise, steps, width, height, pos, neg, cfg, guidance, held=None, clean=None):
    """The reference's sampling written out independently (x-flux style): its sigmas, Euler steps
    x += (t_prev - t_curr) * v, true CFG neg + cfg * (pos - neg) on separate passes, held maps fed as
    their clean latent at t = 0 and never updated. Calls the same patched diffusion model directly."""
    diffusion = model.get_model_object("diffusion_model")
    options = model.model_options.get("transformer_options", {})
    ts = formula_sigmas(width, height, steps) + [0.0]
    x = noise.clone()
    batch = x.shape[0]

    def velocity(x, t, cond):
        context = cond[0][0].expand(batch, -1, -1)
        y = cond[0][1]["pooled_output"].expand(batch, -1)
        with torch.no_grad():
            return diffusion(x, t, context, y=y, guidance=torch.full((batch,), guidance), transformer_options=options)

    for t_curr, t_prev in zip(ts[:-1], ts[1:]):
        t = torch.full((batch,), t_curr)
        if held is not None:
            x[held] = clean[held]
            t[held] = 0.0
        v = velocity(x, t, pos)
        if cfg != 1.0:
            v_neg = velocity(x, t, neg)
            v = v_neg + cfg * (v - v_neg)
        step = x + (t_prev - t_curr) * v
        x = torch.where(held.view(-1, 1, 1, 1), x, step) if held is not None else step
    if held is not None:
        x[held] = clean[held]
    return x


@pytest.mark.parametrize("mode", ["text", "decomposition"])
def test_whole_run_matches_an_independent_reference_loop(lumix_model, mode):
    from lumix_core.sampling import scene_noise
    width, height, steps, seed = 128, 128, 6, 13  # 128x128: image_seq_len 1, so mu is not the 64x64 one
    vae = TinyVAE()
    color = photo(size=128) if mode == "decomposition" else None
    maps = {"color": color} if color is not None else {}
    *_, latent = sample(lumix_model, seed=seed, steps=steps, cfg=3.0, width=width, height=height, vae=vae, **maps)
    noise = scene_noise((16, height // 8, width // 8), seed, 1)
    inner = lumix_model.model
    if mode == "text":
        expected = reference_loop(lumix_model, noise, steps, width, height, conditioning(1), conditioning(2), 3.0, 3.5)
    else:
        clean = torch.zeros(5, 16, height // 8, width // 8)
        clean[2] = inner.process_latent_in(vae.encode(color))[0]
        held = torch.tensor([False, False, True, False, False])
        expected = reference_loop(lumix_model, noise, steps, width, height, conditioning(1), None, 1.0, 1.0, held, clean)
    expected = inner.process_latent_out(expected)
    got = latent["samples"]
    scale = expected.abs().mean()
    assert (got - expected).abs().max() / scale < 1e-4
