"""What training does to the shared base model (nothing that outlives it) and the Trainer's MODEL
output (counted by ComfyUI like the loader's), on the tiny FLUX inside a real ComfyUI."""
import importlib

import pytest
import torch
from safetensors import safe_open

from comfy_host import (run_dataset_node, DOUBLE, HIDDEN, SINGLE, TinyCLIP, TinyVAE, extension_module, load_extension,
                        lumix_dir, model_inputs, run_model, tiny_flux)  # noqa: F401  (lumix_dir: a fixture; first: skips without ComfyUI)
import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
from training_fixtures import make_rooms

NODES = load_extension()
Trainer = NODES["LumiXTrainer"]
tm = importlib.import_module(extension_module().__name__ + ".nodes.training_model")
patch_module = importlib.import_module(extension_module().__name__ + ".nodes.patch")
M, RANK = 5, 2
SETTINGS = dict(steps=3, rank=RANK, optimizer="adamw", learning_rate=1e-2, batch_size=1, grad_accumulation=1,
                warmup_steps=0, max_grad_norm=1.0, timestep_sampling="logit_normal", guidance=1.0,
                held_map_probability=0.0, caption_dropout=0.0, gradient_checkpointing=True, seed=3, save_every=0,
                init_from="none (train from scratch)", resume=False, validate_every=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    inputs = tmp_path_factory.mktemp("input")
    make_rooms(inputs / "scenes", 2)
    return run_dataset_node(inputs, "scenes", TinyVAE(0), TinyCLIP()).result[0]


def comfy_loaded_flux(seed=0, dtype=torch.float32):
    """As ComfyUI builds models (inside inference mode), with one frozen weight among trainable-flagged
    ones so that flags are checked one by one."""
    with torch.inference_mode():
        model = tiny_flux(seed=seed, dtype=dtype)
        model.model.diffusion_model.img_in.weight.requires_grad_(False)
    return model


def snapshot(model):
    """Everything of the base another node could observe: objects, flags, inference state, values."""
    dm = model.model.diffusion_model
    return {name: (t, t.requires_grad, t.is_inference(), t.detach().clone())
            for name, t in [*dm.named_parameters(), *dm.named_buffers()]}


def assert_as_found(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, (obj, flag, inference, value) in before.items():
        now = after[name]
        assert now[0] is obj, f"{name}: another tensor object"
        assert now[1] == flag, f"{name}: requires_grad {now[1]}, was {flag}"
        assert now[2] == inference, f"{name}: inference mode {now[2]}, was {inference}"
        assert torch.equal(now[3], value), f"{name}: values changed"


def train(model, data, name, **changes):
    with torch.inference_mode():
        return Trainer.execute(model, data, name, **{**SETTINGS, **changes}).result


def test_training_leaves_the_shared_base_as_it_found_it(data, lumix_dir):
    model = comfy_loaded_flux()
    before = snapshot(model)
    assert before["img_in.weight"][1] is False and before["img_in.bias"][1] is True and before["img_in.bias"][2]
    train(model, data, "as_found")
    assert_as_found(model, before)
    # the reference code takes rank and alpha from its config: the file says which (README, Training)
    with safe_open(str(lumix_dir / "as_found.safetensors"), "pt") as f:
        metadata = f.metadata()
        g1 = f.get_tensor("double_blocks.0.processor.kv_tt_lora.G1")
    assert metadata["rank"] == str(RANK) == str(g1.shape[-1]) and float(metadata["alpha"]) == 1.0


def test_a_cancelled_or_failing_run_also_leaves_the_base_as_found(data, lumix_dir):
    model = comfy_loaded_flux()
    before = snapshot(model)

    def cancel_at_step_2(value, total, preview, node_id=None):  # raises inside update, as main.py's hook
        if value == 2:
            comfy.model_management.interrupt_current_processing()
            comfy.model_management.throw_exception_if_processing_interrupted()
    comfy.utils.set_progress_bar_global_hook(cancel_at_step_2)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train(model, data, "cancelled_base")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)
    assert_as_found(model, before)

    # prepared but never trained (e.g. the optimiser could not be built): only inference mode differs
    with torch.inference_mode(False):
        assert tm.prepare_base_for_autograd(model) == len(before)
    not_inference = {name: (obj, flag, False, value) for name, (obj, flag, _, value) in before.items()}
    assert_as_found(model, not_inference)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated failure in a step")
    with tm.frozen_base(model):  # what the trainer's run is wrapped in
        dm = model.model.diffusion_model
        assert not any(p.requires_grad or p.is_inference() for p in dm.parameters())
        with pytest.raises(RuntimeError, match="simulated"):
            crash()
    with pytest.raises(RuntimeError, match="simulated"):
        with tm.frozen_base(model):
            crash()
    assert_as_found(model, before)


def test_a_run_refused_while_it_is_set_up_leaves_the_base_as_found(data, lumix_dir):
    train(comfy_loaded_flux(), data, "setup_refused", steps=1)
    model = comfy_loaded_flux()
    before = snapshot(model)
    # the saved state's seed differs: refused after the model was patched and loaded, before training
    with pytest.raises(ValueError, match="changed data settings"):
        train(model, data, "setup_refused", steps=2, seed=SETTINGS["seed"] + 1, resume=True)
    assert_as_found(model, before)
    # validation refusing its settings (an API prompt may send any size) is refused as early
    with pytest.raises(ValueError, match=r"multiples of 16 \(got 100x100\)"):
        with torch.inference_mode():
            Trainer.execute(model, data, "setup_refused_2", **{**SETTINGS, "validate_every": 1}, vae=TinyVAE(0),
                            validation_size=100)
    assert_as_found(model, before)


def qkv_lora(seed):
    """A core-format LoRA on one FLUX projection, as comfy.sd.load_lora_for_models takes it."""
    g = torch.Generator().manual_seed(seed)
    return {"diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.randn(3 * HIDDEN, 4, generator=g),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.randn(4, HIDDEN, generator=g)}


def test_a_core_lora_on_the_base_after_training_acts_as_on_a_never_trained_base(data, lumix_dir):
    trained_base, fresh_base = comfy_loaded_flux(seed=5), comfy_loaded_flux(seed=5)
    train(trained_base, data, "then_lora")
    inputs = model_inputs(5, seed=2, size=4)
    outputs = []
    for base in (trained_base, fresh_base):
        before = snapshot(base)
        with torch.inference_mode():  # as a LoRA loader node and a sampler run it
            with_lora, _ = comfy.sd.load_lora_for_models(base, None, qkv_lora(7), 0.5, 0.0)
            comfy.model_management.load_models_gpu([with_lora], force_full_load=True)
            lora_out = run_model(with_lora, inputs)
            with_lora.unpatch_model(base.offload_device)
            outputs.append((lora_out, run_model(base, inputs)))
        # ComfyUI's unpatch puts new Parameter objects back (its own doing, trained or not): values only
        assert all(torch.equal(t.detach(), before[name][3]) for name, t in base.model.diffusion_model.state_dict().items())
    (lora_trained, plain_trained), (lora_fresh, plain_fresh) = outputs
    assert (lora_fresh - plain_fresh).abs().max() > 1e-3  # the LoRA does something
    assert torch.equal(lora_trained, lora_fresh) and torch.equal(plain_trained, plain_fresh)


def expected_adapter_bytes(itemsize, rank=RANK):
    """Factors plus the merged weight and G3 each adapter caches, from the shapes alone."""
    total = 0
    for _ in range(DOUBLE + SINGLE):
        for d_out in (2 * HIDDEN, HIDDEN):
            total += (M * M * rank + M * HIDDEN * rank * rank + M * d_out * rank      # G1, G2, G3
                      + M * HIDDEN * M * rank + M * rank * d_out) * itemsize          # merged weight, G3 cast
    return total


def planned_size(patcher):
    """What load_models_gpu plans for a model: itself plus the models its patches report."""
    return patcher.model_size() + sum(m.model_size() for m in set(patcher.model_patches_models()))


@pytest.mark.parametrize("dtype, adapter_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_the_trained_model_is_counted_like_the_loaders(data, lumix_dir, dtype, adapter_dtype):
    model = comfy_loaded_flux(dtype=dtype)
    trained, _, _ = train(model, data, f"counted_{str(dtype)[6:]}")
    assert planned_size(trained) - planned_size(model) == expected_adapter_bytes(adapter_dtype.itemsize)
    settings = patch_module.lumix_settings(trained)
    assert settings.adapter_model is not None and set(trained.model_patches_models()) == {settings.adapter_model}
    factors = list(settings.adapter_model.model.parameters())
    assert len(factors) == 3 * 2 * (DOUBLE + SINGLE)
    assert all(p.dtype == adapter_dtype and not p.requires_grad and p.device == model.offload_device for p in factors)
    # the loader gives the same model from the written file (same dtype path, same numbers)
    loaded = NODES["LumiXTensorLoRALoader"].execute(comfy_loaded_flux(dtype=dtype), f"counted_{str(dtype)[6:]}.safetensors",
                                                    1.0, True).result[0]
    inputs = model_inputs(5, seed=4, size=4, dtype=dtype)
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([trained])
        got_trained = run_model(trained, inputs)
        got_loaded = run_model(loaded, inputs)
    assert torch.equal(got_trained, got_loaded)
