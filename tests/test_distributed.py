"""lumix_core.training.distributed: batch splitting, the sharded order, and real 2-process gloo runs
under torchrun (a toy frozen base + adapters, tests/dist/toy_worker.py) against one process and
against plain full-batch training written here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lumix_core.training import distributed as D

WORKER = Path(__file__).resolve().parent / "dist" / "toy_worker.py"


def test_per_rank_batch_splits_the_global_batch_and_refuses_what_does_not_divide():
    assert D.per_rank_batch(16, 4, 1) == 4 and D.per_rank_batch(16, 2, 4) == 2 and D.per_rank_batch(16, 1, 1) == 16
    with pytest.raises(D.DistributedSetupError, match=r"global batch 16 does not split over 3 process\(es\) x 1"):
        D.per_rank_batch(16, 3, 1)
    with pytest.raises(D.DistributedSetupError, match="multiple of 12"):
        D.per_rank_batch(16, 3, 4)
    with pytest.raises(D.DistributedSetupError, match="global batch must be a positive"):
        D.per_rank_batch(0, 1, 1)


def test_sharded_batches_cover_each_epoch_once_without_overlap_and_match_one_process():
    n, batch, world, accum = 50, 12, 3, 2
    ranks = [D.ShardedBatches(n, batch, world, r, accum, seed=3) for r in range(world)]
    single = D.ShardedBatches(n, batch, 1, 0, 1, seed=3)
    assert ranks[0].steps_per_epoch == 4
    for epoch in range(2):
        seen = []
        for step in range(epoch * 4, epoch * 4 + 4):
            parts = [ranks[r].rank_micro_batches(step) for r in range(world)]
            assert all(len(p) == accum and all(len(m) == 2 for m in p) for p in parts)
            step_samples = sorted(i for p in parts for m in p for i in m)
            assert step_samples == sorted(single.rank_micro_batches(step)[0])
            seen += step_samples
        assert len(seen) == len(set(seen)) == 48  # two samples (50 - 4*12) left out, none twice
        # independent: epoch e is torch.randperm(n) seeded with seed + e, cut into batches in order
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(3 + epoch))[:48].tolist()
        assert sorted(seen) == sorted(expected)
    assert ranks[1].global_indices(5) != ranks[1].global_indices(1)  # a new permutation each epoch
    with pytest.raises(D.DistributedSetupError, match="fewer than the global batch"):
        D.ShardedBatches(5, 8)


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


def torchrun(nproc, out, *args, timeout=120):
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(WORKER), str(out), *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out / "adapters.pt")


def reference_training(global_batch, steps):
    """The toy run of toy_worker.py in one plain loop: full global batch, no DDP, no sharding code."""
    torch.manual_seed(1234)
    adapters = nn.ModuleDict({"a": nn.Linear(6, 8, bias=False), "b": nn.Linear(8, 3)}).double()
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=g).double() for s in ((8, 6), (8,), (3, 8), (3,))]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=g).double(), torch.randn(40, 3, generator=g).double()
    opt = torch.optim.AdamW(adapters.parameters(), lr=1e-2)
    per_epoch = 40 // global_batch
    for step in range(steps):
        epoch, pos = divmod(step, per_epoch)
        idx = torch.randperm(40, generator=torch.Generator().manual_seed(7 + epoch))[pos * global_batch:(pos + 1) * global_batch]
        h = torch.tanh(x[idx] @ base[0].T + base[1] + adapters["a"](x[idx]))
        loss = ((h @ base[2].T + base[3] + adapters["b"](h) - y[idx]) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().float() for k, v in adapters.state_dict().items()}


def test_two_gloo_processes_train_like_one_process_and_see_each_sample_once(tmp_path):
    steps = 5  # one epoch of 40 samples at global batch 8
    one = torchrun(1, tmp_path / "one", 8, 1, steps)  # micro-batch 8
    two = torchrun(2, tmp_path / "two", 8, 2, steps)  # micro-batch 2, DDP's no_sync on the first
    reference = reference_training(8, steps)
    for key in reference:
        assert not torch.allclose(reference[key], reference_training(8, 0)[key])  # it trained
        for result in (one, two):
            torch.testing.assert_close(result[key], reference[key], atol=1e-6, rtol=0)
    seen = [json.loads((tmp_path / "two" / f"seen_{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 20
    assert sorted(seen[0] + seen[1]) == list(range(40)), "every sample of the epoch once, across ranks"
