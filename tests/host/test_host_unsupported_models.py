"""Models LumiX cannot serve are refused with their name before any block runs, on every ComfyUI
version: FLUX.2 (a Flux-class model since ComfyUI 0.8), FLUX.1-schnell (no guidance embedding), FLUX.1
Fill/Depth/Canny (extra input channels), and Kontext-style reference latents at sampling time."""
import dataclasses

import pytest
import torch

from comfy_host import (DOUBLE, HEADS, HIDDEN, SINGLE, conditioning, load_extension, randomize_, tiny_flux,
                        tiny_lumix_checkpoint)

import comfy.ldm.flux.model as flux_model  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sample  # noqa: E402

NODES = load_extension()
Loader = NODES["LumiXTensorLoRALoader"]
QueryBroadcast = NODES["LumiXQueryBroadcast"]


class Holder(torch.nn.Module):
    """The part of a ComfyUI BaseModel that ModelPatcher and get_model_object need."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.device = torch.device("cpu")


def tiny_flux2():
    """A FLUX.2-shaped transformer in ComfyUI's Flux class where this ComfyUI has FLUX.2 (0.8 on);
    on a version without it, a FLUX.1 whose params carry FLUX.2's flags, as a FLUX.2 would."""
    fields = {f.name for f in dataclasses.fields(flux_model.FluxParams)}
    if "global_modulation" in fields:
        head = HIDDEN // HEADS
        model = flux_model.Flux(
            image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=32,
            hidden_size=HIDDEN, mlp_ratio=3.0, num_heads=HEADS, depth=DOUBLE, depth_single_blocks=SINGLE,
            axes_dim=[head // 4] * 4, theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
            txt_ids_dims=[3], global_modulation=True, mlp_silu_act=True, ops_bias=False,
            default_ref_method="index", ref_index_scale=10.0, dtype=torch.float32,
            operations=comfy.ops.disable_weight_init)
        randomize_(model, 3)
        return comfy.model_patcher.ModelPatcher(Holder(model), torch.device("cpu"), torch.device("cpu"))
    patcher = tiny_flux(seed=3)
    patcher.get_model_object("diffusion_model").params.global_modulation = True
    return patcher


def tiny_schnell():
    patcher = tiny_flux(seed=4)
    diffusion_model = patcher.get_model_object("diffusion_model")
    diffusion_model.params.guidance_embed = False
    return patcher


def tiny_fill():
    patcher = tiny_flux(seed=5)
    patcher.get_model_object("diffusion_model").params.in_channels = 96
    return patcher


@pytest.mark.parametrize("build,named", [
    (tiny_flux2, "FLUX.2"),
    (tiny_schnell, "FLUX.1-schnell"),
    (tiny_fill, "96 input channels"),
])
def test_models_lumix_cannot_serve_are_refused_by_name(tmp_path, build, named):
    name = tiny_lumix_checkpoint(tmp_path, "lumix_unsupported.safetensors")
    model = build()
    before = repr(model.model_options)
    for run in (lambda: Loader.execute(model, name, 1.0, True), lambda: QueryBroadcast.execute(model, "color", 5)):
        with pytest.raises(ValueError) as refused:
            run()
        message = str(refused.value)
        assert "trained on FLUX.1-dev" in message and named in message and "Load Diffusion Model" in message
    assert repr(model.model_options) == before  # nothing half-applied to the shared model


def test_flux1_dev_shape_is_accepted(tmp_path):
    name = tiny_lumix_checkpoint(tmp_path, "lumix_ok.safetensors")
    patched = Loader.execute(tiny_flux(seed=6), name, 1.0, True).result[0]
    assert patched.model_options["transformer_options"]["lumix"].adapters


def test_reference_latents_are_refused_when_sampling(tmp_path):
    name = tiny_lumix_checkpoint(tmp_path, "lumix_kontext.safetensors")
    patched = Loader.execute(tiny_flux(seed=7), name, 1.0, True).result[0]
    latent = torch.zeros(5, 16, 8, 8)
    positive = conditioning(1)
    positive[0][1]["reference_latents"] = [torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="cannot use reference latents.*ReferenceLatent"):
        comfy.sample.sample(patched, noise, 1, 1.0, "euler", "simple", positive, conditioning(2), latent)
    # the same run without reference latents samples, and applies the wrapper once however often patched
    again = QueryBroadcast.execute(patched, "color", 5).result[0]
    from comfy.patcher_extension import WrappersMP
    assert len(again.get_wrappers(WrappersMP.DIFFUSION_MODEL, "lumix_refuse_reference_latents")) == 1
    out = comfy.sample.sample(again, noise, 1, 1.0, "euler", "simple", conditioning(1), conditioning(2), latent)
    assert out.shape == latent.shape and torch.isfinite(out).all()
