"""Training inside a real ComfyUI on a tiny random FLUX: the nodes, the patched model's gradients,
Cancel + resume, and the written checkpoint in the LumiX loader."""
import importlib
import json
import os

import pytest
import torch

from comfy_host import (run_dataset_node, TinyCLIP, TinyVAE, extension_module, load_extension, model_inputs, run_model,
                        tiny_flux, lumix_dir)  # noqa: F401  (lumix_dir: a fixture; first: skips without ComfyUI)
import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.utils  # noqa: E402
from lumix_core import load_checkpoint
from lumix_core.training import LumiXAdapters, TrainConfig, flow_matching_loss, make_flow_batch, read_training_state
from lumix_core.training.objective import TrainingExample
from training_fixtures import make_rooms, make_scene_folder

NODES = load_extension()
Trainer, Loader = NODES["LumiXTrainer"], NODES["LumiXTensorLoRALoader"]
tm = importlib.import_module(extension_module().__name__ + ".nodes.training_model")


def comfy_loaded_flux(seed=0):
    """As ComfyUI builds models: inside inference mode (autograd refuses such tensors unless handled)."""
    with torch.inference_mode():
        model = tiny_flux(seed=seed)
    assert next(model.model.diffusion_model.parameters()).is_inference()
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    inputs = tmp_path_factory.mktemp("input")  # the node reads subfolders of ComfyUI's input folder only
    root = inputs / "scenes"
    make_rooms(root, 3, width=48)
    make_scene_folder(root, "scene_bad", seed=9, prompt=None)
    out = run_dataset_node(inputs, "scenes", TinyVAE(0), TinyCLIP())
    return out.result[0], out.result[1]


SETTINGS = dict(steps=6, rank=2, optimizer="adamw", learning_rate=1e-2, batch_size=1, grad_accumulation=1,
                warmup_steps=0, max_grad_norm=1.0, timestep_sampling="logit_normal", guidance=1.0,
                held_map_probability=0.0, caption_dropout=0.0, gradient_checkpointing=True, seed=3, save_every=3,
                init_from="none (train from scratch)", resume=False, validate_every=0)


def train(model, data, name, **changes):
    with torch.inference_mode():
        return Trainer.execute(model, data, name, **{**SETTINGS, **changes}).result


def test_dataset_node_counts_used_and_skipped(dataset):
    data, summary = dataset
    assert len(data) == 3 and data.num_maps == 5
    assert summary.startswith("3 scene(s) used, 1 skipped (1 no caption)") and "scene_bad: no caption" in summary


def test_trainer_node_trains_leaves_the_base_alone_and_its_checkpoint_loads_in_the_loader(dataset, lumix_dir):
    data, _ = dataset
    model = comfy_loaded_flux()
    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    trained, plot, report = train(model, data, "tiny_run")
    assert sorted(os.listdir(lumix_dir)) == ["tiny_run.safetensors", "tiny_run_training"]
    work = sorted(os.listdir(lumix_dir / "tiny_run_training"))
    assert {"tiny_run.state.pt", "tiny_run_step000003.safetensors", "log.jsonl", "plot.png"} <= set(work)
    records = [json.loads(line) for line in open(lumix_dir / "tiny_run_training" / "log.jsonl")]
    assert [r["step"] for r in records] == list(range(1, 7)) and all(r["loss"] > 0 for r in records)
    assert plot.ndim == 4 and plot.shape[-1] == 3 and 0 < plot.mean() < 1
    assert "6 steps" in report and str(lumix_dir / "tiny_run.safetensors") in report
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)  # bit-identical base
    assert "lumix" not in model.model_options.get("transformer_options", {})  # the input MODEL unpatched

    ckpt = load_checkpoint(str(lumix_dir / "tiny_run.safetensors"))
    assert ckpt.metadata["step"] == "6" and ckpt.rank == 2 and json.loads(ckpt.metadata["training_config"])["seed"] == 3
    loaded = Loader.execute(comfy_loaded_flux(), "tiny_run.safetensors", 1.0, True).result[0]
    inputs = model_inputs(5, seed=4, size=4)
    with torch.inference_mode():
        got_loader, got_trained, got_base = run_model(loaded, inputs), run_model(trained, inputs), run_model(model, inputs)
    torch.testing.assert_close(got_loader, got_trained, rtol=1e-6, atol=1e-6)
    assert (got_trained - got_base).abs().max() > 1e-4  # the adapters learnt something


