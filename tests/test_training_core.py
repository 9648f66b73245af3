"""The host-free trainer on a tiny FLUX-shaped denoiser: objective, timesteps, gradients, resume."""
import math
import os

import pytest
import torch

from lumix_core import load_checkpoint
from lumix_core.training import (
    DataOrder, LumiXAdapters, TrainConfig, Trainer, make_flow_batch, flow_matching_loss, prodigy_available,
    read_training_state, sample_map_timesteps, warmup_factor,
)
from lumix_core.training.objective import draw_scene_noise
from training_fixtures import DOUBLE, HIDDEN, SINGLE, MemoryScenes, TinyDenoiser


def setup(seed=0, rank=2, **cfg):
    model = TinyDenoiser(seed)
    adapters = LumiXAdapters(HIDDEN, DOUBLE, SINGLE, rank=rank)
    torch.manual_seed(seed)
    for p in adapters.parameters():  # a deterministic start independent of the global RNG's history
        p.data = p.data if p.data.abs().sum() == 0 else torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * p.data.std()
    model.adapters = adapters
    config = TrainConfig(**{"steps": 40, "batch_size": 2, "learning_rate": 3e-3, "resolution": 16, **cfg})
    return model, adapters, config


def fixed_eval_loss(model, data, config, rounds=4):
    """Loss on fixed noise/timesteps for every scene (independent of the trainer's draws)."""
    with torch.no_grad():
        examples = [data.example(i, torch.Generator().manual_seed(i), config) for i in range(len(data))]
        total = 0.0
        for k in range(rounds):
            gens = [torch.Generator().manual_seed(1000 + 10 * k + i) for i in range(len(examples))]
            total += flow_matching_loss(model, make_flow_batch(examples, gens, config), 5).loss.item()
    return total / rounds


def test_fresh_adapters_are_a_no_op_and_loss_falls_by_a_fifth_in_40_steps():
    model, adapters, config = setup()
    data = MemoryScenes(4)
    before = fixed_eval_loss(model, data, config)
    model.adapters = None
    plain = fixed_eval_loss(model, data, config)
    model.adapters = adapters
    assert before == plain  # G3 = 0: bit-identical to the base model at step 0
    history = Trainer(model, adapters, data, config).run()
    after = fixed_eval_loss(model, data, config)
    assert len(history) == 40 and all(math.isfinite(m.loss) for m in history)
    assert after < 0.85 * before, (before, after)


def test_each_map_draws_its_own_timestep_independently():
    config = TrainConfig(resolution=16)
    data = MemoryScenes(1)
    ex = data.example(0, torch.Generator().manual_seed(0), config)
    ts = torch.stack([draw_scene_noise(ex, torch.Generator().manual_seed(s), config)[0] for s in range(4000)]).double()
    # independence: every pair of map indices uncorrelated (|r| < 4 / sqrt(n)), and not all equal
    corr = torch.corrcoef(ts.T)
    off = corr[~torch.eye(5, dtype=torch.bool)]
    assert off.abs().max() < 4 / math.sqrt(4000), corr
    assert (ts.std(dim=1) > 0).all()
    # the marginal is logit-normal: logit(t) has mean 0 and std 1 (within 4 standard errors)
    logit = torch.log(ts / (1 - ts)).flatten()
    assert abs(logit.mean()) < 4 / math.sqrt(logit.numel()) and abs(logit.std() - 1) < 0.03


def test_shifted_uniform_draws_from_the_flux_schedule():
    g = torch.Generator().manual_seed(0)
    t = sample_map_timesteps(20000, g, "shifted_uniform", image_tokens=1024).double()
    mu = math.exp(0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256))
    grid = torch.linspace(1, 0, 1000, dtype=torch.float64)
    schedule = torch.where(grid > 0, mu / (mu + 1 / grid - 1), torch.zeros_like(grid)).float().double()
    assert torch.isin(t, schedule).all()
    # uniform over the schedule's indices: the median index is near 500
    index = (schedule[None, :] - t[:, None]).abs().argmin(1).double()
    assert abs(index.median().item() - 499.5) < 15


def test_per_map_timesteps_reach_the_model_per_sample():
    model, adapters, config = setup(steps=1)
    data = MemoryScenes(4)
    trainer = Trainer(model, adapters, data, config)
    model.seen_t.clear()
    result = trainer.compute_loss(0, trainer.order.micro_batches(0)[0])
    assert len(model.seen_t) == 1 and model.seen_t[0].shape == (10,)
    assert torch.equal(model.seen_t[0], result.t)
    assert all(len(set(group.tolist())) == 5 for group in result.t.view(2, 5))


