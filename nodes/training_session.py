"""One training session, built the same way for both front doors: the LumiX Trainer node and the
command-line trainer (scripts/lumix_training_run.py, one process or torchrun).

A session is (a FLUX MODEL, an encoded dataset, TrainConfig, how to start: from scratch, from a LumiX
checkpoint or from a saved state) -> adapters, the patched trainable model, the Trainer and rank 0's
log. Only what differs between the doors stays with them: where files go, how the user is told
(progress bar or console), Cancel/Ctrl-C, and the process group.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

from ..lumix_core import load_checkpoint
from ..lumix_core.training import LumiXAdapters, RunFiles, TrainConfig, Trainer
from ..lumix_core.training import distributed as D
from ..lumix_core.training.logs import TrainingLog
from ..lumix_core.training.resume import check_training_state
from .flux_model import block_counts, flux_diffusion_model
from .training_validation import Validation, make_validation
from .training_model import (
    compute_dtype, frozen_base, load_for_training, make_denoiser, new_adapters, training_model,
)


@dataclass(frozen=True)
class ValidationSpec:
    """Validation samples: the first `scenes` captions of the dataset at `size` x `size`, `steps` steps
    (nodes/training_validation.py: consistency metrics, and a five-map grid per caption written to
    <run folder>/validation/ and TensorBoard)."""
    vae: object
    scenes: int = 2
    size: int = 256
    steps: int = 12


def start_adapters(model, config: TrainConfig, num_maps: int, *, init_checkpoint: Optional[str] = None,
                   resume_state: Optional[dict] = None, device=None,
                   state_source: str = "the training state") -> LumiXAdapters:
    """The adapters a run starts from, on `device` (default: the model's load device):
    - resume_state: the saved shape (checked against the model and dataset before anything is
      allocated from what the file claims); the values come with Trainer.load_state_dict;
    - init_checkpoint: a LumiX checkpoint's factors (its rank, alpha and map count win over config);
    - otherwise fresh adapters of config.rank and config.alpha drawn from config.seed."""
    dm = flux_diffusion_model(model)
    double, single = block_counts(dm)
    device = device if device is not None else model.load_device
    if resume_state is not None:
        shape = check_training_state(resume_state, hidden_size=dm.hidden_size, double_blocks=double,
                                     single_blocks=single, num_maps=num_maps, source=state_source)
        return LumiXAdapters(shape["hidden_size"], double, single, num_maps=shape["num_maps"], rank=shape["rank"],
                             alpha=shape["alpha"], device=device)
    if init_checkpoint:
        checkpoint = load_checkpoint(init_checkpoint)
        checkpoint.validate_for_model(dm.hidden_size, double, single)
        return LumiXAdapters.from_checkpoint(checkpoint, double, single, device=device)
    return new_adapters(model, config.rank, config.alpha, num_maps, config.seed, device)


@dataclass
class TrainingSession:
    trainer: Trainer
    patched: object                 # the clone of the MODEL that trains (the input MODEL is left as found)
    log: Optional[TrainingLog]      # rank 0's log.jsonl / plot.png / TensorBoard; None on other ranks
    ctx: Optional[D.DistContext]    # the process group (command line), None for one process
    validation: Optional[Validation] = None  # rank 0's, when validation runs: its last_grid is the latest images

    @property
    def adapters(self) -> LumiXAdapters:
        return self.trainer.adapters

    def frozen_base(self) -> contextlib.AbstractContextManager:
        """Wrap the training in this: the shared base model is restored as found afterwards."""
        return frozen_base(self.patched)

    def on_step(self, metrics) -> None:
        """Every rank, after each step. Over several processes the logged loss is the mean over ranks
        (a collective, at the same steps on every rank); rank 0 writes the record. The plot is redrawn
        at each save."""
        config = self.trainer.config
        step = metrics.step
        if self.ctx is not None and self.ctx.distributed:
            logged = step % config.log_every == 0 or (config.validate_every and step % config.validate_every == 0)
            if not logged:
                return
            per_map = [D.mean_over_ranks(self.ctx, x) for x in metrics.per_map]
            loss = D.mean_over_ranks(self.ctx, metrics.loss)
            if self.log is not None:
                record = metrics.record()
                record.update(loss=loss, loss_per_map=per_map, world_size=self.ctx.world_size)
                self.log(record)
        if self.log is not None and (step == config.steps or (config.save_every and step % config.save_every == 0)):
            self.log.plot()

    def close(self) -> None:
        """Redraw the plot and close the log (also after errors: a server must not keep its files open)."""
        if self.log is not None:
            try:
                self.log.plot()
            finally:
                self.log.close()

    def release(self) -> None:
        """Drop the DDP wrapper: it must go before the process group (D.shutdown)."""
        self.trainer.module = self.trainer.adapters


def build_session(model, dataset, config: TrainConfig, files: RunFiles, *, init_checkpoint: Optional[str] = None,
                  resume_state: Optional[dict] = None, ctx: Optional[D.DistContext] = None,
                  validation: Optional[ValidationSpec] = None,
                  state_source: str = "the training state") -> TrainingSession:
    """Everything a run needs, in the order both front doors need it: the starting adapters (a
    resume state checked first), the patched model loaded and made trainable, the dataset in the
    model's latent space, validation (rank 0 only), the Trainer (DDP over the adapters when `ctx` is
    distributed; the saved state loaded when resuming) and rank 0's log, continued from the resumed
    step. Call with inference mode off and gradients on; train inside `session.frozen_base()`."""
    device = ctx.device if ctx is not None else model.load_device
    is_main = ctx.is_main if ctx is not None else True
    adapters = start_adapters(model, config, dataset.num_maps, init_checkpoint=init_checkpoint,
                              resume_state=resume_state, device=device, state_source=state_source)
    patched = training_model(model, adapters, config.gradient_checkpointing)
    load_for_training(patched)  # (the base is made trainable inside session.frozen_base(), and restored after it)
    data = dataset.with_latent_transform(patched.model.process_latent_in)
    validate = None
    if config.validate_every and validation is not None and is_main:  # other ranks wait in the next all-reduce
        validate = make_validation(patched, validation.vae, dataset, validation.scenes, validation.size,
                                   validation.steps, folder=files.folder)
    trainer = Trainer(make_denoiser(patched), adapters, data, config,
                      rank=ctx.rank if ctx is not None else 0, world_size=ctx.world_size if ctx is not None else 1,
                      is_main=is_main, ddp_module=D.wrap_adapters(adapters, ctx) if ctx is not None else None,
                      device=device, compute_dtype=compute_dtype(patched), output_dir=files.folder, name=files.name,
                      validate=validate, final_checkpoint=files.final_path)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    # the log continues from the resumed step: later records (written again now) and a torn line are dropped
    log = TrainingLog(files.folder, keep_until=trainer.step) if is_main else None
    if log is not None and not (ctx is not None and ctx.distributed):
        trainer.log = log  # one process: the Trainer logs each step itself (a step cut short by Cancel too)
    if validate is not None:
        validate.log = log  # its grids go to TensorBoard too
    return TrainingSession(trainer, patched, log, ctx, validate)
