"""Training options: the cosine learning-rate schedule, the EMA of the adapters, keep_last / keep_best
checkpoints and the data prefetch thread, on the tiny FLUX-shaped denoiser (host-free)."""
import math
import os
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lumix_core import load_checkpoint
from lumix_core.training import (
    CacheError, CachedScene, EncodedDataset, LumiXAdapters, Prefetcher, TrainConfig, Trainer, TrainingStopped,
    lr_factor, read_training_state,
)
from lumix_core.training.files import RunFiles
from lumix_core.training.resume import StateError, check_training_state
from training_fixtures import CH, CONTEXT, DOUBLE, HIDDEN, SINGLE, VEC, MemoryScenes, TinyDenoiser


def setup(seed=0, **cfg):
    model = TinyDenoiser(seed)
    adapters = LumiXAdapters(HIDDEN, DOUBLE, SINGLE, rank=2)
    with torch.no_grad():  # G3 != 0 from the start, so every factor moves from step 1
        for n, p in enumerate(adapters.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7 + n)) * 0.1)
    model.adapters = adapters
    config = TrainConfig(**{"steps": 6, "batch_size": 2, "learning_rate": 3e-3, "resolution": 16, "save_every": 0,
                            "prefetch": 0, **cfg})
    return model, adapters, config


def weights(adapters):
    return {k: v.detach().clone() for k, v in adapters.state_dict().items()}


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def file_tensors(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "lumix-prefetch" and t.is_alive()]


# -- learning-rate schedule ---------------------------------------------------------------------------

def expected_lr(k, lr, steps, warmup, schedule, low):
    """Independent float64 formula: the lr of the k-th optimisation step (1-based)."""
    if warmup and k <= warmup:
        return lr * k / warmup
    if schedule == "constant" or steps <= warmup:
        return lr
    progress = (k - warmup) / (steps - warmup)
    return lr * (low + (1 - low) * (1 + math.cos(math.pi * progress)) / 2)


@pytest.mark.parametrize("steps, warmup, schedule, low", [
    (10, 3, "cosine", 0.1), (7, 0, "cosine", 0.0), (5, 5, "cosine", 0.2), (4, 6, "cosine", 0.0),
    (6, 2, "cosine", 1.0), (6, 2, "constant", 0.5), (1, 0, "cosine", 0.3),
])
def test_the_trainer_sets_the_scheduled_lr_at_every_step(steps, warmup, schedule, low):
    model, adapters, config = setup(steps=steps, warmup_steps=warmup, lr_schedule=schedule, lr_min_ratio=low)
    trainer = Trainer(model, adapters, MemoryScenes(4), config)
    seen = []
    trainer.run(on_step=lambda m: seen.append((m.lr, trainer.optimizer.param_groups[0]["lr"])))
    want = [expected_lr(k, 3e-3, steps, warmup, schedule, low) for k in range(1, steps + 1)]
    assert len(seen) == steps
    for (reported, set_in_optimizer), w in zip(seen, want):
        assert reported == set_in_optimizer and math.isclose(reported, w, rel_tol=1e-12, abs_tol=1e-18)
    if schedule == "cosine" and steps > warmup:
        assert math.isclose(seen[-1][0], low * 3e-3, rel_tol=1e-12, abs_tol=1e-18)  # the last step reaches the floor
        if warmup:
            assert math.isclose(seen[warmup - 1][0], 3e-3, rel_tol=1e-12)  # the end of warm-up is the full lr
    if steps <= warmup:  # all warm-up: linear, never decays
        assert [s[0] for s in seen] == pytest.approx([3e-3 * k / warmup for k in range(1, steps + 1)], rel=1e-12)


def test_cosine_is_monotone_and_a_pure_function_of_the_step():
    config = TrainConfig(steps=50, warmup_steps=5, lr_schedule="cosine", lr_min_ratio=0.05)
    factors = [lr_factor(s, config) for s in range(50)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] == pytest.approx(0.05)


