"""Many-process training on torch.distributed, launched by torchrun (one process per device).

What this module adds to a single-process trainer, and nothing else:

* `init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, or
  a rendezvous endpoint), puts each rank on its own device and opens the process group: NCCL on
  GPUs, gloo on CPUs. Without torchrun's variables it returns a one-process context, so the same
  code path trains on one device.
* `wrap_adapters` wraps ONLY the trainable adapters in DistributedDataParallel: the frozen base model
  is replicated on every rank (loaded by each) and never all-reduced. DDP only prepares its gradient
  all-reduce when its own forward runs, so the adapters module's forward runs the whole training
  forward pass it is handed (LumiXAdapters.forward(compute, *args)).
* `per_rank_batch`: the global batch and the learning rate are settings of the run, independent of
  the world size; each rank's micro-batch is global / (world * accumulation), checked before any
  model is loaded. (Which samples each rank takes is the trainer's DataOrder: disjoint slices of
  each global batch, so N ranks see exactly the samples, and average exactly the gradient, of one
  process with the same global batch.)
* `in_turns` (build a cache on rank 0 first, then on each other node's first rank, then the rest
  only read it: no two ranks write the same file, and nodes need not share a file system), `all_ranks_memory`
  (memory per rank for rank 0's console), `PeerFailure` (a collective that failed because a peer
  died), `shutdown` and `exit_process` (a finished rank exits 0 every time: see shutdown).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import resource
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

# torchrun's variables; a run without them is one process.
_ENV_WORLD = "WORLD_SIZE"
_ENV_RANK = "RANK"
_ENV_LOCAL_RANK = "LOCAL_RANK"
_ENV_RESTARTS = "TORCHELASTIC_RESTART_COUNT"


class DistributedSetupError(RuntimeError):
    """A configuration or environment that cannot run distributed; the message says what to do."""


class PeerFailure(RuntimeError):
    """A collective operation failed because another rank died, was killed or timed out."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (one process)
    restart_count: int = 0  # torchrun's elastic restart counter (0 on the first attempt)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs, validation images and the console progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def elastic_restart(self) -> bool:
        """True when torchrun restarted the workers after a failure (--max-restarts)."""
        return self.restart_count > 0


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"environment variable {name}={value!r} is not an integer; "
                                    "launch with torchrun, which sets it") from None


def choose_device(preference: str, local_rank: int) -> torch.device:
    """'auto' (the local GPU if there is one, else the CPU), 'cuda' or 'cpu'."""
    if preference not in ("auto", "cuda", "cpu"):
        raise DistributedSetupError(f"device must be 'auto', 'cuda' or 'cpu', got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedSetupError("device 'cuda' was asked for but torch sees no GPU; use device = 'cpu' "
                                    "(gloo) or install a CUDA build of torch")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedSetupError(
            f"local rank {local_rank} has no GPU of its own: this node has {count} GPU(s); start at most "
            f"{count} processes per node (torchrun --nproc_per_node {count})")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Open the process group from torchrun's environment; a one-process context without it.

    timeout_s bounds how long a collective waits for a peer before failing (a hung or dead rank
    then ends the job with a PeerFailure instead of blocking forever).
    """
    world = _int_env(_ENV_WORLD, 1)
    rank = _int_env(_ENV_RANK, 0)
    local_rank = _int_env(_ENV_LOCAL_RANK, 0)
    restarts = _int_env(_ENV_RESTARTS, 0)
    if world < 1 or not 0 <= rank < world:
        raise DistributedSetupError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    dev = choose_device(device, local_rank)
    if world == 1:
        return DistContext(0, 1, local_rank, dev, None, restarts)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world, timeout, restarts), rank=rank,
                                world_size=world, timeout=timeout, **kwargs)
    return DistContext(rank, world, local_rank, dev, backend, restarts)


def _attempt_store(rank: int, world: int, timeout: datetime.timedelta, restarts: int):
    """torchrun's store (env://), under a prefix of its own for each elastic restart. torchrun shares
    one store across restarts, so without it a restarted rank can read the addresses the dead
    attempt's ranks published and fail to connect (pytorch/pytorch#135712)."""
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    return dist.PrefixStore(f"lumix/attempt_{restarts}", store)


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group (safe to call twice and for a one-process context).

    A DistributedDataParallel wrapper must be gone first: one that only the garbage collector frees
    (a reference cycle), at interpreter exit after the group is destroyed, sometimes aborts its
    process ("terminate called without an active exception", SIGABRT) after a finished run. So
    unreachable objects are collected here, before the group goes; callers drop their own
    references to the wrapper first (see TrainingSession.release), and exit_process ends the process
    without the interpreter's teardown."""
    gc.collect()
    if ctx.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End this process with `code` once its output is flushed, skipping the interpreter's teardown
    (where C++ objects of torch.distributed may be destroyed in an order that aborts the process,
    and a finished job would be reported as failed, then restarted under --max-restarts). Call it
    after shutdown(), with every file closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def per_rank_batch(global_batch: int, world_size: int, accumulation: int = 1) -> int:
    """Samples per rank per micro-batch. The global batch is what the optimiser sees per step,
    whatever the number of processes; it must split evenly over ranks and accumulation steps."""
    for label, value in (("global batch", global_batch), ("world size", world_size),
                         ("gradient accumulation", accumulation)):
        if int(value) < 1:
            raise DistributedSetupError(f"{label} must be a positive integer, got {value}")
    parts = world_size * accumulation
    if global_batch % parts:
        fits = [b for b in range(parts, 4 * parts + 1, parts)]
        raise DistributedSetupError(
            f"global batch {global_batch} does not split over {world_size} process(es) x {accumulation} "
            f"accumulation step(s) = {parts} equal micro-batches; use a multiple of {parts} "
            f"(e.g. {', '.join(map(str, fits[:3]))}) or change the number of processes / accumulation")
    return global_batch // parts


