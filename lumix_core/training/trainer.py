"""The training loop: data order -> flow-matching loss -> backward -> optimiser step, with logs,
checkpoints and a resumable state. Host-free: the model is a `denoiser` callable the host builds
(ComfyUI's FLUX patched with these adapters), the data any `SceneSource`.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch

from .adapters import LumiXAdapters
from .config import TrainConfig
from .files import STATE_FORMAT, STATE_VERSION, RunFiles, write_lora_checkpoint, write_training_state
from .objective import Denoiser, LossResult, TrainingExample, flow_matching_loss, make_flow_batch
from .optim import build_optimizer, set_learning_rate
from .order import DataOrder, derived_seed
from .resume import check_training_state

# Streams derived from (seed, step, position, stream): independent of rank, batch split and resume.
DATA_STREAM, NOISE_STREAM = 1, 2


class SceneSource(Protocol):
    """What the trainer needs from a dataset."""
    num_maps: int

    def __len__(self) -> int: ...

    def example(self, index: int, generator: torch.Generator, config: TrainConfig) -> TrainingExample:
        """Scene `index` ready for the model: crop, flip and caption dropout drawn from `generator`."""


class TrainingStopped(Exception):
    """Raised by `Trainer.run` when `should_stop` returned True; a resumable state was saved."""

    def __init__(self, step: int, state_path: Optional[str]):
        super().__init__(f"training stopped at step {step}" + (f"; resumable state in {state_path}" if state_path else ""))
        self.step, self.state_path = step, state_path


@dataclass
class Interrupted:
    """What `Trainer.run` saved when an interrupt exception went through it (Trainer.interrupted)."""
    step: int                   # optimisation steps done, and saved
    state_path: Optional[str]   # the resumable state (None: this rank writes no files)
    where: str                  # "step", "validation", "progress" (the on_step callback) or "save"


@dataclass
class StepMetrics:
    step: int                   # optimisation steps done after this one
    loss: float
    per_map: list[float]
    lr: float
    grad_norm: float
    seconds: float
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"step": self.step, "loss": self.loss, "loss_per_map": self.per_map, "lr": self.lr,
                "grad_norm": self.grad_norm, "seconds": self.seconds, **self.extra}


class Trainer:
    """One rank's trainer.

    denoiser: the patched model (adapters already installed in it); data: a SceneSource.
    ddp_module: optional wrapper of `adapters` (e.g. DistributedDataParallel); the forward pass runs
    through it so that it syncs gradients. is_main gates every file write (checkpoints, state, logs).
    output_dir/name: where `<name>_step<N>.safetensors`, `<name>.safetensors` (final) and
    `<name>.state.pt` go (final_checkpoint: another path for the final file); see files.RunFiles.
    log: optional callable(record dict), called on the main rank only.
    validate: optional callable(step) -> dict of metrics, called on the main rank every validate_every.
    """

    def __init__(self, denoiser: Denoiser, adapters: LumiXAdapters, data: SceneSource, config: TrainConfig, *,
                 rank: int = 0, world_size: int = 1, is_main: Optional[bool] = None, ddp_module=None,
                 device=None, compute_dtype: torch.dtype = torch.float32, output_dir: Optional[str] = None,
                 name: str = "lumix_lora", log: Optional[Callable[[dict], None]] = None,
                 validate: Optional[Callable[[int], dict]] = None, final_checkpoint: Optional[str] = None):
        if data.num_maps != adapters.num_maps:
            raise ValueError(f"the dataset has {data.num_maps} maps per scene but the adapters mix "
                             f"{adapters.num_maps}; train adapters with num_maps={data.num_maps}")
        # rank and alpha are the adapters' (a fine-tuned checkpoint fixes them): the metadata says so
        config = config.replace(rank=adapters.rank, alpha=adapters.alpha)
        self.denoiser, self.adapters, self.data, self.config = denoiser, adapters, data, config
        self.rank, self.world_size = rank, world_size
        self.is_main = (rank == 0) if is_main is None else is_main
        self.module = ddp_module if ddp_module is not None else adapters
        self.device = device if device is not None else next(adapters.parameters()).device
        self.compute_dtype = compute_dtype
        self.output_dir, self.name, self.log, self.validate = output_dir, name, log, validate
        self.final_checkpoint = final_checkpoint
        self.files = RunFiles(output_dir, name, final_checkpoint or "") if output_dir is not None else None
        self.interrupted: Optional[Interrupted] = None
        self.saved_state_step: Optional[int] = None
        self.order = DataOrder(len(data), config.batch_size, config.seed, rank, world_size, config.grad_accumulation)
        self.optimizer = build_optimizer(adapters.parameters(), config)
        self.step = 0  # optimisation steps done

    # -- one optimisation step, in two halves ------------------------------------------------------
    def examples_for(self, step: int, assignments) -> tuple[list[TrainingExample], list[torch.Generator]]:
        cfg = self.config
        examples, generators = [], []
        for a in assignments:
            data_gen = torch.Generator().manual_seed(derived_seed(cfg.seed, step, a.position, DATA_STREAM))
            examples.append(self.data.example(a.index, data_gen, cfg))
            generators.append(torch.Generator().manual_seed(derived_seed(cfg.seed, step, a.position, NOISE_STREAM)))
        return examples, generators

    def compute_loss(self, step: int, assignments) -> LossResult:
        """Forward pass of one micro-batch (through the DDP wrapper when there is one)."""
        examples, generators = self.examples_for(step, assignments)
        batch = make_flow_batch(examples, generators, self.config, self.device, self.compute_dtype)
        return self.module(flow_matching_loss, self.denoiser, batch, self.data.num_maps)

    def accumulate_gradients(self) -> tuple[float, torch.Tensor]:
        """Forward and backward of every micro-batch of the current step; returns (loss, per-map loss)."""
        micro = self.order.micro_batches(self.step)
        total, per_map = 0.0, []
        for m, assignments in enumerate(micro):
            last = m == len(micro) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.module, "no_sync") else self.module.no_sync()
            with sync:
                result = self.compute_loss(self.step, assignments)
                (result.loss / len(micro)).backward()
            total += result.loss.item() / len(micro)
            per_map.append(result.per_map)
        return total, torch.stack(per_map).nanmean(0)

    def optimizer_step(self) -> tuple[float, float]:
        """Clip, warm-up, step, zero the gradients; returns (learning rate, gradient norm before clipping)."""
        params = [p for p in self.adapters.parameters() if p.requires_grad]
        if self.config.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"the gradient became {norm} at step {self.step + 1}: training diverged. Lower the learning "
                "rate, keep gradient clipping on, or train in a wider dtype; the last checkpoint is intact.")
        lr = set_learning_rate(self.optimizer, self.config, self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lr, norm

    def train_step(self) -> StepMetrics:
        start = time.perf_counter()
        loss, per_map = self.accumulate_gradients()
        lr, norm = self.optimizer_step()
        return StepMetrics(self.step, loss, [float(x) for x in per_map], lr, norm, time.perf_counter() - start)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, until: Optional[int] = None, on_step: Optional[Callable[[StepMetrics], None]] = None,
            should_stop: Optional[Callable[[], bool]] = None, interrupts: tuple = ()) -> list[StepMetrics]:
        """Train up to step `until` (config.steps by default). Saves checkpoints every save_every and
        at config.steps; on should_stop() saves a resumable state and raises TrainingStopped.

        interrupts: exception types that mean "the user cancelled" (ComfyUI's InterruptProcessingException,
        KeyboardInterrupt), wherever they are raised: in a step, in validation, in on_step (ComfyUI raises
        it inside the progress-bar update) or while saving. The state of the last complete step is then
        saved (self.interrupted says what), and the exception goes on (the host marks the run cancelled)."""
        cfg = self.config
        until = cfg.steps if until is None else until
        history = []
        where = "step"
        pending: Optional[StepMetrics] = None  # a finished step whose log record is not written yet
        try:
            while self.step < until:
                if should_stop is not None and should_stop():
                    path = self.save_state() if self.saved_state_step != self.step else self.state_path()
                    self.interrupted = Interrupted(self.step, path if self.is_main else None, "between steps")
                    raise TrainingStopped(self.step, self.interrupted.state_path)
                where = "step"
                metrics = self.train_step()
                pending = metrics
                if self.validate is not None and self.is_main and cfg.validate_every and self.step % cfg.validate_every == 0:
                    where = "validation"
                    metrics.extra["validation"] = self.validate(self.step)
                self._log(metrics)
                pending = None
                history.append(metrics)
                where = "save"
                if self.step == cfg.steps:
                    self.save_checkpoint(final=True)
                    self.save_state()
                elif cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                    self.save_state()
                if on_step is not None:
                    where = "progress"
                    on_step(metrics)
        except interrupts:
            self.optimizer.zero_grad(set_to_none=True)  # a step cut short leaves partial gradients
            if pending is not None:
                self._log(pending, force=True)
            path = self.save_state() if self.saved_state_step != self.step else self.state_path()
            self.interrupted = Interrupted(self.step, path if self.is_main else None, where)
            raise
        final = self.checkpoint_path(final=True)
        if self.step == cfg.steps and self.is_main and final is not None and not os.path.exists(final):
            self.save_checkpoint(final=True)  # the last step was interrupted before its final save
        return history

    def _log(self, metrics: StepMetrics, force: bool = False) -> None:
        if self.is_main and self.log is not None and (
                force or self.step % self.config.log_every == 0 or "validation" in metrics.extra):
            self.log(metrics.record())

    # -- files (main rank only) ------------------------------------------------------------------
    def checkpoint_path(self, final: bool = False) -> Optional[str]:
        if final and self.final_checkpoint is not None:
            return self.final_checkpoint
        if self.files is None:
            return None
        return self.files.final_path if final else self.files.step_checkpoint(self.step)

    def state_path(self) -> Optional[str]:
        return None if self.files is None else self.files.state

    def save_checkpoint(self, final: bool = False) -> Optional[str]:
        path = self.checkpoint_path(final)
        if not self.is_main or path is None:
            return None
        return write_lora_checkpoint(path, self.adapters, self.config, self.step)

    def save_state(self) -> Optional[str]:
        path = self.state_path()
        if not self.is_main or path is None:
            return None
        write_training_state(path, self.state_dict())
        self.saved_state_step = self.step
        return path

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly: adapters, optimiser, step (which is
        also the data position: see DataOrder), the config, and the torch RNG states."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "step": self.step,
                "adapters": {k: v.detach().cpu().clone() for k, v in self.adapters.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "config": self.config.to_dict(),
                "data": {"num_scenes": len(self.data), "next_step": self.step}, "rng": rng,
                "shape": {"num_maps": self.adapters.num_maps, "rank": self.adapters.rank,
                          "hidden_size": self.adapters.hidden_size, "alpha": self.adapters.alpha}}

    def load_state_dict(self, state: dict) -> None:
        a = self.adapters
        shape = check_training_state(state, hidden_size=a.hidden_size, double_blocks=a.counts["double_blocks"],
                                     single_blocks=a.counts["single_blocks"], num_maps=self.data.num_maps)
        mine = {"num_maps": a.num_maps, "rank": a.rank, "hidden_size": a.hidden_size, "alpha": a.alpha}
        if shape != mine:
            raise ValueError(f"the training state is for adapters {shape}, this run has {mine}; resume with the "
                             "same rank, alpha, map count and model")
        changed = {k: (state["config"].get(k), v) for k, v in self.config.to_dict().items()
                   if k in ("seed", "batch_size", "grad_accumulation") and state["config"].get(k) != v}
        if changed:
            raise ValueError(f"resuming with changed data settings {changed} (saved, now) would not continue the "
                             "same run; keep seed, batch_size and grad_accumulation as saved")
        if state["data"]["num_scenes"] != len(self.data):
            raise ValueError(f"the training state was made with {state['data']['num_scenes']} scenes, the dataset "
                             f"now has {len(self.data)}; resume on the same dataset")
        with torch.no_grad():
            self.adapters.load_state_dict(state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.saved_state_step = self.step
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
