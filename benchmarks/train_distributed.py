"""Distributed training throughput: the project's Trainer with DDP over the adapters, 1 process vs N
processes under torchrun, the same global batch.

Prints, per world size, optimiser steps per second (median of interleaved repeats), the scaling ratio
against 1 process in the same run (ideal: N, the work per step being split N ways), and the
all-reduce share of a step: the time of one all-reduce of the adapters' gradient size, measured on the
same process group, over the step time.

    python benchmarks/train_distributed.py              # gloo on the CPU, 1 vs 2 processes
    python benchmarks/train_distributed.py --device cuda --nproc 4   # NCCL, one GPU per process

The model is the tiny FLUX-shaped denoiser of tests/training_fixtures.py (LumiX blocks, per-block
adapters, width 32); the numbers describe the scaling of this code, not FLUX.1-dev speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    import torch
    import torch.distributed as dist

    import training_fixtures as fx
    from lumix_core.training import LumiXAdapters, TrainConfig, Trainer
    from lumix_core.training import distributed as D

    ctx = D.init_distributed(args.device, timeout_s=120)
    torch.manual_seed(0)
    model = fx.TinyDenoiser(0).to(ctx.device)
    adapters = LumiXAdapters(fx.HIDDEN, fx.DOUBLE, fx.SINGLE, rank=4, device=ctx.device)
    model.adapters = adapters
    data = fx.MemoryScenes(64, size=args.latent)
    config = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch, learning_rate=1e-4, resolution=16,
                         save_every=0)
    trainer = Trainer(model, adapters, data, config, rank=ctx.rank, world_size=ctx.world_size,
                      ddp_module=D.wrap_adapters(adapters, ctx), device=ctx.device)

    def sync():
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        D.barrier(ctx)

    trainer.run(until=args.warmup)
    sync()
    start = time.perf_counter()
    trainer.run(until=args.warmup + args.steps)
    sync()
    step_s = (time.perf_counter() - start) / args.steps

    allreduce_s = 0.0
    if ctx.distributed:
        grads = torch.zeros(sum(p.numel() for p in adapters.parameters()), device=ctx.device)
        for _ in range(2):
            dist.all_reduce(grads)
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            dist.all_reduce(grads)
        sync()
        allreduce_s = (time.perf_counter() - start) / args.steps
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"step_s": step_s, "allreduce_s": allreduce_s,
                                              "params": sum(p.numel() for p in adapters.parameters())}))
    D.shutdown(ctx)


def launch(nproc: int, args, out: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__,
           "--worker", "--out", out, "--device", args.device, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--latent", str(args.latent)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise SystemExit(f"torchrun with {nproc} process(es) failed:\n{done.stderr[-3000:]}")
    return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nproc", type=int, default=2, help="the world size compared with 1 process")
    parser.add_argument("--latent", type=int, default=16, help="latent side (tokens per map = (side/2)^2)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (scenes of 5 maps)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    backend = "nccl" if args.device == "cuda" else "gloo"
    runs = {1: [], args.nproc: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved: load changes hit both sides alike
            for n in runs:
                runs[n].append(launch(n, args, os.path.join(tmp, f"{n}_{r}.json")))
    params = runs[1][0]["params"]
    print(f"{backend}, {args.device}: tiny FLUX-shaped model, adapters {params:,} parameters, "
          f"global batch {args.batch} scenes, {args.steps} timed steps, median of {args.repeats} interleaved runs")
    base = statistics.median(x["step_s"] for x in runs[1])
    for n, results in runs.items():
        step = statistics.median(x["step_s"] for x in results)
        share = statistics.median(x["allreduce_s"] / x["step_s"] for x in results)
        print(f"  {n} process(es): {1 / step:7.2f} steps/s   scaling vs 1 process {base / step:5.2f}x (ideal {n}x)"
              f"   all-reduce share of a step {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