def wrap_adapters(adapters: nn.Module, ctx: DistContext) -> nn.Module:
    """`adapters` inside DistributedDataParallel when there are several ranks (itself otherwise).

    `adapters` holds every trainable parameter and nothing else (LumiXAdapters); its forward runs the
    training forward pass it is given (`module(compute, *args)`), so that DDP sees it and hooks the
    adapters' gradients. The frozen base lives outside it: replicated by each rank, never all-reduced.
    DDP broadcasts rank 0's adapters to every rank here, and averages the adapters' gradients in
    backward (sum / world: with equal micro-batches, the gradient of the global-batch mean loss).
    """
    frozen = [n for n, p in adapters.named_parameters() if not p.requires_grad]
    if frozen:
        raise DistributedSetupError(f"the adapters module has frozen parameters ({frozen[0]}, ...): "
                                    "wrap only the trainable adapters, not the base model")
    if not ctx.distributed:
        return adapters
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    with collective_guard(ctx, "the initial broadcast of the adapters"):
        return nn.parallel.DistributedDataParallel(adapters, device_ids=device_ids)  # (adapters hold no buffers)


def peer_failure_message(ctx: DistContext, what: str, error: BaseException) -> str:
    return (f"rank {ctx.rank}/{ctx.world_size}: {what} failed: another process of this job died, was "
            f"killed or stopped answering ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Checkpoints already written are intact; run the same command with --resume to continue "
            "from the last one (under torchrun --max-restarts this happens automatically).")


@contextlib.contextmanager
def collective_guard(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn the error a collective raises when a peer is gone into a PeerFailure with a clear message."""
    if not ctx.distributed:
        yield
        return
    try:
        yield
    except PeerFailure:
        raise
    except (RuntimeError, dist.DistError) as error:
        if _looks_like_peer_failure(error):
            raise PeerFailure(peer_failure_message(ctx, what, error)) from error
        raise


def _looks_like_peer_failure(error: BaseException) -> bool:
    if isinstance(error, (dist.DistBackendError, dist.DistNetworkError)):
        return True
    text = str(error).lower()
    return any(s in text for s in ("connection closed", "connection reset", "broken pipe", "timed out",
                                   "timeout", "gloo", "nccl", "peer", "socket"))


def barrier(ctx: DistContext, what: str = "a barrier") -> None:
    if ctx.distributed:
        with collective_guard(ctx, what):
            dist.barrier()


def in_turns(ctx: DistContext, work: Callable[[], object], what: str = "building the cache"):
    """Run `work()` on every rank, in three turns separated by barriers: rank 0; then the first rank
    of every other node (which finds rank 0's files if the nodes share a file system, and builds
    its node's own otherwise); then every other rank (which finds its node's files complete and
    only reads). Returns work()'s result on each rank."""
    turns = (ctx.rank == 0, ctx.rank != 0 and ctx.local_rank == 0, ctx.local_rank != 0)
    result = None
    for turn, mine in enumerate(turns):
        if mine:
            result = work()
        barrier(ctx, f"{what} (turn {turn + 1} of 3)")
    return result


def broadcast_object(ctx: DistContext, value, what: str = "a broadcast"):
    """Rank 0's `value` on every rank."""
    if not ctx.distributed:
        return value
    box = [value]
    with collective_guard(ctx, what):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(ctx: DistContext, value: float) -> float:
    """The mean of a float over all ranks (for logging the global-batch loss on rank 0)."""
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    with collective_guard(ctx, "averaging the loss"):
        dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: allocated GPU memory on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(usage if sys.platform == "darwin" else usage * 1024)  # macOS: bytes, Linux: KiB


def all_ranks_memory(ctx: DistContext) -> list[int]:
    """Peak memory of every rank (bytes), gathered for rank 0's progress line."""
    mine = peak_memory_bytes(ctx.device)
    if not ctx.distributed:
        return [mine]
    t = torch.tensor([mine], dtype=torch.int64, device=ctx.device)
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    with collective_guard(ctx, "gathering memory use"):
        dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """Whether `flag` holds on any rank (every rank calls it at the same point; all get the same answer)."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=ctx.device)
    with collective_guard(ctx, "agreeing whether to stop"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)

