"""A minimal rank that ends the way the command-line trainer ends (tests/test_distributed.py runs
many 2-process jobs of it): DDP-wrapped adapters, one backward with its all-reduce, a reference
cycle that keeps the wrapper alive as the trainer's closures do, then D.shutdown and D.exit_process.

    python -m torch.distributed.run --nproc_per_node 2 --standalone exit_worker.py [unfixed]
Before the fix, about 1 such job in 50 (far more on a loaded machine) had a rank abort after its
work was done ("terminate called without an active exception", SIGABRT).
"""
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent)]
import torch  # noqa: E402

from lumix_core.training import LumiXAdapters  # noqa: E402
from lumix_core.training import distributed as D  # noqa: E402


def main() -> int:
    ctx = D.init_distributed("cpu", timeout_s=60)
    adapters = LumiXAdapters(8, 1, 1, rank=1)
    ddp = D.wrap_adapters(adapters, ctx)
    ddp(lambda: sum((p * p).sum() for p in adapters.parameters())).backward()
    holder = {"ddp": ddp}
    holder["self"] = holder  # freed only by the garbage collector, as the trainer's objects are
    del ddp
    if UNFIXED:  # the ending before the fix, to see the abort it had: the wrapper outlives the group
        torch.distributed.destroy_process_group()
    else:
        D.shutdown(ctx)
    print(f"rank {ctx.rank} done", flush=True)
    return 0


UNFIXED = sys.argv[1:] == ["unfixed"]
if __name__ == "__main__":
    code = main()
    if UNFIXED:
        sys.exit(code)
    D.exit_process(code)