def test_a_resumed_run_uses_the_same_learning_rates(tmp_path):
    cfg = dict(steps=8, warmup_steps=2, lr_schedule="cosine", lr_min_ratio=0.1, save_every=4)
    model, adapters, config = setup(**cfg)
    straight = [m.lr for m in Trainer(model, adapters, MemoryScenes(4), config).run()]
    model, adapters, config = setup(**cfg)
    first = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run").run(until=4)
    model, adapters, config = setup(**cfg)
    second = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run")
    second.load_state_dict(read_training_state(str(tmp_path / "run.state.pt")))
    assert [m.lr for m in first] + [m.lr for m in second.run()] == straight


def test_schedule_settings_are_checked():
    for bad, message in [({"lr_schedule": "linear"}, "lr_schedule must be one of 'constant', 'cosine'"),
                         ({"lr_min_ratio": 1.5}, r"lr_min_ratio must be a finite number in \[0, 1\]"),
                         ({"ema_decay": 1.0}, r"ema_decay must be a finite number in \[0, 1\)"),
                         ({"ema_decay": -0.1}, "ema_decay"), ({"keep_last": -1}, "keep_last"),
                         ({"best_metric": "loss"}, "best_metric must be one of"), ({"prefetch": 65}, "prefetch"),
                         ({"keep_best": 1}, "keep_best must be true or false")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)


# -- EMA ----------------------------------------------------------------------------------------------

def test_the_ema_follows_an_independent_float64_average_of_the_weights():
    model, adapters, config = setup(steps=7, ema_decay=0.8)
    start = {k: v.double() for k, v in weights(adapters).items()}
    trainer = Trainer(model, adapters, MemoryScenes(4), config)
    after_each = []
    trainer.run(on_step=lambda m: after_each.append(weights(adapters)))
    ema = dict(start)
    for n, w in enumerate(after_each):
        d = min(0.8, (1 + n) / (10 + n))  # the decay's warm-up: 0.1, 0.18, ..., then 0.8
        ema = {k: d * ema[k] + (1 - d) * w[k].double() for k in ema}
    assert trainer.ema.updates == 7
    for k, v in trainer.ema.tensors.items():
        assert v.dtype == torch.float32 and v.device == adapters.state_dict()[k].device
        torch.testing.assert_close(v.double(), ema[k], rtol=0, atol=1e-6)
    assert not equal({k: v for k, v in trainer.ema.tensors.items()}, after_each[-1])  # not just the weights


def test_validation_sees_the_ema_and_leaves_the_raw_weights_bit_identical():
    model, adapters, config = setup(steps=5, ema_decay=0.9)
    Trainer(model, adapters, MemoryScenes(4), config).run()
    unvalidated = weights(adapters)

    model, adapters, config = setup(steps=5, ema_decay=0.9, validate_every=2)
    seen = []

    def validate(step):
        seen.append((step, weights(adapters), {k: v.clone() for k, v in trainer.ema.tensors.items()}))
        return {"photometric_residual": 0.1}
    trainer = Trainer(model, adapters, MemoryScenes(4), config, validate=validate)
    trainer.run()
    assert [s for s, _, _ in seen] == [2, 4]
    for _, during, ema in seen:
        assert equal(during, ema)  # the EMA weights were in the adapters during validation
    assert equal(weights(adapters), unvalidated)  # and the raw ones came back exactly


def test_an_interrupt_in_validation_restores_the_raw_weights_before_the_state_is_saved(tmp_path):
    class Cancel(Exception):
        pass
    model, adapters, config = setup(steps=5, ema_decay=0.9)
    Trainer(model, adapters, MemoryScenes(4), config).run(until=2)
    raw_at_2 = weights(adapters)
    model, adapters, config = setup(steps=5, ema_decay=0.9, validate_every=2)

    def validate(step):
        with torch.no_grad():
            next(adapters.parameters()).add_(5.0)  # validation may even touch the weights
        raise Cancel()
    trainer = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run",
                      validate=validate)
    with pytest.raises(Cancel):
        trainer.run(interrupts=(Cancel,))
    assert trainer.interrupted.where == "validation" and equal(weights(adapters), raw_at_2)
    assert equal(read_training_state(str(tmp_path / "run.state.pt"))["adapters"], raw_at_2)