def cancelling_hook(when):
    """ComfyUI's progress hook as main.py's hijack_progress installs it: Cancel (here: when(value, total)
    first holds) sets the interrupt flag, and the hook itself raises it via
    throw_exception_if_processing_interrupted inside ProgressBar.update_absolute."""
    fired = []

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        if not fired and when(value, total):
            fired.append((value, total))
            comfy.model_management.interrupt_current_processing()
        comfy.model_management.throw_exception_if_processing_interrupted()
    return hook, fired


def cancelled_run(data, name, when, **changes):
    hook, fired = cancelling_hook(when)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):  # ComfyUI must see the Cancel
            train(comfy_loaded_flux(), data, name, **changes)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert fired and not comfy.model_management.processing_interrupted()
    return fired


def assert_same_adapters(path_a, path_b):
    a, b = load_checkpoint(str(path_a)).adapters, load_checkpoint(str(path_b)).adapters
    assert a.keys() == b.keys()
    for key in a:
        for name in a[key]:
            for g in ("G1", "G2", "G3"):
                assert torch.equal(getattr(a[key][name], g), getattr(b[key][name], g)), (key, name, g)


def log_steps(folder):
    return [json.loads(line)["step"] for line in open(folder / "log.jsonl")]


@pytest.mark.parametrize("save_every, cancel_at", [(0, 4), (3, 5)])
def test_cancel_raised_by_the_progress_hook_saves_the_last_step_and_resume_finishes_like_a_straight_run(
        dataset, lumix_dir, caplog, save_every, cancel_at):
    data, _ = dataset
    train(comfy_loaded_flux(), data, f"straight{save_every}", save_every=save_every)
    name = f"cancelled{save_every}"
    work = lumix_dir / f"{name}_training"
    with caplog.at_level("WARNING"):
        cancelled_run(data, name, lambda value, total: value == cancel_at, save_every=save_every)
    assert not (lumix_dir / f"{name}.safetensors").exists()
    # the state of the step the Cancel came after, not the last periodic save (save_every 0: none at all)
    assert read_training_state(str(work / f"{name}.state.pt"))["step"] == cancel_at
    assert log_steps(work) == list(range(1, cancel_at + 1))
    assert f"after step {cancel_at} of 6. Saved the resumable state {name}_training/{name}.state.pt at step " \
           f"{cancel_at}; queue again with resume on" in caplog.text
    train(comfy_loaded_flux(), data, name, save_every=save_every, resume=True)
    assert_same_adapters(lumix_dir / f"straight{save_every}.safetensors", lumix_dir / f"{name}.safetensors")
    assert log_steps(work) == list(range(1, 7))  # no step logged twice


def test_cancel_during_validation_saves_the_finished_step(dataset, lumix_dir, caplog, monkeypatch):
    data, _ = dataset
    settings = dict(steps=4, save_every=0, validate_every=2)
    val = dict(vae=TinyVAE(0), validation_scenes=1, validation_size=64, validation_steps=3)
    validation = importlib.import_module(extension_module().__name__ + ".nodes.training_validation")
    real, fired = validation.sample_five_maps, []

    def cancel_as_validation_starts(*args, **kwargs):  # validation has no progress bar: its sampler checks the flag
        fired.append(True)
        comfy.model_management.interrupt_current_processing()
        return real(*args, **kwargs)
    monkeypatch.setattr(validation, "sample_five_maps", cancel_as_validation_starts)
    with pytest.raises(comfy.model_management.InterruptProcessingException), caplog.at_level("WARNING"):
        with torch.inference_mode():
            Trainer.execute(comfy_loaded_flux(), data, "val_cancel", **{**SETTINGS, **settings}, **val)
    monkeypatch.setattr(validation, "sample_five_maps", real)
    assert not comfy.model_management.processing_interrupted()  # ComfyUI clears the flag as it raises
    work = lumix_dir / "val_cancel_training"
    assert fired and read_training_state(str(work / "val_cancel.state.pt"))["step"] == 2
    assert log_steps(work) == [1, 2] and "cancelled during validation after step 2 of 4" in caplog.text
    with torch.inference_mode():
        Trainer.execute(comfy_loaded_flux(), data, "val_cancel", **{**SETTINGS, **settings, "resume": True}, **val)
    train(comfy_loaded_flux(), data, "val_straight", steps=4, save_every=0)  # validation changes no adapter
    assert_same_adapters(lumix_dir / "val_straight.safetensors", lumix_dir / "val_cancel.safetensors")
    assert log_steps(work) == [1, 2, 3, 4]