def test_held_maps_enter_clean_at_t0_and_carry_no_loss():
    config = TrainConfig(held_map_probability=1.0, resolution=16)
    data = MemoryScenes(4)
    examples = [data.example(i, torch.Generator().manual_seed(i), config) for i in range(4)]
    seen = []
    for s in range(50):
        batch = make_flow_batch(examples, [torch.Generator().manual_seed(100 * s + i) for i in range(4)], config)
        z = torch.cat([e.latents for e in examples])
        held = batch.held
        assert held.view(4, 5).any(1).all() and not held.view(4, 5).all(1).any()  # a proper, non-empty subset
        assert torch.equal(batch.t[held], torch.zeros(int(held.sum())))
        assert torch.equal(batch.x_t[held], z[held]) and (batch.t[~held] > 0).all()
        seen.append(held.view(4, 5))
        # a model that is wrong only on held maps has zero loss
        target = batch.target.clone()
        target[held] += 100.0
        assert flow_matching_loss(lambda *a: target, batch, 5).loss.item() == 0.0
    # every map index is held sometimes
    assert torch.cat(seen).any(0).all()
    off = make_flow_batch(examples, [torch.Generator().manual_seed(i) for i in range(4)], TrainConfig(resolution=16))
    assert not off.held.any()


def test_only_adapter_factors_get_gradients_and_the_base_stays_bit_identical():
    model, adapters, config = setup(steps=3)
    base = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("adapters")}
    trainer = Trainer(model, adapters, MemoryScenes(4), config)
    trainer.run(until=2)
    trainer.accumulate_gradients()
    for name, p in adapters.named_parameters():
        assert name.split(".")[-1] in ("G1", "G2", "G3")
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert p.dtype == torch.float32
    assert all(p.grad is None and not p.requires_grad for p in model.parameters() if p not in set(adapters.parameters()))
    after = {k: v for k, v in model.state_dict().items() if not k.startswith("adapters")}
    assert base.keys() == after.keys() and all(torch.equal(base[k], after[k]) for k in base)


def grads(model, adapters, config, checkpointing=False):
    model.forward_kw = {}
    trainer = Trainer(lambda *a: model(*a, checkpointing=checkpointing), adapters, MemoryScenes(4), config)
    trainer.run(until=1)  # G3 != 0 afterwards, so every factor has a gradient
    trainer.accumulate_gradients()
    return {n: p.grad.clone() for n, p in adapters.named_parameters()}


def test_gradients_with_and_without_checkpointing_agree():
    plain = grads(*setup())
    checkpointed = grads(*setup(), checkpointing=True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch():
    whole = grads(*setup(batch_size=4, grad_accumulation=1))
    split = grads(*setup(batch_size=4, grad_accumulation=2))
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-7)


def test_two_ranks_average_to_the_one_rank_gradient():
    """What DDP does (average the ranks' gradients) equals one process over the same global batch."""
    one = grads(*setup(batch_size=4))
    per_rank = []
    for rank in range(2):
        model, adapters, config = setup(batch_size=4)
        trainer = Trainer(model, adapters, MemoryScenes(4), config, rank=rank, world_size=2, is_main=rank == 0)
        # step 0 taken on the full batch by both, as DDP keeps replicas equal
        ref = Trainer(model, adapters, MemoryScenes(4), config)
        ref.run(until=1)
        trainer.step = 1
        trainer.accumulate_gradients()
        per_rank.append({n: p.grad.clone() for n, p in adapters.named_parameters()})
    for name in one:
        torch.testing.assert_close((per_rank[0][name] + per_rank[1][name]) / 2, one[name], rtol=1e-5, atol=1e-7)


def test_data_order_shards_without_overlap_and_covers_each_epoch():
    one = DataOrder(12, 4, seed=3)
    ranks = [DataOrder(12, 4, seed=3, rank=r, world_size=2, grad_accumulation=2) for r in range(2)]
    for step in range(6):
        everyone = [a for r in ranks for micro in r.micro_batches(step) for a in micro]
        assert sorted(a.position for a in everyone) == [a.position for a in one.global_batch(step)]
        assert sorted(a.index for a in everyone) == sorted(a.index for a in one.global_batch(step))
    for epoch in range(2):
        seen = [a.index for s in range(3) for a in one.global_batch(3 * epoch + s)]
        assert sorted(seen) == list(range(12))
    with pytest.raises(ValueError, match="multiple of world size"):
        DataOrder(12, 3, world_size=2)
    with pytest.raises(ValueError, match="fewer than the batch size"):
        DataOrder(2, 4)


