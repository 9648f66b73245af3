"""lumix_core.training.distributed: batch splitting, the one-process context, and real 2-process gloo
runs under torchrun of the project's Trainer on a tiny denoiser (tests/dist/trainer_worker.py)
against one process with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lumix_core.training import distributed as D

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist"))
from trainer_worker import starting_adapters  # noqa: E402

WORKER = Path(__file__).resolve().parent / "dist" / "trainer_worker.py"
EXIT_WORKER = Path(__file__).resolve().parent / "dist" / "exit_worker.py"


def test_per_rank_batch_splits_the_global_batch_and_refuses_what_does_not_divide():
    assert D.per_rank_batch(16, 4, 1) == 4 and D.per_rank_batch(16, 2, 4) == 2 and D.per_rank_batch(16, 1, 1) == 16
    with pytest.raises(D.DistributedSetupError, match=r"global batch 16 does not split over 3 process\(es\) x 1"):
        D.per_rank_batch(16, 3, 1)
    with pytest.raises(D.DistributedSetupError, match="multiple of 12"):
        D.per_rank_batch(16, 3, 4)
    with pytest.raises(D.DistributedSetupError, match="global batch must be a positive"):
        D.per_rank_batch(0, 1, 1)


def test_one_process_context_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    ctx = D.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.distributed) == (0, 1, None, True, False)
    adapters = nn.Linear(2, 2)
    assert D.wrap_adapters(adapters, ctx) is adapters  # one process: no DDP
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(D.DistributedSetupError, match="WORLD_SIZE='two' is not an integer"):
        D.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(D.DistributedSetupError, match="inconsistent torchrun environment"):
        D.init_distributed("cpu")
    with pytest.raises(D.DistributedSetupError, match="device must be"):
        D.choose_device("tpu", 0)


def test_wrap_refuses_frozen_parameters():
    frozen = nn.Linear(2, 2)
    frozen.weight.requires_grad_(False)
    with pytest.raises(D.DistributedSetupError, match="frozen parameters"):
        D.wrap_adapters(frozen, D.DistContext())


def run_worker(nproc, out, *args, timeout=180):
    """The worker under torchrun with `nproc` processes, or (nproc 0) as a plain one-process run."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone"] if nproc else []
    cmd = [sys.executable, *launcher, str(WORKER), str(out), *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out / "adapters.pt")


def test_two_gloo_processes_train_like_one_process_and_see_each_scene_once(tmp_path):
    steps = 4  # 8 scenes at a global batch of 2: exactly one epoch
    one = run_worker(0, tmp_path / "one", 2, 2, steps)  # one process, 2 accumulation micro-batches of 1
    two = run_worker(2, tmp_path / "two", 2, 1, steps)  # two processes, 1 scene each, gradients all-reduced
    start = starting_adapters(100).state_dict()
    assert one.keys() == two.keys() == start.keys()
    for key in start:
        assert (one[key] - start[key]).abs().max() > 1e-4, f"{key} did not train"
        assert (one[key] - two[key]).abs().max() <= 1e-6, key
    seen = [json.loads((tmp_path / "two" / f"seen_{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    assert sorted(seen[0] + seen[1]) == list(range(8)), "every scene of the epoch once, across ranks"


def two_rank_job(*args) -> tuple[int, str]:
    """exit_worker.py as a 2-process gloo job under torchrun: (torchrun's exit code, output). (Started
    without torchrun, the unfixed ending aborted far less often: 0 of 10 against 2 of 10 here.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(EXIT_WORKER),
           *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    return done.returncode, done.stdout + done.stderr


def test_a_finished_two_process_job_exits_0_every_time():
    """After its work, a rank sometimes aborted at exit ('terminate called without an active exception',
    SIGABRT) while DDP outlived the process group: about 1 finished job in 50, 2-3 in 10 on this loaded
    2-core machine (exit_worker.py 'unfixed' shows it); under --max-restarts a finished job was restarted.
    The trainer's ending (D.shutdown, D.exit_process) must exit 0 every time."""
    runs = int(os.environ.get("LUMIX_EXIT_RUNS", "20"))
    failures = []
    for run in range(runs):
        code, output = two_rank_job()
        if code != 0 or "rank 0 done" not in output or "rank 1 done" not in output:
            failures.append(f"run {run}: exit {code}: {output[-600:]}")
    assert not failures, f"{len(failures)} of {runs} finished jobs failed:\n" + "\n".join(failures[:2])