def test_ema_files_sit_beside_each_checkpoint_and_hold_the_average(tmp_path):
    final = tmp_path / "elsewhere" / "custom.safetensors"
    model, adapters, config = setup(steps=4, ema_decay=0.9, save_every=2)
    emas = {}
    trainer = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path / "work"), name="run",
                      final_checkpoint=str(final))
    trainer.run(on_step=lambda m: emas.__setitem__(m.step, {k: v.clone() for k, v in trainer.ema.tensors.items()}))
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["custom.safetensors", "run_ema.safetensors"]
    assert sorted(os.listdir(tmp_path / "work")) == ["run.state.pt", "run_step000002.safetensors",
                                                     "run_step000002_ema.safetensors"]
    for path, step, kind in [(tmp_path / "work" / "run_step000002_ema.safetensors", 2, "ema"),
                             (tmp_path / "elsewhere" / "run_ema.safetensors", 4, "ema"),
                             (tmp_path / "elsewhere" / "custom.safetensors", 4, "raw")]:
        ckpt = load_checkpoint(str(path))  # the LumiX checkpoint format: the loader takes it
        assert ckpt.metadata["step"] == str(step) and ckpt.metadata["weights"] == kind
        want = emas[step] if kind == "ema" else weights(adapters)
        for (block, index), modules in ckpt.adapters.items():
            for name, factors in modules.items():
                for g in ("G1", "G2", "G3"):
                    key = f"blocks.{block}_{index}.{name}.{g}"
                    assert torch.equal(getattr(factors, g), want[key]), (path, key)
        if kind == "ema":
            assert ckpt.metadata["ema_decay"] == "0.9" and ckpt.metadata["ema_updates"] == str(step)


def test_ema_resume_is_exact_and_an_old_state_starts_the_ema_from_the_weights(tmp_path):
    cfg = dict(steps=6, ema_decay=0.7, save_every=3)
    model, adapters, config = setup(**cfg)
    straight = Trainer(model, adapters, MemoryScenes(4), config)
    straight.run()
    model, adapters, config = setup(**cfg)
    Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run").run(until=3)
    state = read_training_state(str(tmp_path / "run.state.pt"))
    model, adapters, config = setup(**cfg)
    resumed = Trainer(model, adapters, MemoryScenes(4), config)
    resumed.load_state_dict(state)
    resumed.run()
    assert equal(weights(adapters), weights(straight.adapters)) and equal(resumed.ema.tensors, straight.ema.tensors)
    assert resumed.ema.updates == 6 and resumed.notes == []
    # a state written before EMA existed: the EMA starts from the resumed weights, with a note
    old = {k: v for k, v in state.items() if k not in ("ema", "best")}
    model, adapters, config = setup(**cfg)
    again = Trainer(model, adapters, MemoryScenes(4), config)
    again.load_state_dict(old)
    assert equal(again.ema.tensors, old["adapters"]) and again.ema.updates == 0
    assert len(again.notes) == 1 and "no EMA" in again.notes[0] and "step 3" in again.notes[0]
    # EMA off now: the saved one is dropped, with a note
    model, adapters, config = setup(**{**cfg, "ema_decay": 0.0})
    off = Trainer(model, adapters, MemoryScenes(4), config)
    off.load_state_dict(state)
    assert off.ema is None and "ema_decay is 0" in off.notes[0]