def test_resume_gives_the_same_adapters_as_a_straight_run(tmp_path):
    model, adapters, config = setup(steps=8, save_every=4, held_map_probability=0.3, caption_dropout=0.3, warmup_steps=3)
    Trainer(model, adapters, MemoryScenes(4), config).run()
    straight = {k: v.clone() for k, v in adapters.state_dict().items()}

    model, adapters, config = setup(steps=8, save_every=4, held_map_probability=0.3, caption_dropout=0.3, warmup_steps=3)
    first = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run")
    first.run(until=4)
    state = read_training_state(str(tmp_path / "run.state.pt"))
    assert state["step"] == 4
    model, adapters, config = setup(seed=0, steps=8, save_every=4, held_map_probability=0.3, caption_dropout=0.3,
                                    warmup_steps=3)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(1.0)  # different starting values: the state must overwrite them
    second = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run")
    second.load_state_dict(state)
    second.run()
    resumed = adapters.state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert sorted(os.listdir(tmp_path)) == ["run.safetensors", "run.state.pt", "run_step000004.safetensors"]


def test_resume_refuses_a_state_of_another_shape_or_data(tmp_path):
    model, adapters, config = setup(steps=2)
    trainer = Trainer(model, adapters, MemoryScenes(4), config)
    state = trainer.state_dict()
    model, adapters, _ = setup(rank=3)
    with pytest.raises(ValueError, match="same rank"):
        Trainer(model, adapters, MemoryScenes(4), config).load_state_dict(state)
    model, adapters, _ = setup()
    with pytest.raises(ValueError, match="same dataset"):
        Trainer(model, adapters, MemoryScenes(6), config).load_state_dict(state)
    with pytest.raises(ValueError, match="keep seed"):
        Trainer(model, adapters, MemoryScenes(4), config.replace(seed=5)).load_state_dict(state)
    (tmp_path / "junk.state.pt").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a readable LumiX training state"):
        read_training_state(str(tmp_path / "junk.state.pt"))
    with pytest.raises(FileNotFoundError, match="no training state"):
        read_training_state(str(tmp_path / "missing.state.pt"))


def test_checkpoints_are_written_in_the_released_layout_with_metadata(tmp_path):
    model, adapters, config = setup(steps=3, save_every=2)
    trainer = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="mine")
    trainer.run()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    ckpt = load_checkpoint(str(tmp_path / "mine.safetensors"))
    assert (ckpt.num_maps, ckpt.rank, ckpt.hidden_size, ckpt.alpha) == (5, 2, HIDDEN, 1.0)
    assert ckpt.covered("double_blocks") == list(range(DOUBLE)) and ckpt.covered("single_blocks") == list(range(SINGLE))
    assert ckpt.metadata["step"] == "3" and ckpt.metadata["format"] == "lumix-tensor-lora"
    assert '"rank": 2' in ckpt.metadata["training_config"]
    for (kind, index), block in adapters.block_dict().items():
        for name, module in block.items():
            for g in ("G1", "G2", "G3"):
                assert torch.equal(getattr(ckpt.adapters[(kind, index)][name], g), getattr(module, g).detach())
    early = load_checkpoint(str(tmp_path / "mine_step000002.safetensors"))
    assert early.metadata["step"] == "2"
    # fine-tuning starts from the file exactly
    again = LumiXAdapters.from_checkpoint(ckpt, DOUBLE, SINGLE)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), adapters.state_dict().values()))


def test_only_the_main_rank_writes_files(tmp_path):
    model, adapters, config = setup(steps=2, save_every=1)
    records = []
    Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), is_main=False, log=records.append).run()
    assert os.listdir(tmp_path) == [] and records == []


def test_warmup_and_optimiser_choices():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    model, adapters, config = setup(steps=2, optimizer="prodigy", learning_rate=1.0)
    if prodigy_available():
        before = [p.clone() for p in adapters.parameters()]
        Trainer(model, adapters, MemoryScenes(4), config).run()
        assert any(not torch.equal(a, b) for a, b in zip(before, adapters.parameters()))
    else:
        with pytest.raises(RuntimeError, match="pip install prodigyopt"):
            Trainer(model, adapters, MemoryScenes(4), config)


