"""The two model-patching nodes inside a real ComfyUI, on a tiny random FLUX."""
import logging

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import (COMFYUI_VERSION, DOUBLE, HIDDEN, SINGLE, comfy_attention, extension_module,
                        folder_paths, load_extension, model_inputs, run_model, tiny_flux)
from lumix_core import TensorLoRA, double_block_forward, single_block_forward
from tiny_flux import official_state_dict

NODES = load_extension()
Loader = NODES["LumiXTensorLoRALoader"]
QueryBroadcast = NODES["LumiXQueryBroadcast"]


@pytest.fixture(scope="module")
def lumix_dir(tmp_path_factory):
    """A models/lumix folder of test checkpoints, registered with ComfyUI's folder_paths."""
    folder = tmp_path_factory.mktemp("lumix_models")
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, scale=0.5),
              str(folder / "tiny_lumix.safetensors"), metadata={"alpha": "2.0"})
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=1, single=1, prefix="diffusion_model.", seed=1),
              str(folder / "partial_lumix.safetensors"))
    save_file(official_state_dict(hidden=2 * HIDDEN, R=4, double=DOUBLE, single=SINGLE),
              str(folder / "wide_lumix.safetensors"))
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE + 3, single=SINGLE),
              str(folder / "deep_lumix.safetensors"))
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(folder / "some_other_lora.safetensors"))
    (folder / "broken.safetensors").write_bytes(b"\x00" * 5)
    folder_paths.add_model_folder_path("lumix", str(folder))
    return folder


def load(model, name="tiny_lumix.safetensors", strength=1.0, query_broadcast=True, **optional):
    return Loader.execute(model, name, strength, query_broadcast, **optional).result[0]


def adapters_by_hand(path):
    from lumix_core import load_checkpoint
    return load_checkpoint(str(path)).tensor_loras()


def test_comfyui_version_is_reported_and_is_a_tested_one():
    assert COMFYUI_VERSION.count(".") == 2
    print(f"host tests against ComfyUI {COMFYUI_VERSION}")
    host_version = extension_module().nodes.host_version
    assert COMFYUI_VERSION in host_version.TESTED_COMFYUI  # CI's trees are the tested versions
    assert host_version.log_untested_host() is None  # so nothing is logged at start


def test_nodes_in_object_info_with_the_contracted_inputs(lumix_dir):
    info = Loader.GET_NODE_INFO_V1()
    assert info["display_name"] == "LumiX Tensor LoRA Loader" and info["category"] == "LumiX/model"
    required = info["input"]["required"]
    assert list(required) == ["model", "lumix_name", "strength", "query_broadcast"]
    assert required["lumix_name"][0] == "COMBO"
    options = required["lumix_name"][1]["options"]
    assert "tiny_lumix.safetensors" in options and "broken.safetensors" in options
    assert required["strength"][1]["default"] == 1.0 and required["strength"][1]["min"] < 0
    assert required["query_broadcast"][1]["default"] is True
    optional = info["input"]["optional"]  # optional, so saved workflows and API prompts keep working
    assert list(optional) == ["adapter_dtype"] and optional["adapter_dtype"][1]["default"] == "auto"
    assert optional["adapter_dtype"][1]["options"] == ["auto", "bfloat16", "float16", "float32"]
    assert info["output"] == ["MODEL"]
    qb = QueryBroadcast.GET_NODE_INFO_V1()
    assert qb["display_name"] == "LumiX Query-Broadcast Attention"
    assert list(qb["input"]["required"]) == ["model", "source_map", "maps_per_scene"]
    assert qb["input"]["required"]["maps_per_scene"][1]["default"] == 5
    assert "lumix" in folder_paths.folder_names_and_paths


