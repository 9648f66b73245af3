"""The command-line trainer (scripts/lumix_train.py) inside a real ComfyUI: a tiny FLUX file loaded
through ComfyUI, the cache pre-built with tiny encoder stand-ins, one process against two gloo
processes under torchrun, a rank killed mid-run, --resume, and torchrun --max-restarts."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

import comfy_host  # noqa: F401  (skips without ComfyUI; puts it on sys.path)
from conftest import REPO
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
    # rank 0 keeps the state of its last finished step: step 3 when it saw the dead peer in the next collective
    # (all of step 3 was all-reduced), step 2 (the last save) when torchrun's SIGTERM came first
    assert read_training_state(str(killed / "tiny.state.pt"))["step"] in (2, 3)
    assert sorted(p.name for p in killed.iterdir()) == ["log.jsonl", "plot.png", "tiny.state.pt",
                                                        "tiny_step000002.safetensors"]
    assert log_steps(killed) == [1, 2, 3]  # one writer: rank 0 (rank 1 wrote nothing)
    assert_same(load_file(str(killed / "tiny_step000002.safetensors")),
                load_file(str(reference / "tiny_step000002.safetensors")))

    # rank 0 killed while writing the state leaves its temporary: the next start removes it (only it)
    stale, foreign = killed / ".tiny.state.pt.k1ll3d_x.part", killed / ".other.state.pt.k1ll3d_x.part"
    stale.write_bytes(b"half a state")
    foreign.write_bytes(b"another run's")
    # --resume (here on one process: the global batch, not the process count, defines the run)
    done = ok(run_trainer(config, "--resume"))
    assert f"removed a killed run's temporary file {stale}" in done.stdout
    assert not stale.exists() and foreign.exists()
    foreign.unlink()
    assert_same(final(killed), final(reference))
    assert log_steps(killed) == [1, 2, 3, 4]  # step 3 of the killed attempt is not listed twice

    # the same command without --resume would replace the finished run: refused, nothing touched
    before = {p.name: p.stat().st_mtime_ns for p in killed.iterdir()}
    done = run_trainer(config)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "already holds a run named 'tiny' (tiny.safetensors, tiny.state.pt, tiny_step000002.safetensors): " \
           "continue it with --resume, replace it with --overwrite" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in killed.iterdir()} == before
    # a cut last line in log.jsonl (a crash mid-write) does not block --resume; it is dropped
    with open(killed / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    done = ok(run_trainer(config, "--resume"))
    assert "nothing to do: the state is at step 4 of 4" in done.stdout and "1 unreadable line" in done.stdout
    assert log_steps(killed) == [1, 2, 3, 4]
    # --overwrite starts again: the same adapters, a fresh log
    done = ok(run_trainer(config, "--overwrite"))
    assert "--overwrite: deleted the previous run's 3 checkpoint/state file(s)" in done.stdout
    assert_same(final(killed), final(reference))
    assert log_steps(killed) == [1, 2, 3, 4]

    # torchrun --max-restarts: the restarted ranks resume from the last state by themselves
    elastic = tmp_path / "elastic"
    done = ok(run_trainer(write_config(tmp_path, shared, elastic), nproc=2, launcher_args=["--max-restarts", "1"],
                          env=FAULT))
    assert "elastic restart 1: resuming from" in done.stdout, done.stdout
    assert re.search(r"resumed at step [23] from", done.stdout), done.stdout  # the last state rank 0 kept (above)
    assert_same(final(elastic), final(reference))
    assert sorted(p.name for p in elastic.iterdir()) == sorted(p.name for p in reference.iterdir())


def one_line(done):
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def test_bad_settings_end_before_any_model_is_loaded(shared, tmp_path):
    done = run_trainer(write_config(tmp_path, shared, tmp_path / "r"), "--resume")
    assert done.returncode == 2 and "--resume: no training state at" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nflux = 'x'\n")
    done = run_trainer(bad)
    assert done.returncode == 2 and "[data] root is required" in done.stderr
    # each of these once trained, crashed or wrote the wrong thing (issue 20); now one line, exit 2, nothing written
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "never"
    for train, output, message in [
            ({"steps": 1.5}, {}, "[train] training setting: steps must be a whole number in [1, 1000000], got 1.5"),
            ({"steps": True}, {}, "steps must be a whole number in [1, 1000000], got True"),
            ({"batch_size": 1.0}, {}, "batch_size must be a whole number"),
            ({"rank": 65}, {}, "rank must be a whole number in [1, 64], got 65"),
            ({"alpha": 20000.0}, {}, "alpha must be a finite number in (0, 10000], got 20000.0"),
            ({}, {"name": ""}, "[output] the output name '' is empty"),
            ({}, {"name": "../x"}, "[output] the output name '../x' must be a plain file name, not a path"),
            ({}, {"name": "a\nb"}, "control characters"),
            ({}, {"name": "n" * 220}, "is too long: the run writes"),
            ({}, {"dir": str(tmp_path / "a_file")}, "a_file is a file, not a folder")]:
        config = write_config(tmp_path, shared, out, **train)
        if output:
            text = config.read_text().replace(f'dir = "{out}"\nname = "tiny"',
                                              f'dir = {json.dumps(output.get("dir", str(out)))}\n'
                                              f'name = {json.dumps(output.get("name", "tiny"))}')
            config.write_text(text)
        assert message in one_line(run_trainer(config)), (train, output)
        assert not out.exists()
    done = run_trainer(write_config(tmp_path, shared, out), "--resume", "--overwrite")
    assert done.returncode == 2 and "give one of them" in done.stderr


def test_a_diverged_run_exits_2_with_one_line(shared, tmp_path, monkeypatch, capsys):
    """main()'s handling of the trainer's FloatingPointError (raised when the gradient is not finite:
    tested in test_training_core) without a real diverging model."""
    import importlib.util
    import signal
    spec = importlib.util.spec_from_file_location("lumix_train_cli", str(REPO / "scripts" / "lumix_train.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    def diverge(cfg, ctx, resume):
        raise FloatingPointError("the gradient became nan at step 3: training diverged. Lower the learning rate")
    monkeypatch.setattr(cli, "train", diverge)
    monkeypatch.setattr(cli.comfy_models, "import_comfyui", lambda device: None)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main([str(write_config(tmp_path, shared, tmp_path / "d"))])
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    assert code == 2 and err == "lumix_train: rank 0: the gradient became nan at step 3: training diverged. Lower the " \
                                "learning rate\n"


def test_ctrl_c_saves_the_last_finished_step_and_resume_finishes_like_a_straight_run(shared, reference, tmp_path):
    out = tmp_path / "interrupted"
    config = write_config(tmp_path, shared, out)
    stopped = run_trainer(config, env={"LUMIX_TRAIN_FAULT": "0:3:INT"})  # a real SIGINT after step 3
    assert stopped.returncode == 130, stopped.stdout[-2000:] + stopped.stderr[-3000:]
    assert "stopped by Ctrl-C after step 3 of 4: saved the resumable state" in stopped.stdout
    assert stopped.stderr.strip().endswith("lumix_train: rank 0: stopped by Ctrl-C")
    assert read_training_state(str(out / "tiny.state.pt"))["step"] == 3 and not (out / "tiny.safetensors").exists()
    ok(run_trainer(config, "--resume"))
    assert log_steps(out) == [1, 2, 3, 4]
    assert_same(final(out), final(reference[0]), tol=0.0)  # one process both times: bit-identical