@pytest.mark.parametrize("bad, message", [
    ({"rank": 0}, "rank"), ({"batch_size": 3, "grad_accumulation": 2}, "multiple of grad_accumulation"),
    ({"optimizer": "sgd"}, "optimizer"), ({"timestep_sampling": "uniform"}, "timestep_sampling"),
    ({"held_map_probability": 1.5}, "held_map_probability"), ({"resolution": 500}, "multiple of 16"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"ranks": 4})


def test_a_diverging_run_stops_with_a_clear_error():
    model, adapters, config = setup(steps=2)
    trainer = Trainer(lambda *a: model(*a) * float("nan"), adapters, MemoryScenes(4), config)
    with pytest.raises(FloatingPointError, match="diverged"):
        trainer.run()


def test_a_missing_prodigyopt_gives_a_clear_message(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import fails as if not installed
    assert not prodigy_available()
    model, adapters, config = setup(optimizer="prodigy", learning_rate=1.0)
    with pytest.raises(RuntimeError, match="pip install prodigyopt"):
        Trainer(model, adapters, MemoryScenes(4), config)


class Cancel(Exception):
    """Stands in for ComfyUI's InterruptProcessingException (lumix_core never imports ComfyUI)."""


@pytest.mark.parametrize("where", ["progress", "validation", "step"])
def test_an_interrupt_raised_anywhere_saves_the_last_finished_step_and_goes_on(tmp_path, where):
    model, adapters, config = setup(steps=6, save_every=0, validate_every=1)
    calls = {"n": 0}

    def denoiser(*args):
        calls["n"] += 1
        if where == "step" and calls["n"] == 4:  # the 4th step's forward: steps 1-3 are done
            raise Cancel()
        return model(*args)

    def validate(step):
        if where == "validation" and step == 3:
            raise Cancel()
        return {"photometric_residual": 0.1}

    def on_step(metrics):
        if where == "progress" and metrics.step == 3:
            raise Cancel()

    records = []
    trainer = Trainer(denoiser, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run",
                      log=records.append, validate=validate)
    with pytest.raises(Cancel):
        trainer.run(on_step=on_step, interrupts=(Cancel,))
    assert (trainer.interrupted.step, trainer.interrupted.where) == (3, where)
    assert trainer.interrupted.state_path == str(tmp_path / "run.state.pt")
    state = read_training_state(str(tmp_path / "run.state.pt"))
    assert state["step"] == 3 and all(torch.equal(state["adapters"][k], v) for k, v in adapters.state_dict().items())
    assert [r["step"] for r in records] == [1, 2, 3]  # step 3 logged even when validation was cut short
    assert all(p.grad is None for p in adapters.parameters())  # no half-accumulated gradient survives
    # save_every 0: the state alone, and the best checkpoint (keep_best; steps 1 and 2 were validated)
    assert sorted(os.listdir(tmp_path)) == ["run.state.pt", "run_best.safetensors"]
    # an exception that is not an interrupt, before any step finished, saves nothing (see test_training_options
    # for one after a finished step)
    model, adapters, config = setup(steps=6, save_every=0)
    other = Trainer(lambda *a: (_ for _ in ()).throw(KeyError("bug")), adapters, MemoryScenes(4), config,
                    output_dir=str(tmp_path / "other"), name="run")
    with pytest.raises(KeyError):
        other.run(interrupts=(Cancel,))
    assert not (tmp_path / "other").exists() and other.interrupted is None


def crafted(state, **changes):
    out = {**state}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        out[section] = {**out[section], field: value} if field else value
    return out


def test_a_state_is_checked_against_the_model_before_anything_is_allocated():
    from lumix_core.training.resume import StateError, adapter_shapes, check_training_state
    model, adapters, config = setup(steps=2)
    state = Trainer(model, adapters, MemoryScenes(4), config).state_dict()
    dims = dict(hidden_size=HIDDEN, double_blocks=DOUBLE, single_blocks=SINGLE, num_maps=5)
    assert check_training_state(state, **dims) == {"num_maps": 5, "rank": 2, "hidden_size": HIDDEN, "alpha": 1.0}
    assert adapter_shapes(HIDDEN, DOUBLE, SINGLE, 5, 2) == {k: tuple(v.shape) for k, v in adapters.state_dict().items()}
    g2 = next(k for k in state["adapters"] if k.endswith("G2"))
    cases = [
        ({"format": "lumix-training-state", "version": 1, "shape": {"rank": 100000}}, "its 'step' entry is missing"),
        (crafted(state, config=None), "its 'config' entry is missing"),  # was: KeyError 'config' after allocating
        (crafted(state, shape__rank=100000, config__rank=100000), "claims rank 100000; the trainer and loader support ranks 1 to 64"),
        (crafted(state, shape__rank=3, config__rank=3), r"G1 has shape \(5, 5, 2\), this model needs \(5, 5, 3\)"),
        (crafted(state, shape__rank=3), "its settings say rank 2, alpha 1.0, its shape says rank 3"),
        (crafted(state, shape__hidden_size=3072), f"for a model of width 3072, this model's is {HIDDEN}"),
        (crafted(state, shape__num_maps=4), "mixes 4 maps per scene, the dataset has 5"),
        (crafted(state, shape__alpha=float("inf")), "claims alpha inf"),
        (crafted(state, config__steps=1.5), "invalid training settings .*steps must be a whole number"),
        (crafted(state, step=10**9), "claims step 1000000000, outside 0..2"),
        (crafted(state, adapters={k: v for k, v in state["adapters"].items() if k != g2}), f"missing {g2}"),
        (crafted(state, adapters={**state["adapters"], g2: torch.full_like(state["adapters"][g2], float("nan"))}),
         "holds NaN or infinite values"),
    ]
    huge = crafted(state)
    huge["optimizer"] = {**state["optimizer"], "state": {0: {"exp_avg": torch.zeros(10**6)}}}
    cases.append((huge, r"optimiser tensor exp_avg of parameter 0 has shape \(1000000,\)"))
    for bad, message in cases:
        with pytest.raises(StateError, match=message):
            check_training_state(bad, **dims)
    # the trainer checks too (a state handed to load_state_dict directly)
    with pytest.raises(StateError, match="claims rank 100000"):
        Trainer(model, adapters, MemoryScenes(4), config).load_state_dict(crafted(state, shape__rank=100000))


def test_run_files_find_this_runs_outputs_and_remove_only_its_own_temporaries(tmp_path):
    from lumix_core.training.files import RunFiles
    files = RunFiles(str(tmp_path), "run")
    assert files.existing() == []
    for name in ("run.safetensors", "run_step000004.safetensors", "run_step1000000.safetensors", "runx_step000004.safetensors",
                 "run_step4.safetensors", "other.state.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert [os.path.basename(p) for p in files.existing()] == [
        "run.safetensors", "run_step000004.safetensors", "run_step1000000.safetensors"]
    ours = [".run.state.pt.ab_12xyz.part", ".run_step000008.safetensors.abcdefgh.part", ".log.jsonl.abcdefgh.part",
            ".plot.png.abcdefgh.part", ".run.safetensors.00000000.part"]
    others = [".run.state.pt.abcdefg.part", ".run.state.pt.ABCDEFGH.part", ".runs.state.pt.abcdefgh.part",
              ".run_step8.safetensors.abcdefgh.part", "run.state.pt.abcdefgh.part", ".other.safetensors.abcdefgh.part",
              ".run.state.pt.abcdefgh.part.keep"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"half")
    os.mkdir(tmp_path / ".run.state.pt.dirdirdi.part")  # a folder is never removed
    removed = files.remove_stale_temporaries()
    assert sorted(os.path.basename(p) for p in removed) == sorted(ours)
    assert all((tmp_path / n).exists() for n in others) and (tmp_path / ".run.state.pt.dirdirdi.part").is_dir()
    # the pattern is atomic_write's own: a temporary it really makes is matched
    from lumix_core.export import atomic_path
    with pytest.raises(RuntimeError):
        with atomic_path(files.state) as tmp:
            stale = os.path.basename(tmp)
            raise RuntimeError("killed")
    (tmp_path / stale).write_bytes(b"half")  # as a rank killed mid-write leaves it
    assert [os.path.basename(p) for p in files.remove_stale_temporaries()] == [stale]


def test_an_interrupt_in_the_last_steps_validation_still_ends_with_the_final_checkpoint(tmp_path):
    model, adapters, config = setup(steps=2, save_every=0, validate_every=2)

    def validate(step):
        raise Cancel()
    trainer = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run", validate=validate)
    with pytest.raises(Cancel):
        trainer.run(interrupts=(Cancel,))
    assert sorted(os.listdir(tmp_path)) == ["run.state.pt"]  # validation of step 2 came before its final save
    model, adapters, config = setup(steps=2, save_every=0, validate_every=2)
    resumed = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run")
    resumed.load_state_dict(read_training_state(str(tmp_path / "run.state.pt")))
    assert resumed.run() == [] and load_checkpoint(str(tmp_path / "run.safetensors")).metadata["step"] == "2"