def test_trainer_node_refuses_bad_requests(dataset, lumix_dir):
    data, _ = dataset
    (lumix_dir / "taken.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="already exists"):
        train(comfy_loaded_flux(), data, "taken")
    with pytest.raises(ValueError, match="no saved state"):
        train(comfy_loaded_flux(), data, "fresh", resume=True)
    with pytest.raises(ValueError, match="no vae is connected"):
        train(comfy_loaded_flux(), data, "fresh", validate_every=2)
    with pytest.raises(ValueError, match="multiple of grad_accumulation"):
        train(comfy_loaded_flux(), data, "fresh", batch_size=3, grad_accumulation=2)
    with pytest.raises(ValueError, match="plain file name"):
        train(comfy_loaded_flux(), data, "../escape")
    for bad, message in [("two\nlines", r"control characters \('\\n'\)"), ("nul\x00", r"control characters"),
                         ("", "is empty"), (" ", "is empty"), (".hidden", "hidden")]:
        with pytest.raises(ValueError, match=r"LumiX Trainer: output_name: .*" + message):
            train(comfy_loaded_flux(), data, bad)
    # 218-246 bytes passed every check before and failed at the first save ('File name too long'): now
    # refused before any step, naming the longest file the run would write (the last step's EMA twin)
    # and the longest name that fits
    with pytest.raises(ValueError, match=r"is too long: the run writes '\.x+_step000006_ema\.safetensors\.xxxxxxxx\.part' "
                                         r"\(260 bytes\), over this file system's 255-byte limit .* at most 213 bytes"):
        train(comfy_loaded_flux(), data, "x" * 218)
    assert sorted(os.listdir(lumix_dir)) == ["taken.safetensors"]  # nothing was written by any of them
    with pytest.raises(ValueError, match="LumiX needs a MODEL"):
        train("not a model", data, "fresh")


def test_validation_logs_consistency_metrics(dataset, lumix_dir):
    data, _ = dataset
    with torch.inference_mode():
        out = Trainer.execute(comfy_loaded_flux(), data, "validated", **{**SETTINGS, "steps": 2, "validate_every": 2},
                        vae=TinyVAE(0), validation_scenes=1, validation_size=64, validation_steps=2)
    records = [json.loads(line) for line in open(lumix_dir / "validated_training" / "log.jsonl")]
    metrics = records[-1]["validation"]
    assert set(metrics) == {"photometric_residual", "geometric_degrees", "structural_alignment"}
    assert all(isinstance(v, float) for v in metrics.values())
    # the five maps of the validation caption, in the run folder and shown in the node under its report
    assert sorted(os.listdir(lumix_dir / "validated_training" / "validation")) == ["step_000002_0.png"]
    from PIL import Image
    with Image.open(lumix_dir / "validated_training" / "validation" / "step_000002_0.png") as grid:
        assert grid.width > 5 * 64 and grid.height > 64
    assert len(out.ui["images"]) == 1 and out.ui["text"]


def fixed_batch(adapters, seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = [TrainingExample(torch.randn(5, 16, 4, 4, generator=g), torch.randn(4, 32, generator=g),
                                torch.randn(24, generator=g)) for _ in range(2)]
    return make_flow_batch(examples, [torch.Generator().manual_seed(seed + i) for i in range(2)],
                           TrainConfig(resolution=32))


def comfy_grads(checkpointing):
    model = comfy_loaded_flux()
    adapters = tm.new_adapters(model, rank=2, alpha=1.0, num_maps=5)
    with torch.no_grad():
        for i, p in enumerate(adapters.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.3)
    patched = tm.training_model(model, adapters, checkpointing)
    seen = []

    def spy(executor, x, timestep, *args, **kwargs):
        seen.append(timestep.clone())
        return executor(x, timestep, *args, **kwargs)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    tm.prepare_base_for_autograd(patched)
    batch = fixed_batch(adapters)
    with tm.frozen_base(patched):
        flow_matching_loss(tm.make_denoiser(patched), batch, 5).loss.backward()
    assert all(p.grad is None for p in patched.model.diffusion_model.parameters())
    return {n: p.grad.clone() for n, p in adapters.named_parameters()}, seen, batch


def test_checkpointed_and_plain_gradients_agree_and_timesteps_are_per_sample():
    plain, seen, batch = comfy_grads(False)
    checkpointed, seen_ckpt, _ = comfy_grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) == 3 * 2 * (2 + 3)
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)
    assert len(seen) == 1 and torch.equal(seen[0].cpu(), batch.t)  # one timestep per latent, as drawn
    assert len(set(batch.t.tolist())) == 10