def test_a_damaged_ema_in_a_state_is_refused():
    model, adapters, config = setup(steps=2, ema_decay=0.5)
    trainer = Trainer(model, adapters, MemoryScenes(4), config)
    trainer.run()
    state = trainer.state_dict()
    dims = dict(hidden_size=HIDDEN, double_blocks=DOUBLE, single_blocks=SINGLE, num_maps=5)
    check_training_state(state, **dims)
    key = next(iter(state["ema"]["tensors"]))
    for ema, message in [({**state["ema"], "tensors": {key: torch.zeros(3)}}, "EMA does not cover"),
                         ({**state["ema"], "tensors": {**state["ema"]["tensors"], key: torch.zeros(1, 2)}},
                          f"EMA tensor {key} has shape"),
                         ({**state["ema"], "updates": -1}, "malformed EMA entry")]:
        with pytest.raises(StateError, match=message):
            check_training_state({**state, "ema": ema}, **dims)
    with pytest.raises(StateError, match="malformed best-checkpoint entry"):
        check_training_state({**state, "best": {"metric": "photometric_residual", "value": float("nan"), "step": 1}},
                             **dims)


# -- keep_last / keep_best ----------------------------------------------------------------------------

def test_keep_last_prunes_this_runs_old_step_checkpoints_across_sessions(tmp_path):
    others = ["other_step000001.safetensors", "runx_step000001.safetensors", "run2_step000002_ema.safetensors",
              "run_step1.safetensors", "run_step000001.safetensors.bak", "run_best_step000001.safetensors"]
    for name in others:
        (tmp_path / name).write_bytes(b"not ours")
    cfg = dict(steps=7, save_every=1, keep_last=2, ema_decay=0.5)
    model, adapters, config = setup(**cfg)
    Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run").run(until=4)
    ours = sorted(set(os.listdir(tmp_path)) - set(others))
    assert ours == ["run.state.pt", "run_step000003.safetensors", "run_step000003_ema.safetensors",
                    "run_step000004.safetensors", "run_step000004_ema.safetensors"]
    model, adapters, config = setup(**cfg)  # a second session of the same run prunes the first one's files
    second = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run")
    second.load_state_dict(read_training_state(str(tmp_path / "run.state.pt")))
    second.run()
    assert sorted(os.listdir(tmp_path)) == sorted(others + [
        "run.safetensors", "run.state.pt", "run_ema.safetensors", "run_step000005.safetensors",
        "run_step000005_ema.safetensors", "run_step000006.safetensors", "run_step000006_ema.safetensors"])
    assert all((tmp_path / name).read_bytes() == b"not ours" for name in others)


def test_keep_last_zero_keeps_every_step_checkpoint(tmp_path):
    model, adapters, config = setup(steps=7, save_every=1, keep_last=0)
    Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run").run()
    assert sorted(os.listdir(tmp_path)) == ["run.safetensors", "run.state.pt"] + [
        f"run_step{s:06d}.safetensors" for s in range(1, 7)]


def test_run_files_know_the_ema_and_best_names(tmp_path):
    files = RunFiles(str(tmp_path / "work"), "run", str(tmp_path / "final" / "run.safetensors"))
    assert files.step_of("run_step000004_ema.safetensors") == (4, True)
    assert files.step_of("run_step000004.safetensors") == (4, False)
    assert files.is_step_checkpoint("run_step000004.safetensors")
    for name in ("run_step000004_ema.safetensors", "run_best.safetensors", "run_ema.safetensors",
                 "run_step000004_best.safetensors", "run_step000004_ema.safetensors.x"):
        assert not files.is_step_checkpoint(name), name
    os.makedirs(tmp_path / "work")
    os.makedirs(tmp_path / "final")
    for path in (files.best, files.final_ema, files.step_ema(2), files.step_checkpoint(2)):
        open(path, "wb").close()
    assert files.existing() == [files.final_ema, files.best, files.step_checkpoint(2), files.step_ema(2)]
    temporaries = [tmp_path / "final" / ".run_ema.safetensors.abcdefgh.part",
                   tmp_path / "work" / ".run_best.safetensors.abcdefgh.part",
                   tmp_path / "work" / ".run_step000002_ema.safetensors.abcdefgh.part"]
    kept = [tmp_path / "work" / ".run_ema.safetensors.abcdefgh.part",  # the final's EMA lives in final/
            tmp_path / "final" / ".run_best.safetensors.abcdefgh.part"]
    for path in temporaries + kept:
        path.write_bytes(b"half")
    assert files.remove_stale_temporaries() == sorted(str(p) for p in temporaries)
    assert all(p.exists() for p in kept)