def test_patched_forward_equals_core_block_functions_by_hand(lumix_dir):
    base = tiny_flux(seed=1)
    patched = load(base, strength=0.8)
    inputs = model_inputs(10, seed=2)
    got = run_model(patched, inputs)

    adapters = adapters_by_hand(lumix_dir / "tiny_lumix.safetensors")
    dm = base.get_model_object("diffusion_model")
    hooks, stash = [], {}
    for kind, blocks in (("double_blocks", dm.double_blocks), ("single_blocks", dm.single_blocks)):
        for i, block in enumerate(blocks):
            kv, proj = adapters[(kind, i)]["kv_tt_lora"], adapters[(kind, i)]["proj_tt_lora"]

            def keep_inputs(module, args, kwargs):
                # ComfyUI's blocks update txt / x in place: keep the inputs as they came in
                stash[module] = ([a.clone() for a in args],
                                 {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

            def reroute(module, _args, _kwargs, output, kind=kind, kv=kv, proj=proj):
                args, kwargs = stash.pop(module)
                att = comfy_attention(kwargs.get("transformer_options", {}))
                common = dict(maps_per_scene=5, source_map=2, kv_lora=kv, proj_lora=proj, lora_strength=0.8)
                if kind == "double_blocks":
                    return double_block_forward(module, kwargs["img"], kwargs["txt"], kwargs["vec"], kwargs["pe"], att, **common)
                return single_block_forward(module, args[0], kwargs["vec"], kwargs["pe"], att, **common)

            hooks.append(block.register_forward_pre_hook(keep_inputs, with_kwargs=True))
            hooks.append(block.register_forward_hook(reroute, with_kwargs=True))
    try:
        expected = run_model(base, inputs)  # the unpatched patcher, blocks rerouted by hooks
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(got, expected)
    assert not torch.allclose(got, run_model(base, inputs))


def test_strength_zero_without_broadcast_equals_unpatched_exactly(lumix_dir):
    base = tiny_flux(seed=3)
    inputs = model_inputs(5, seed=4)
    plain = run_model(base, inputs)
    off = load(base, strength=0.0, query_broadcast=False)
    assert torch.equal(run_model(off, inputs), plain)


def test_base_model_untouched_by_patching_a_clone(lumix_dir):
    base = tiny_flux(seed=5)
    inputs = model_inputs(5, seed=6)
    before = run_model(base, inputs)
    options_before = repr(base.model_options)
    weights_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    patched = load(QueryBroadcast.execute(base, "color", 5).result[0])
    other = base.clone()
    assert not torch.equal(run_model(patched, inputs), before)
    assert torch.equal(run_model(base, inputs), before)
    assert torch.equal(run_model(other, inputs), before)
    assert repr(base.model_options) == options_before and "patches_replace" not in base.model_options["transformer_options"]
    assert all(torch.equal(v, weights_before[k]) for k, v in base.model.state_dict().items())


def test_cond_uncond_and_two_scene_batches_equal_per_group_runs(lumix_dir):
    patched = load(tiny_flux(seed=7))
    inputs = model_inputs(10, seed=8)  # e.g. cond scene + uncond scene, or two scenes
    whole = run_model(patched, inputs)
    parts = torch.cat([run_model(patched, {k: v[s:s + 5] for k, v in inputs.items()}) for s in (0, 5)])
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)


def test_per_sample_timesteps_reach_the_blocks(lumix_dir):
    patched = load(tiny_flux(seed=9))
    seen = []
    dm = patched.get_model_object("diffusion_model")
    handle = dm.time_in.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    inputs = model_inputs(5, seed=10)
    inputs["timestep"] = torch.tensor([0.0, 0.0, 0.5, 0.7, 0.9])
    try:
        run_model(patched, inputs)
    finally:
        handle.remove()
    emb = seen[0]
    assert torch.equal(emb[0], emb[1]) and not torch.equal(emb[1], emb[2]) and not torch.equal(emb[3], emb[4])


def test_nodes_chain_in_either_order(lumix_dir):
    base = tiny_flux(seed=11)
    inputs = model_inputs(5, seed=12)
    a = load(QueryBroadcast.execute(base, "color", 5).result[0], query_broadcast=False)
    b = QueryBroadcast.execute(load(base, query_broadcast=False), "color", 5).result[0]
    c = load(base, query_broadcast=True)
    out = run_model(c, inputs)
    assert torch.equal(run_model(a, inputs), out) and torch.equal(run_model(b, inputs), out)
    # a different source map changes the result; the loader after it keeps that choice
    d = load(QueryBroadcast.execute(base, "albedo", 5).result[0])
    settings = extension_module().nodes.patch.lumix_settings(d)
    assert settings.source_map == 0 and settings.query_broadcast and settings.strength == 1.0
    assert not torch.equal(run_model(d, inputs), out)


def test_query_broadcast_alone_changes_only_attention(lumix_dir):
    base = tiny_flux(seed=13)
    inputs = model_inputs(5, seed=14)
    qb = QueryBroadcast.execute(base, "color", 5).result[0]
    out, plain = run_model(qb, inputs), run_model(base, inputs)
    assert not torch.equal(out, plain)
    settings = extension_module().nodes.patch.lumix_settings(qb)
    assert settings.adapters is None and settings.query_broadcast


def test_prefixed_partial_checkpoint_loads_and_covers_only_its_blocks(lumix_dir):
    base = tiny_flux(seed=15)
    patched = load(base, "partial_lumix.safetensors", query_broadcast=False)
    settings = extension_module().nodes.patch.lumix_settings(patched)
    assert set(settings.adapters) == {("double_blocks", 0), ("single_blocks", 0)}


def test_bf16_model_runs_in_bf16_and_dtype_moves_are_ignored(lumix_dir):
    base32 = tiny_flux(seed=16)
    base16 = tiny_flux(seed=16, dtype=torch.bfloat16)
    p32, p16 = load(base32), load(base16)
    p16.model_patches_to(torch.float16)  # what ComfyUI does with the model dtype when it loads the model
    p16.model_patches_to(torch.device("cpu"))
    settings = extension_module().nodes.patch.lumix_settings(p16)
    # adapter_dtype "auto": bfloat16 for a bf16 model, as the reference runs them; dtype moves ignored
    assert next(iter(settings.adapters.values()))["kv_tt_lora"].G2.dtype == torch.bfloat16
    assert next(iter(extension_module().nodes.patch.lumix_settings(p32).adapters.values()))["kv_tt_lora"].G2.dtype == torch.float32
    inputs = model_inputs(5, seed=17)
    out16 = run_model(p16, model_inputs(5, seed=17, dtype=torch.bfloat16))
    out32 = run_model(p32, inputs)
    assert out16.dtype == torch.bfloat16
    assert (out16.float() - out32).abs().max() / out32.abs().max() < 0.1


def test_fp8_weights_with_compute_casting(lumix_dir):
    base = tiny_flux(seed=18, dtype=torch.float8_e4m3fn, manual_cast=torch.float32)
    patched = load(base)
    out = run_model(patched, model_inputs(5, seed=19))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_clones_share_adapters_instead_of_copying(lumix_dir):
    patched = load(tiny_flux(seed=20))
    again = patched.clone()
    s1 = extension_module().nodes.patch.lumix_settings(patched)
    s2 = extension_module().nodes.patch.lumix_settings(again)
    assert s1 is s2
    p1 = patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    p2 = again.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert p1 is p2


# ---- errors ------------------------------------------------------------------------------------

def test_batch_not_a_multiple_of_five_says_what_to_do(lumix_dir):
    patched = load(tiny_flux(seed=21))
    with pytest.raises(ValueError, match="not a multiple of 5.*LumiX Intrinsic Sampler"):
        run_model(patched, model_inputs(3, seed=22))


def test_not_flux_model():
    import comfy.model_patcher

    class NotFlux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)
            self.device = None

    patcher = comfy.model_patcher.ModelPatcher(NotFlux(), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match="LumiX patches FLUX.1-dev, but this MODEL is a Linear"):
        QueryBroadcast.execute(patcher, "color", 5)
    with pytest.raises(ValueError, match="Load Diffusion Model"):
        Loader.execute(patcher, "tiny_lumix.safetensors", 1.0, True)