def test_fine_tuning_starts_from_an_existing_checkpoint(dataset, lumix_dir):
    data, _ = dataset
    train(comfy_loaded_flux(), data, "first", steps=2, save_every=0)
    start = load_checkpoint(str(lumix_dir / "first.safetensors"))
    # zero steps of fine-tuning would be the file itself; one step moves away from it but keeps its rank
    train(comfy_loaded_flux(), data, "tuned", steps=1, save_every=0, rank=7, init_from="first.safetensors")
    tuned = load_checkpoint(str(lumix_dir / "tuned.safetensors"))
    assert tuned.rank == start.rank == 2
    key = ("double_blocks", 0)
    before, after = start.adapters[key]["kv_tt_lora"].G3, tuned.adapters[key]["kv_tt_lora"].G3
    assert not torch.equal(before, after) and (after - before).abs().max() < 0.05  # one small AdamW step
    with pytest.raises(ValueError, match="not in ComfyUI/models/lumix"):
        train(comfy_loaded_flux(), data, "tuned2", init_from="missing.safetensors")


@pytest.mark.parametrize("dtype, manual_cast", [(torch.bfloat16, None), (torch.float8_e4m3fn, torch.float32)])
def test_low_precision_bases_train_with_float32_adapters(dataset, lumix_dir, dtype, manual_cast):
    data, _ = dataset
    with torch.inference_mode():
        model = tiny_flux(seed=0, dtype=dtype, manual_cast=manual_cast)
    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    train(model, data, f"low_{str(dtype)[6:]}", steps=3, save_every=0)
    ckpt = load_checkpoint(str(lumix_dir / f"low_{str(dtype)[6:]}.safetensors"))
    g3 = ckpt.adapters[("single_blocks", 0)]["proj_tt_lora"].G3
    assert g3.dtype == torch.float32 and torch.isfinite(g3).all() and g3.abs().max() > 0
    after = model.model.diffusion_model.state_dict()
    assert all(after[k].dtype == base[k].dtype and torch.equal(after[k].view(torch.uint8), base[k].view(torch.uint8))
               for k in base)


def test_a_crafted_state_is_refused_before_anything_is_allocated(dataset, lumix_dir, monkeypatch):
    data, _ = dataset
    train(comfy_loaded_flux(), data, "real", steps=1, save_every=0)
    real = torch.load(lumix_dir / "real_training" / "real.state.pt", weights_only=True)
    session = importlib.import_module(extension_module().__name__ + ".nodes.training_session")

    def no_allocation(*args, **kwargs):
        raise AssertionError("adapters were allocated from an unchecked state")
    monkeypatch.setattr(session, "LumiXAdapters", no_allocation)  # where node and CLI build adapters
    tiny = {"format": "lumix-training-state", "version": 1,
            "shape": {"num_maps": 5, "rank": 100000, "hidden_size": 32, "alpha": 1.0}}
    huge = {**real, "shape": {**real["shape"], "rank": 100000}, "config": {**real["config"], "rank": 100000}}
    wrong = {**real, "adapters": {**real["adapters"]}}
    key = next(k for k in wrong["adapters"] if k.endswith("G2"))
    hidden = real["shape"]["hidden_size"]
    wrong["adapters"][key] = torch.zeros(5, hidden, 3, 3)
    for name, state, message in [
            ("tiny", tiny, r"the saved state tiny\.state\.pt is incomplete or damaged: its 'step' entry is missing"),
            ("huge", huge, r"claims rank 100000; the trainer and loader support ranks 1 to 64"),
            ("wrong", wrong, rf"G2 has shape \(5, {hidden}, 3, 3\), this model needs \(5, {hidden}, 2, 2\)")]:
        (lumix_dir / f"{name}_training").mkdir()
        torch.save(state, lumix_dir / f"{name}_training" / f"{name}.state.pt")
        with pytest.raises(ValueError, match="LumiX Trainer: .*" + message):
            train(comfy_loaded_flux(), data, name, steps=1, save_every=0, resume=True)


def test_a_killed_runs_temporaries_are_removed_and_nothing_else(dataset, lumix_dir):
    data, _ = dataset
    work = lumix_dir / "swept_training"
    work.mkdir()
    ours = [work / ".swept.state.pt.k3j_9x0a.part", work / ".swept_step000003.safetensors.abcdefgh.part",
            work / ".log.jsonl.a1b2c3d4.part", lumix_dir / ".swept.safetensors.zzzzzzzz.part"]
    others = [work / ".swept.state.pt.short.part", work / ".sweptx.state.pt.abcdefgh.part", work / "notes.txt",
              lumix_dir / ".other.safetensors.abcdefgh.part", lumix_dir / ".swept.state.pt.abcdefgh.part",
              work / ".swept.state.pt.abcdefgh.partial"]
    for path in ours + others:
        path.write_bytes(b"half-written")
    *_, report = train(comfy_loaded_flux(), data, "swept", steps=1, save_every=0)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in others)
    assert "removed a killed run's temporary file .swept.state.pt.k3j_9x0a.part" in report