def validating(values):
    """validate(step) returning photometric_residual values[step] (absent when None)."""
    def validate(step):
        value = values.get(step)
        return {} if value is None else {"photometric_residual": value, "structural_alignment": -value}
    return validate


@pytest.mark.parametrize("ema", [0.0, 0.6])
def test_the_best_checkpoint_holds_the_weights_of_the_best_validated_step(tmp_path, ema):
    values = {1: float("nan"), 2: 0.5, 3: 0.3, 4: None, 5: 0.2, 6: 0.25, 7: float("nan")}
    model, adapters, config = setup(steps=7, save_every=1, keep_last=0, validate_every=1, ema_decay=ema)
    trainer = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run",
                      validate=validating(values))
    trainer.run()
    best, meta = file_tensors(str(tmp_path / "run_best.safetensors"))
    at_5, _ = file_tensors(str(tmp_path / ("run_step000005_ema.safetensors" if ema else "run_step000005.safetensors")))
    assert best.keys() == at_5.keys() and all(torch.equal(best[k], at_5[k]) for k in best)
    assert (meta["best_step"], meta["best_value"], meta["best_metric"]) == ("5", "0.2", "photometric_residual")
    assert meta["weights"] == ("ema" if ema else "raw") and meta["step"] == "5"
    assert trainer.best == {"metric": "photometric_residual", "value": 0.2, "step": 5}


def test_a_higher_is_better_metric_and_a_resumed_comparison(tmp_path):
    values = {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.9}  # structural_alignment = -value: best is step 2, then 1...
    cfg = dict(steps=4, save_every=2, keep_last=0, validate_every=1, best_metric="structural_alignment")
    model, adapters, config = setup(**cfg)
    Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run",
            validate=validating(values)).run(until=2)
    assert file_tensors(str(tmp_path / "run_best.safetensors"))[1]["best_step"] == "2"
    model, adapters, config = setup(**cfg)
    resumed = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run",
                      validate=validating(values))
    resumed.load_state_dict(read_training_state(str(tmp_path / "run.state.pt")))
    assert resumed.best == {"metric": "structural_alignment", "value": -0.3, "step": 2}
    resumed.run()  # -0.4 and -0.9 are worse than -0.3: the best file stays step 2's
    best, meta = file_tensors(str(tmp_path / "run_best.safetensors"))
    at_2, _ = file_tensors(str(tmp_path / "run_step000002.safetensors"))
    assert meta["best_step"] == "2" and all(torch.equal(best[k], at_2[k]) for k in best)
    # keep_best off: no best file
    model, adapters, config = setup(**{**cfg, "keep_best": False})
    Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path / "off"), name="run",
            validate=validating(values)).run()
    assert "run_best.safetensors" not in os.listdir(tmp_path / "off")


# -- prefetch -----------------------------------------------------------------------------------------

def run_losses(prefetch, rank=0, world=1, **cfg):
    model, adapters, config = setup(prefetch=prefetch, **cfg)
    data = MemoryScenes(8)
    threads = set()
    example = data.example

    def spy(*args):
        threads.add(threading.current_thread().name)
        return example(*args)
    data.example = spy
    history = Trainer(model, adapters, data, config, rank=rank, world_size=world, is_main=rank == 0).run()
    return [m.loss for m in history], [m.per_map for m in history], weights(adapters), threads


@pytest.mark.parametrize("cfg", [dict(), dict(batch_size=4, grad_accumulation=2),
                                 dict(batch_size=4, grad_accumulation=2, rank=1, world=2)])
