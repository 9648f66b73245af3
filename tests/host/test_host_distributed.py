"""The command-line trainer (scripts/lumix_train.py) inside a real ComfyUI: a tiny FLUX file loaded
through ComfyUI, the cache pre-built with tiny encoder stand-ins, one process against two gloo
processes under torchrun, a rank killed mid-run, --resume, and torchrun --max-restarts."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

import comfy_host  # noqa: F401  (skips without ComfyUI; puts it on sys.path)
from distributed_fixture import build_shared, run_trainer, write_config

from lumix_core import load_checkpoint
from lumix_core.training import read_training_state

FAULT = {"LUMIX_TRAIN_FAULT": "1:3"}  # rank 1 SIGKILLs itself after step 3 (first attempt only)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return build_shared(tmp_path_factory.mktemp("lumix_cli"))


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    """One uninterrupted run in one process (no torchrun): what every other run must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    out = folder / "one"
    return out, ok(run_trainer(write_config(folder, shared, out)))


def ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def final(out):
    return load_file(str(out / "tiny.safetensors"))


def log_steps(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def assert_same(a, b, tol=1e-6):
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, worst


def test_one_process_trains_from_the_cache_and_writes_what_the_node_writes(reference):
    out, done = reference
    assert "step 4/4  loss " in done.stdout and "steps/s  ETA " in done.stdout and "memory GiB per rank [" in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["log.jsonl", "plot.png", "tiny.safetensors", "tiny.state.pt", "tiny_step000002.safetensors"]
    checkpoint = load_checkpoint(str(out / "tiny.safetensors"))  # the project's loader reads it
    assert checkpoint.rank == 8 and json.loads(checkpoint.metadata["training_config"])["steps"] == 4
    g3 = [f.G3 for block in checkpoint.adapters.values() for f in block.values()]
    assert all(torch.isfinite(g).all() for g in g3) and any(g.abs().max() > 0 for g in g3)  # trained from G3 = 0
    assert log_steps(out) == [1, 2, 3, 4]
    assert read_training_state(str(out / "tiny.state.pt"))["step"] == 4


def test_two_ranks_match_one_process_and_a_killed_rank_resumes_to_the_same_adapters(shared, reference, tmp_path):
    reference = reference[0]

    # a rank killed mid-run: the job fails with a clear message, the step-2 files intact
    killed = tmp_path / "killed"
    config = write_config(tmp_path, shared, killed)
    done = run_trainer(config, nproc=2, env=FAULT)
    assert done.returncode != 0
    assert "rank 1: LUMIX_TRAIN_FAULT kills this rank after step 3" in done.stderr
    # rank 0 ends on the dead peer (a PeerFailure) or on torchrun's SIGTERM, whichever comes first
    assert re.search(r"lumix_train: rank 0(/2)?: .*(died, was killed|stopped by the launcher).*--resume",
                     done.stderr), done.stderr[-4000:]
    assert read_training_state(str(killed / "tiny.state.pt"))["step"] == 2
    assert sorted(p.name for p in killed.iterdir()) == ["log.jsonl", "plot.png", "tiny.state.pt",
                                                        "tiny_step000002.safetensors"]
    assert log_steps(killed) == [1, 2, 3]  # one writer: rank 0 (rank 1 wrote nothing)
    assert_same(load_file(str(killed / "tiny_step000002.safetensors")),
                load_file(str(reference / "tiny_step000002.safetensors")))

    # --resume (here on one process: the global batch, not the process count, defines the run)
    ok(run_trainer(config, "--resume"))
    assert_same(final(killed), final(reference))

    # torchrun --max-restarts: the restarted ranks resume from the last state by themselves
    elastic = tmp_path / "elastic"
    done = ok(run_trainer(write_config(tmp_path, shared, elastic), nproc=2, launcher_args=["--max-restarts", "1"],
                          env=FAULT))
    assert "elastic restart 1: resuming from" in done.stdout and "resumed at step 2" in done.stdout
    assert_same(final(elastic), final(reference))
    assert sorted(p.name for p in elastic.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_bad_settings_end_before_any_model_is_loaded(shared, tmp_path):
    done = run_trainer(write_config(tmp_path, shared, tmp_path / "r"), "--resume")
    assert done.returncode == 2 and "--resume: no training state at" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nflux = 'x'\n")
    done = run_trainer(bad)
    assert done.returncode == 2 and "[data] root is required" in done.stderr
