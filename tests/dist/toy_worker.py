"""A torchrun worker for tests/test_distributed.py: a frozen random base, trainable adapters, a fixed
dataset, trained through lumix_core.training.distributed exactly as the command-line trainer does.

    python -m torch.distributed.run --nproc_per_node N toy_worker.py OUT GLOBAL_BATCH ACCUM STEPS
Rank 0 writes OUT/adapters.pt (the trained adapters) and every rank OUT/seen_<rank>.json (sample ids).
"""
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lumix_core.training import distributed as D  # noqa: E402

out, global_batch, accumulation, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.use_deterministic_algorithms(True)
ctx = D.init_distributed("cpu", timeout_s=60)
torch.manual_seed(1234 + ctx.rank)  # different per rank on purpose: DDP must broadcast rank 0's adapters



class ToyAdapters(nn.ModuleDict):
    def forward(self, compute, *args):  # as LumiXAdapters: DDP must see the training forward pass
        return compute(*args)


adapters = ToyAdapters({"a": nn.Linear(6, 8, bias=False), "b": nn.Linear(8, 3)})
base = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).requires_grad_(False)
with torch.no_grad():
    g = torch.Generator().manual_seed(0)
    for p in base.parameters():
        p.copy_(torch.randn(p.shape, generator=g))
base_before = [p.clone() for p in base.parameters()]
g = torch.Generator().manual_seed(1)
data_x, data_y = torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g)


def loss_fn(idx):
    x = data_x[idx]
    h = torch.tanh(base[0](x) + adapters["a"](x))
    return ((base[2](h) + adapters["b"](h) - data_y[idx]) ** 2).mean()


module = D.wrap_adapters(adapters, ctx)
sampler = D.ShardedBatches(len(data_x), global_batch, ctx.world_size, ctx.rank, accumulation, seed=7)
opt = torch.optim.AdamW(adapters.parameters(), lr=1e-2)
seen = []


def backward_one(mod, micro):
    seen.extend(micro)
    loss = mod(loss_fn, torch.tensor(micro)) / accumulation
    loss.backward()
    return loss.item()


for step in range(steps):
    D.accumulate(module, sampler.rank_micro_batches(step), backward_one, ctx)
    opt.step()
    opt.zero_grad()
assert all(torch.equal(a, b) for a, b in zip(base_before, base.parameters())), "the base changed"
assert all(p.grad is None for p in base.parameters()), "the base received gradients"
(out / f"seen_{ctx.rank}.json").write_text(json.dumps(seen))
if ctx.is_main:
    torch.save({k: v.detach().clone() for k, v in adapters.state_dict().items()}, out / "adapters.pt")
D.shutdown(ctx)