def test_prefetch_gives_bit_identical_losses_and_adapters(cfg):
    off = run_losses(0, **cfg)
    for depth in (1, 3):
        on = run_losses(depth, **cfg)
        assert on[0] == off[0] and on[1] == off[1] and equal(on[2], off[2])
        assert on[3] == {"lumix-prefetch"} and off[3] == {threading.current_thread().name}
    assert prefetch_threads() == []


def write_cache(folder, count=4):
    """A real on-disk EncodedDataset (latents [5, CH, 4, 4], context [3, CONTEXT], pooled [VEC])."""
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    scenes = []
    for i in range(count):
        lat, txt = os.path.join(folder, f"l{i}.safetensors"), os.path.join(folder, f"t{i}.safetensors")
        save_file({"latents": torch.randn(5, CH, 4, 4, generator=g)}, lat)
        save_file({"context": torch.randn(3, CONTEXT, generator=g), "pooled": torch.randn(VEC, generator=g)}, txt)
        scenes.append(CachedScene(f"s{i}", lat, txt, (4, 4)))
    return EncodedDataset(scenes, scenes[0].text, 32, False, 5, cache_dir=folder, cache_label="cache", channels=CH,
                          text_dims={"context": CONTEXT, "pooled": VEC})


@pytest.mark.parametrize("prefetch", [0, 1, 4])
def test_a_bad_cache_file_stops_training_at_the_step_that_reads_it_with_the_same_message(tmp_path, prefetch):
    data = write_cache(str(tmp_path / "cache"))
    with open(data.scenes[2].latents, "wb") as f:
        f.write(b"not safetensors")
    model, adapters, config = setup(steps=6, batch_size=1, resolution=32, prefetch=prefetch)
    trainer = Trainer(model, adapters, data, config)
    done = []
    with pytest.raises(CacheError) as error:
        trainer.run(on_step=lambda m: done.append(m.loss))
    # scene 2 comes first at the step the data order gives it, whatever the prefetch depth
    first = next(s for s in range(6) if any(a.index == 2 for a in trainer.order.global_batch(s)))
    assert trainer.step == first and len(done) == first
    assert str(error.value) == ("the dataset cache file cache/l2.safetensors (scene s2) cannot be read "
                                "(SafetensorError); delete that file (or the whole cache folder) and encode the "
                                "dataset again: the LumiX Training Dataset node or the command-line trainer "
                                "re-encodes the files that are missing")
    assert prefetch_threads() == []
    if prefetch:  # the same losses as without the thread up to there
        model, adapters, config = setup(steps=6, batch_size=1, resolution=32, prefetch=0)
        reference = []
        with pytest.raises(CacheError):
            Trainer(model, adapters, data, config).run(on_step=lambda m: reference.append(m.loss))
        assert reference == done


def test_no_prefetch_thread_outlives_any_exit_of_run(tmp_path):
    class Cancel(Exception):
        pass
    # the normal end
    model, adapters, config = setup(steps=3, prefetch=2)
    Trainer(model, adapters, MemoryScenes(4), config).run()
    assert prefetch_threads() == []
    # should_stop -> TrainingStopped
    model, adapters, config = setup(steps=6, prefetch=2)
    trainer = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="run")
    with pytest.raises(TrainingStopped):
        trainer.run(should_stop=lambda: trainer.step == 2)
    assert prefetch_threads() == []
    # an interrupt in the progress callback, while the thread is waiting to read ahead
    model, adapters, config = setup(steps=6, prefetch=1)

    def on_step(m):
        assert len(prefetch_threads()) == 1  # it runs during training
        raise Cancel()
    with pytest.raises(Cancel):
        Trainer(model, adapters, MemoryScenes(4), config).run(on_step=on_step, interrupts=(Cancel,))
    assert prefetch_threads() == []
    # an error of the model
    model, adapters, config = setup(steps=6, prefetch=3)
    with pytest.raises(KeyError):
        Trainer(lambda *a: (_ for _ in ()).throw(KeyError("bug")), adapters, MemoryScenes(4), config).run()
    assert prefetch_threads() == []