@pytest.mark.parametrize("name,message", [
    ("wide_lumix.safetensors", r"width 128, but the model has width 64 \(first key that does not fit: double_blocks\.0"),
    ("deep_lumix.safetensors", r"double_blocks\.2 but the model has only 2"),
    ("some_other_lora.safetensors", "holds no LumiX keys"),
    ("broken.safetensors", "not a safetensors file"),
    ("missing.safetensors", "not in ComfyUI/models/lumix/"),
])
def test_bad_checkpoints_refused_and_nothing_half_applied(lumix_dir, name, message):
    base = tiny_flux(seed=23)
    before = repr(base.model_options)
    with pytest.raises(ValueError, match=message):
        load(base, name)
    assert repr(base.model_options) == before


def test_source_map_outside_group():
    with pytest.raises(ValueError, match="does not exist with 2 maps per scene"):
        QueryBroadcast.execute(tiny_flux(seed=24), "depth", 2)


def test_maps_per_scene_must_match_loaded_adapters(lumix_dir):
    patched = load(tiny_flux(seed=25))
    with pytest.raises(ValueError, match="mixes 5 maps per scene; set maps_per_scene to 5"):
        QueryBroadcast.execute(patched, "color", 4)
    with pytest.raises(ValueError, match="trained for 5 maps per scene.*set 4"):
        load(QueryBroadcast.execute(tiny_flux(seed=25), "color", 4).result[0])


def test_foreign_block_patch_is_kept_and_reported(lumix_dir, caplog):
    base = tiny_flux(seed=26)
    calls = []

    def other_patch(args, extra):
        calls.append(1)
        return extra["original_block"](args)

    foreign = base.clone()
    foreign.set_model_patch_replace(other_patch, "dit", "double_block", 1)
    with caplog.at_level(logging.WARNING):
        patched = load(foreign)
    assert "already carry another node's block-replace patch" in caplog.text and "double_block 1" in caplog.text
    inputs = model_inputs(5, seed=27)
    out = run_model(patched, inputs)
    assert calls, "the other extension's patch was dropped"
    assert torch.equal(out, run_model(load(base), inputs))  # LumiX ran inside it
