"""LumiX under ComfyUI's own fast paths, on the tiny FLUX: TorchCompileModel, EasyCache, fp8 weights.

torch.compile runs with the aot_eager backend (dynamo capture plus AOT autograd's functionalisation,
no C++ code generation): inductor on the CPU took over three minutes to compile even the tiny model
here, too slow for a test. The node's other choices only change the code generator behind the same
captured graph. The model runs with ComfyUI's PyTorch attention (what GPUs use): the CPU default,
sub-quadratic attention, asks psutil for free memory on every call, which breaks the graph in
ComfyUI's own code, outside LumiX.
"""
import logging

import pytest
import torch

from comfy_host import (DOUBLE, HIDDEN, SINGLE, TinyVAE, conditioning, extension_module, folder_paths,
                        load_extension, model_inputs, run_model, tiny_flux)
from safetensors.torch import save_file
from tiny_flux import official_state_dict

import comfy.ldm.modules.attention as comfy_attention_module  # noqa: E402
import torch._dynamo  # noqa: E402
from comfy_extras.nodes_easycache import EasyCacheNode  # noqa: E402
from comfy_extras.nodes_torch_compile import TorchCompileModel  # noqa: E402

NODES = load_extension()
Loader, Sampler = NODES["LumiXTensorLoRALoader"], NODES["LumiXSampler"]
SIZE = 32


@pytest.fixture(scope="module")
def lumix_name(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lumix_fast")
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, scale=0.5),
              str(folder / "fast_lumix.safetensors"))
    folder_paths.add_model_folder_path("lumix", str(folder))
    return "fast_lumix.safetensors"


def lumix(model, name, **optional):
    return Loader.execute(model, name, 1.0, True, **optional).result[0]


def pytorch_attention(model):
    """A clone whose attention is ComfyUI's PyTorch SDPA path (what GPUs run), via the core override."""
    clone = model.clone()
    clone.model_options["transformer_options"]["optimized_attention_override"] = (
        lambda func, *args, **kwargs: comfy_attention_module.attention_pytorch(*args, **kwargs))
    return clone


def sample(model, steps=1, seed=0, **maps):
    return Sampler.execute(model, conditioning(1), conditioning(2), TinyVAE(), seed, steps, 1.0, "euler", "simple",
                           SIZE, SIZE, 1, True, **maps).result


def test_torch_compile_model_node_traces_lumix_without_graph_breaks(lumix_name):
    model = pytorch_attention(lumix(tiny_flux(seed=1), lumix_name))
    eager = sample(model)[5]["samples"]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled_model = TorchCompileModel.execute(model, "aot_eager").result[0]
        compiled = sample(compiled_model)[5]["samples"]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really was compiled
        breaks = dict(torch._dynamo.utils.counters["graph_break"])
        assert sum(breaks.values()) == 0, breaks
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert not torch.equal(eager, sample(pytorch_attention(tiny_flux(seed=1)))[5]["samples"])  # LumiX was on


def test_easycache_skips_steps_and_held_maps_stay_exact(lumix_name, caplog):
    model = lumix(tiny_flux(seed=4), lumix_name)
    cached = EasyCacheNode.execute(model, 3.0, 0.0, 1.0, False).result[0]
    runs = []
    handle = model.get_model_object("diffusion_model").img_in.register_forward_pre_hook(lambda m, a: runs.append(1))
    color = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(5))
    vae = TinyVAE()
    steps = 8
    try:
        with caplog.at_level(logging.INFO):
            *images, latent = Sampler.execute(cached, conditioning(1), conditioning(2), vae, 0, steps, 1.0, "euler",
                                              "simple", SIZE, SIZE, 1, True, color=color,
                                              held_maps_size="width x height").result
    finally:
        handle.remove()
    assert 0 < len(runs) < steps, f"EasyCache ran the model {len(runs)} times in {steps} steps"
    assert "EasyCache - skipped" in caplog.text
    assert torch.equal(latent["samples"][2], vae.encode(color)[0])  # the held colour latent, exactly
    assert torch.equal(images[2], color)
    assert torch.isfinite(latent["samples"]).all()


def test_fp8_weights_equal_a_bf16_model_with_the_same_rounded_weights(lumix_name):
    fp8 = tiny_flux(seed=6, dtype=torch.float8_e4m3fn, manual_cast=torch.bfloat16)
    bf16 = tiny_flux(seed=6, dtype=torch.bfloat16)
    with torch.no_grad():  # the bf16 model gets the fp8 model's weights, i.e. the same rounded values
        for (name, w8), (_, w16) in zip(fp8.model.diffusion_model.state_dict().items(),
                                        bf16.model.diffusion_model.state_dict().items()):
            w16.copy_(w8.to(torch.bfloat16))
    inputs = model_inputs(5, seed=7, dtype=torch.bfloat16)
    p8, p16 = lumix(fp8, lumix_name), lumix(bf16, lumix_name)
    settings = extension_module().nodes.patch.lumix_settings(p8)
    assert next(iter(settings.adapters.values()))["kv_tt_lora"].G2.dtype == torch.bfloat16  # auto: compute dtype
    out8, out16 = run_model(p8, inputs), run_model(p16, inputs)
    assert out8.dtype == torch.bfloat16 and torch.isfinite(out8).all()
    assert torch.equal(out8, out16)
    assert not torch.equal(out8, run_model(fp8, inputs))
