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
from .config import BEST_METRICS, TrainConfig
from .ema import AdapterEMA
from .files import STATE_FORMAT, STATE_VERSION, RunFiles, write_lora_checkpoint, write_training_state
from .objective import Denoiser, LossResult, TrainingExample, flow_matching_loss, make_flow_batch
from .optim import build_optimizer, set_learning_rate
from .order import DataOrder, derived_seed
from .prefetch import Prefetcher
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
    With config.ema_decay > 0 every checkpoint gets an `_ema` twin (the main rank keeps the EMA);
    config.keep_last prunes older step checkpoints; config.keep_best keeps `<name>_best.safetensors`.
    log: optional callable(record dict), called on the main rank only.
    validate: optional callable(step) -> dict of metrics, called on the main rank every validate_every,
    with the EMA weights swapped into the adapters when EMA is on.
    notes: what the user should be told (e.g. a resumed state without EMA); the host shows them.
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
        # the EMA only where it is used (validation, files): the main rank; replicas are equal anyway
        self.ema = AdapterEMA(adapters, config.ema_decay) if config.ema_decay > 0 and self.is_main else None
        self.best: Optional[dict] = None  # {"metric", "value", "step"} of <name>_best.safetensors
        self.notes: list[str] = []
        self._prefetcher: Optional[Prefetcher] = None  # set while run() prepares data ahead
        self.prune_after = 0  # step checkpoints up to this step are never pruned (a run from before keep_last)

    # -- one optimisation step, in two halves ------------------------------------------------------
    def examples_for(self, step: int, assignments) -> tuple[list[TrainingExample], list[torch.Generator]]:
        cfg = self.config
        examples, generators = [], []
        for a in assignments:
            data_gen = torch.Generator().manual_seed(derived_seed(cfg.seed, step, a.position, DATA_STREAM))
            examples.append(self.data.example(a.index, data_gen, cfg))
            generators.append(torch.Generator().manual_seed(derived_seed(cfg.seed, step, a.position, NOISE_STREAM)))
        return examples, generators

    def _prepare_micro_batch(self, key: tuple[int, int]):
        """The prefetch thread's work: the examples of micro-step m of `step` (reads and crops only)."""
        step, m = key
        return self.examples_for(step, self.order.micro_batches(step)[m])

    def compute_loss(self, step: int, assignments, prepared=None) -> LossResult:
        """Forward pass of one micro-batch (through the DDP wrapper when there is one). `prepared`:
        examples_for(step, assignments) made ahead (by the prefetch thread)."""
        examples, generators = prepared if prepared is not None else self.examples_for(step, assignments)
        batch = make_flow_batch(examples, generators, self.config, self.device, self.compute_dtype)
        return self.module(flow_matching_loss, self.denoiser, batch, self.data.num_maps)

    def accumulate_gradients(self) -> tuple[float, torch.Tensor]:
        """Forward and backward of every micro-batch of the current step; returns (loss, per-map loss)."""
        micro = self.order.micro_batches(self.step)
        total, per_map = 0.0, []
        for m, assignments in enumerate(micro):
            last = m == len(micro) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.module, "no_sync") else self.module.no_sync()
            prepared = self._prefetcher.take((self.step, m)) if self._prefetcher is not None else None
            with sync:
                result = self.compute_loss(self.step, assignments, prepared)
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
        if self.ema is not None:
            self.ema.update(self.adapters)
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
        prefetcher = None
        if cfg.prefetch and self.step < until:  # micro-steps (step, m) in the order the loop takes them
            keys = ((s, m) for s in range(self.step, until) for m in range(cfg.grad_accumulation))
            prefetcher = Prefetcher(self._prepare_micro_batch, keys, cfg.prefetch * cfg.grad_accumulation)
        self._prefetcher = prefetcher
        try:
            return self._run(until, on_step, should_stop, interrupts)
        finally:  # every exit path: the end, TrainingStopped, an interrupt, an error
            self._prefetcher = None
            if prefetcher is not None:
                prefetcher.close()

    def _run(self, until, on_step, should_stop, interrupts) -> list[StepMetrics]:
        cfg = self.config
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
                    metrics.extra["validation"] = self.run_validation()
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
        except TrainingStopped:
            raise
        except Exception:
            # any other failure (a bad cache file, validation refusing a NaN sample, a diverged step): the last
            # finished step is consistent, so its state is kept for a resume, then the error goes on
            self.optimizer.zero_grad(set_to_none=True)
            if pending is not None:
                self._log(pending, force=True)
            if self.step > 0 and self.saved_state_step != self.step:  # (nothing to keep before the first step)
                try:
                    self.save_state()
                except Exception:  # e.g. the same full disk: the original error says more
                    pass
            raise
        final = self.checkpoint_path(final=True)
        if self.step == cfg.steps and self.is_main and final is not None and not all(
                os.path.exists(p) for p in (final, self.ema_path(final)) if p is not None):
            self.save_checkpoint(final=True)  # the last step was interrupted before its final save
        return history

    def run_validation(self) -> dict:
        """validate(step) on the EMA weights when EMA is on (the raw weights are restored exactly
        afterwards, also on an exception); then the best checkpoint when keep_best."""
        weights = self.ema.swapped_in(self.adapters) if self.ema is not None else contextlib.nullcontext()
        with weights:
            result = self.validate(self.step)
            if self.config.keep_best:
                self._keep_best(result)
        return result

    def _keep_best(self, result) -> None:
        cfg = self.config
        value = result.get(cfg.best_metric) if isinstance(result, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return  # a missing or NaN metric never wins
        value = float(value)
        if self.best is not None and self.best["metric"] == cfg.best_metric:
            lower = BEST_METRICS[cfg.best_metric] == "lower"
            if not (value < self.best["value"] if lower else value > self.best["value"]):
                return
        if self.files is not None:  # the adapters hold the EMA weights here when EMA is on
            write_lora_checkpoint(self.files.best, self.adapters, cfg, self.step, {
                "best_metric": cfg.best_metric, "best_value": repr(value), "best_step": self.step,
                "best_better": BEST_METRICS[cfg.best_metric],
                "weights": "ema" if self.ema is not None else "raw", **self._ema_metadata()})
        self.best = {"metric": cfg.best_metric, "value": value, "step": self.step}

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

    def ema_path(self, checkpoint: str) -> Optional[str]:
        """The EMA twin of a checkpoint path (None when EMA is off): <name>_ema.safetensors beside the
        final checkpoint, <name>_step<N>_ema.safetensors beside a step checkpoint."""
        if self.ema is None:
            return None
        if self.files is None:  # only a final_checkpoint path was given
            return os.path.join(os.path.dirname(checkpoint), f"{self.name}_ema.safetensors")
        return self.files.step_ema(self.step) if checkpoint == self.files.step_checkpoint(self.step) else \
            self.files.final_ema

    def _ema_metadata(self) -> dict:
        if self.ema is None:
            return {}
        return {"ema_decay": repr(self.ema.decay), "ema_updates": self.ema.updates,
                "ema_decay_warmup": "min(ema_decay, (1 + n) / (10 + n)) at update n"}

    def state_path(self) -> Optional[str]:
        return None if self.files is None else self.files.state

    def save_checkpoint(self, final: bool = False) -> Optional[str]:
        """The adapters (and their EMA twin when EMA is on); after a step checkpoint, the run's older
        step checkpoints beyond the newest keep_last are removed."""
        path = self.checkpoint_path(final)
        if not self.is_main or path is None:
            return None
        write_lora_checkpoint(path, self.adapters, self.config, self.step, {"weights": "raw"})
        if self.ema is not None:
            with self.ema.swapped_in(self.adapters):
                write_lora_checkpoint(self.ema_path(path), self.adapters, self.config, self.step,
                                      {"weights": "ema", **self._ema_metadata()})
        if not final and self.files is not None:
            self.files.prune_step_checkpoints(self.config.keep_last, self.step, after=self.prune_after)
        return path

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
                "ema": self.ema.state_dict() if self.ema is not None else None, "best": self.best,
                "prune_after": self.prune_after,
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
        self._load_ema_and_best(state)
        kept = state.get("prune_after", 0)
        self.prune_after = kept if isinstance(kept, int) and not isinstance(kept, bool) and 0 <= kept <= self.step else 0
        self._note_changed_settings(state["config"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def _note_changed_settings(self, saved: dict) -> None:
        """What the user changed since the state was saved that shapes the rest of the run: said, not refused."""
        if self.is_main and "keep_last" not in saved and self.config.keep_last:
            # a run from before keep_last existed: the checkpoints it wrote were never meant to be pruned
            self.prune_after = self.step
            self.notes.append(f"this run was saved before keep_last existed: its step checkpoints up to step "
                              f"{self.step} are all kept; later ones follow keep_last = {self.config.keep_last}")
        schedule = ("steps", "learning_rate", "warmup_steps", "lr_schedule", "lr_min_ratio")
        changed = [f"{k} {saved[k]!r} -> {getattr(self.config, k)!r}" for k in schedule
                   if k in saved and saved[k] != getattr(self.config, k)]
        if changed and self.is_main:
            self.notes.append("the learning-rate schedule differs from the saved run's (" + ", ".join(changed) +
                              "): the remaining steps follow the new one")

    def _load_ema_and_best(self, state: dict) -> None:
        cfg, saved_ema, best = self.config, state.get("ema"), state.get("best")
        if self.ema is not None:
            if saved_ema is None:  # a state from before EMA existed, or saved with ema_decay 0
                self.ema = AdapterEMA(self.adapters, cfg.ema_decay)
                self.notes.append(f"the training state has no EMA of the adapters (saved with ema_decay 0 or by an "
                                  f"older version): the EMA starts from the resumed weights at step {self.step}")
            else:
                self.ema.load_state_dict(saved_ema)
        elif saved_ema is not None and self.is_main:
            self.notes.append("the training state holds an EMA of the adapters, but ema_decay is 0 now: it is dropped "
                              "and no *_ema files are written")
        self.best = None
        if best is not None and best.get("metric") == cfg.best_metric:
            self.best = dict(best)
        elif best is not None and self.is_main:
            self.notes.append(f"the best checkpoint so far was chosen by {best.get('metric')}; this run compares "
                              f"{cfg.best_metric}, starting afresh (the next validation overwrites "
                              f"{self.name}_best.safetensors)")