def test_the_prefetcher_reads_at_most_depth_items_ahead_and_hands_errors_over():
    prepared, gate = [], threading.Event()

    def prepare(key):
        prepared.append(key)
        if key == 5:
            raise CacheError("bad file 5")
        return key * 10
    with Prefetcher(prepare, range(8), depth=2) as p:
        for _ in range(200):  # give the thread time to run ahead as far as it may
            if len(prepared) == 2:
                break
            gate.wait(0.01)
        gate.wait(0.05)
        assert prepared == [0, 1]
        assert [p.take(k) for k in range(5)] == [0, 10, 20, 30, 40]
        with pytest.raises(CacheError, match="^bad file 5$"):
            p.take(5)
        with pytest.raises(RuntimeError, match="ran out of keys"):
            p.take(6)  # the worker stopped at the error
    assert not p.alive
    with Prefetcher(lambda k: k, range(3), depth=1) as p:
        with pytest.raises(RuntimeError, match="out of order"):
            p.take(1)
    with pytest.raises(ValueError, match="at least 1"):
        Prefetcher(lambda k: k, range(3), depth=0)


def test_a_run_saved_before_keep_last_keeps_its_checkpoints_and_says_so(tmp_path):
    from lumix_core.training import TrainConfig, Trainer
    model, adapters, config = setup(steps=8, save_every=1, keep_last=0)
    first = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="old")
    first.run(until=4)
    state = first.state_dict()
    del state["config"]["keep_last"], state["prune_after"]  # as a state of the version before keep_last
    model2, adapters2, _ = setup(steps=8, save_every=1, keep_last=2)
    resumed = Trainer(model2, adapters2, MemoryScenes(4), config.replace(keep_last=2, learning_rate=config.learning_rate * 2),
                      output_dir=str(tmp_path), name="old")
    resumed.load_state_dict(state)
    assert any("saved before keep_last existed" in n for n in resumed.notes)
    assert any("learning_rate" in n and "schedule differs" in n for n in resumed.notes)
    resumed.run(until=7)
    kept = sorted(f for f in os.listdir(tmp_path) if f.startswith("old_step"))
    assert kept == [f"old_step{s:06d}.safetensors" for s in (1, 2, 3, 4, 6, 7)]  # 1-4 from before, newest 2 after
    again = resumed.state_dict()
    assert again["prune_after"] == 4  # and a later resume keeps them too
    model3, adapters3, _ = setup(steps=8, save_every=1, keep_last=2)
    third = Trainer(model3, adapters3, MemoryScenes(4), config.replace(keep_last=2, learning_rate=config.learning_rate * 2),
                    output_dir=str(tmp_path), name="old")
    third.load_state_dict(again)
    third.run(until=8)  # step 8 is the last: the final checkpoint, no step file
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("old_step")) == kept


@pytest.mark.parametrize("name", ["run_ema", "run_best", "run_step000005", "x_step1"])
def test_names_that_a_run_s_extra_files_take_are_refused(name):
    from lumix_core.training.files import check_output_name
    with pytest.raises(ValueError, match="ends like the extra files a run writes"):
        check_output_name(name)
    assert check_output_name(name + "s") == name + "s" and check_output_name("best_run") == "best_run"


def test_a_failure_after_a_finished_step_keeps_that_step_s_state(tmp_path):
    from lumix_core.training import Trainer, read_training_state
    model, adapters, config = setup(steps=6, save_every=0, validate_every=2)

    def refuse(step):
        if step == 4:
            raise ValueError("the sampled maps hold NaN")
        return {"photometric_residual": 0.5}
    trainer = Trainer(model, adapters, MemoryScenes(4), config, output_dir=str(tmp_path), name="f", validate=refuse)
    with pytest.raises(ValueError, match="hold NaN"):
        trainer.run()
    state = read_training_state(str(tmp_path / "f.state.pt"))
    assert state["step"] == 4 and trainer.saved_state_step == 4
    assert all(torch.equal(v, adapters.state_dict()[k].cpu()) for k, v in state["adapters"].items())
