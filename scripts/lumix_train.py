#!/usr/bin/env python3
"""LumiX command-line trainer: the trainer of the ComfyUI node (lumix_core.training), run from a TOML
config on one process or many (torchrun, torch.distributed: DDP over the adapters only).

    python scripts/lumix_train.py configs/lumix_paper.toml                 # one process
    torchrun --nproc_per_node 4 scripts/lumix_train.py configs/lumix_paper.toml
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        scripts/lumix_train.py configs/lumix_paper.toml                    # two machines
    ... scripts/lumix_train.py CONFIG --resume            # continue from <output.dir>/<name>.state.pt
    ... scripts/lumix_train.py CONFIG --overwrite         # start again over a finished or stopped run
    torchrun --max-restarts 3 ...                         # a failed rank restarts the job, which
                                                          # resumes from the last state by itself

ComfyUI is used as a library (COMFYUI_PATH, or the ComfyUI this checkout sits in) to load FLUX, the
text encoders and the VAE. Rank 0 alone writes checkpoints, the training state, the log and the
validation output, and prints progress. Exit status: 0 done, 2 bad config, data or resume, or a diverged
run, 3 a peer failed, 130 Ctrl-C (the step in progress finishes and its state is saved: continue with
--resume; a second Ctrl-C stops at once, saving the last finished step's state).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lumix_comfy_models as comfy_models  # noqa: E402

comfy_models.import_extension()
from lumix_extension.lumix_core.training import distributed as D  # noqa: E402
from lumix_extension.lumix_core.training.optim import PRODIGY_MISSING, prodigy_available  # noqa: E402
from lumix_extension.lumix_core.training.run_config import RunConfig, RunConfigError, load_run_config  # noqa: E402

# Testing aid: "RANK:STEP" makes that rank SIGKILL itself after optimiser step STEP on the first
# attempt (not after an elastic restart), to exercise the fault handling for real; "RANK:STEP:INT"
# sends it SIGINT (Ctrl-C) instead.
FAULT_ENV = "LUMIX_TRAIN_FAULT"
EXIT_CONFIG, EXIT_PEER, EXIT_INTERRUPTED = 2, 3, 130  # 130: the shell's code for Ctrl-C


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="TOML config (see configs/lumix_paper.toml for every setting)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="STATE",
                        help="continue a run: from STATE (a .state.pt), or without a value from "
                             "<output.dir>/<name>.state.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run even though [output] dir already holds one of this name (its "
                             "checkpoints and state are deleted first); without it such a run is refused")
    args = parser.parse_args(argv)
    if args.resume is not None and args.overwrite:
        parser.error("--resume continues the saved run and --overwrite replaces it: give one of them")
    return args


def check_new_run(cfg: RunConfig, ctx: D.DistContext, overwrite: bool) -> None:
    """A run that does not resume must not silently replace another run's checkpoints and state (the
    node refuses the same): refused unless --overwrite, which deletes them first (rank 0)."""
    # rank 0's view (the other machines need not see its files), so that every rank decides alike
    existing = D.broadcast_object(ctx, cfg.files().existing() if ctx.is_main else None, "checking the output folder")
    if not existing:
        return
    if not overwrite:
        names = ", ".join(Path(p).name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise FileExistsError(f"{cfg.output_dir} already holds a run named '{cfg.output['name']}' ({names}): "
                              "continue it with --resume, replace it with --overwrite, or set another [output] name")
    if ctx.is_main:
        for path in existing:
            os.unlink(path)
        print(f"--overwrite: deleted the previous run's {len(existing)} checkpoint/state file(s)", flush=True)
    D.barrier(ctx, "deleting the previous run")


def log(ctx: D.DistContext, message: str) -> None:
    if ctx.is_main:
        print(message, flush=True)


def resume_path(cfg: RunConfig, ctx: D.DistContext, requested: str | None) -> str | None:
    """The state to continue from: --resume's, or the run's own after an elastic restart."""
    if requested not in (None, "auto"):
        return requested
    own = cfg.state_path()
    if requested == "auto":
        if not own.is_file():
            raise FileNotFoundError(f"--resume: no training state at {own} (none was saved yet: the first "
                                    f"is written after save_every = {cfg.train.save_every} steps); run without --resume")
        return str(own)
    if ctx.elastic_restart and own.is_file():
        log(ctx, f"elastic restart {ctx.restart_count}: resuming from {own}")
        return str(own)
    return None


class Progress:
    """Rank 0's console line every `every` steps: step, loss (mean over ranks), steps/s, ETA and
    peak memory per rank. Every rank calls on_step (the loss and memory are gathered)."""

    def __init__(self, ctx: D.DistContext, first_step: int, total: int, every: int):
        self.ctx, self.total, self.every = ctx, total, every
        self.first_step, self.start = first_step, time.perf_counter()

    def on_step(self, metrics) -> None:
        step = metrics.step
        if step % self.every and step != self.total:
            return
        loss = D.mean_over_ranks(self.ctx, metrics.loss)
        memory = D.all_ranks_memory(self.ctx)
        if not self.ctx.is_main:
            return
        done = step - self.first_step
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        mem = " ".join(f"{m / 2**30:.2f}" for m in memory)
        print(f"step {step}/{self.total}  loss {loss:.4f}  {rate:.2f} steps/s  ETA {_duration(eta)}  "
              f"lr {metrics.lr:.3g}  memory GiB per rank [{mem}]", flush=True)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def fault_injection(ctx: D.DistContext):
    spec = os.environ.get(FAULT_ENV)
    if not spec or ctx.elastic_restart:
        return None
    rank, step, *how = spec.split(":")
    rank, step = int(rank), int(step)
    signum = signal.SIGINT if how == ["INT"] else signal.SIGKILL

    def maybe_die(metrics):
        if ctx.rank == rank and metrics.step == step:
            what = "sends Ctrl-C (SIGINT) to" if signum == signal.SIGINT else "kills"
            print(f"rank {ctx.rank}: {FAULT_ENV} {what} this rank after step {step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)
    return maybe_die


def handle_termination(ctx: D.DistContext) -> None:
    """torchrun sends SIGTERM to the surviving ranks when one fails: say so at once (the message
    must not depend on where the interpreter is), then unwind so that a file being written is
    removed rather than left half-written; later signals are ignored."""
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        message = (f"lumix_train: rank {ctx.rank}: stopped by the launcher (signal {signum}), usually because "
                   "another rank failed (see its error above). Checkpoints already written are intact; rerun "
                   "the same command with --resume to continue.")
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


class CtrlC:
    """The first Ctrl-C asks the run to stop after the step in progress (all ranks agree at the next step,
    so they stop together), which saves that step's state: nothing is cut in half. A second Ctrl-C
    stops at once (the state of the last finished step is saved then)."""

    def __init__(self, ctx: D.DistContext):
        self.ctx, self.requested = ctx, False
        self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print(f"lumix_train: rank {self.ctx.rank}: Ctrl-C: stopping after the step in progress and saving its state "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        return D.any_rank(self.ctx, self.requested)

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.previous)


def train(cfg: RunConfig, ctx: D.DistContext, resume: str | None) -> None:
    from lumix_extension.lumix_core.training import TrainingStopped, read_training_state
    from lumix_training_run import build_run  # imports ComfyUI

    # rank 0 reads the state and sends it: the other ranks (other machines) need not see its file
    state = D.broadcast_object(ctx, read_training_state(resume) if ctx.is_main and resume else None,
                               "sending the training state")
    run = build_run(cfg, ctx, state)
    trainer = run.trainer
    if state is not None:
        log(ctx, f"resumed at step {trainer.step} from {resume}")
    if trainer.step >= cfg.train.steps:
        log(ctx, f"nothing to do: the state is at step {trainer.step} of {cfg.train.steps}")
        return
    micro = D.per_rank_batch(cfg.train.batch_size, ctx.world_size, cfg.train.grad_accumulation)
    log(ctx, f"training steps {trainer.step + 1}..{cfg.train.steps} on {ctx.world_size} process(es) "
             f"({ctx.backend or 'no process group'}, {ctx.device.type}); global batch {cfg.train.batch_size} = "
             f"{ctx.world_size} rank(s) x {micro} x {cfg.train.grad_accumulation} accumulation; "
             f"outputs in {cfg.output_dir}")
    progress = Progress(ctx, trainer.step, cfg.train.steps, cfg.run["progress_every"])
    die = fault_injection(ctx)

    def on_step(metrics):
        run.on_step(metrics)
        progress.on_step(metrics)
        if die is not None:
            die(metrics)

    ctrl_c = CtrlC(ctx)
    try:
        with run.frozen_base(), D.collective_guard(ctx, "training"):
            # Ctrl-C: the state of the last finished step is saved (rank 0) before the run stops
            trainer.run(on_step=on_step, should_stop=ctrl_c.should_stop, interrupts=(KeyboardInterrupt,))
        D.barrier(ctx, "the end of training")
    except (KeyboardInterrupt, TrainingStopped):
        saved = trainer.interrupted
        if saved is not None and saved.state_path is not None:
            log(ctx, f"stopped by Ctrl-C after step {saved.step} of {cfg.train.steps}: saved the resumable state "
                     f"{saved.state_path}; rerun the same command with --resume to continue from there")
        raise KeyboardInterrupt from None
    finally:
        ctrl_c.restore()
        run.close()
    log(ctx, f"done: {trainer.checkpoint_path(final=True)}")
    run.release()  # the DDP wrapper goes before the process group does (see D.shutdown)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_run_config(args.config)
    except RunConfigError as error:
        print(f"lumix_train: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        ctx = D.init_distributed(cfg.run["device"], cfg.run["timeout_s"])
    except D.DistributedSetupError as error:
        print(f"lumix_train: {error}", file=sys.stderr)
        return EXIT_CONFIG
    handle_termination(ctx)
    try:
        D.per_rank_batch(cfg.train.batch_size, ctx.world_size, cfg.train.grad_accumulation)  # before loading FLUX
        if cfg.train.optimizer == "prodigy" and not prodigy_available():
            raise ValueError(PRODIGY_MISSING)
        resume = resume_path(cfg, ctx, args.resume)
        if resume is None:
            check_new_run(cfg, ctx, args.overwrite)
        if ctx.is_main:  # a killed run's half-written files (this run's own names only)
            for path in cfg.files().remove_stale_temporaries():
                print(f"removed a killed run's temporary file {path}", flush=True)
        comfy_models.import_comfyui(ctx.device.type)
        train(cfg, ctx, resume)
        return 0
    except D.PeerFailure as error:
        print(f"lumix_train: {error}", file=sys.stderr, flush=True)
        return EXIT_PEER
    except KeyboardInterrupt:
        print(f"lumix_train: rank {ctx.rank}: stopped by Ctrl-C", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (D.DistributedSetupError, comfy_models.ComfyUINotFound, FileNotFoundError, FileExistsError, ValueError,
            FloatingPointError) as error:
        # ValueError covers the trainer's clear errors (data, checkpoint, resume mismatches); FloatingPointError
        # a diverged run (the last checkpoint is intact)
        print(f"lumix_train: rank {ctx.rank}: {error}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except OSError as error:  # a folder that cannot be written, a full disk: the files written before are intact
        where = f" ({error.filename})" if error.filename else ""
        print(f"lumix_train: rank {ctx.rank}: cannot read or write a file{where}: {error.strerror or error}. "
              "Free space or fix the folder's permissions, then rerun with --resume to continue from the last "
              "saved state.", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    finally:
        D.shutdown(ctx)


if __name__ == "__main__":
    D.exit_process(main())
