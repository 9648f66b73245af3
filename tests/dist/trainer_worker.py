"""A torchrun worker for tests/test_distributed.py: the project's Trainer on the tiny host-free
denoiser (tests/training_fixtures.py) with its adapters wrapped by lumix_core.training.distributed,
as the command-line trainer runs it.

    python -m torch.distributed.run --nproc_per_node N trainer_worker.py OUT BATCH ACCUM STEPS
Rank 0 writes OUT/adapters.pt; every rank writes OUT/seen_<rank>.json (the scenes it trained on).
"""
import json
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]
from lumix_core.training import LumiXAdapters, TrainConfig, Trainer  # noqa: E402
from lumix_core.training import distributed as D  # noqa: E402
from training_fixtures import DOUBLE, HIDDEN, SINGLE, MemoryScenes, TinyDenoiser  # noqa: E402


def starting_adapters(seed):
    torch.manual_seed(seed)
    adapters = LumiXAdapters(HIDDEN, DOUBLE, SINGLE, rank=2)
    with torch.no_grad():  # G3 != 0 so that every factor learns from step 1
        for name, p in adapters.named_parameters():
            if name.endswith("G3"):
                p.normal_(std=0.05)
    return adapters


if __name__ == "__main__":
    out, batch, accumulation, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ctx = D.init_distributed("cpu", timeout_s=60)
    # the helpers the command-line trainer uses around the Trainer
    marker = out / "built_by"

    def build():  # rank 0 builds first; the others must find its file complete
        if ctx.is_main:
            marker.write_text("rank 0")
        return marker.read_text()

    assert D.in_turns(ctx, build, "a test cache") == "rank 0"
    assert D.mean_over_ranks(ctx, float(ctx.rank)) == (ctx.world_size - 1) / 2
    assert D.broadcast_object(ctx, {"from": ctx.rank}) == {"from": 0}
    memory = D.all_ranks_memory(ctx)
    assert len(memory) == ctx.world_size and all(m > 10 * 2**20 for m in memory)
    adapters = starting_adapters(100 + ctx.rank)  # differs per rank: DDP must broadcast rank 0's
    model = TinyDenoiser(0)
    model.adapters = adapters
    base = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("adapters")}
    config = TrainConfig(steps=steps, batch_size=batch, grad_accumulation=accumulation, learning_rate=3e-3,
                         resolution=16, save_every=0, max_grad_norm=0.0)
    data = MemoryScenes(8)
    trainer = Trainer(model, adapters, data, config, rank=ctx.rank, world_size=ctx.world_size,
                      ddp_module=D.wrap_adapters(adapters, ctx))
    trainer.run()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items()), "the frozen base changed"
    (out / f"seen_{ctx.rank}.json").write_text(json.dumps(data.requests))
    if ctx.is_main:
        torch.save({k: v.detach().clone() for k, v in adapters.state_dict().items()}, out / "adapters.pt")
    D.shutdown(ctx)
