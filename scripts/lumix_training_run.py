"""One rank's training run for the command-line trainer, assembled from the same pieces as the
LumiX Trainer node (lumix_core.training + nodes/training_model.py): the dataset encoded once into
the cache, FLUX from ComfyUI patched with trainable adapters, the Trainer with the adapters under
DDP, and rank 0's log (the node's TrainingLog: log.jsonl, plot.png, TensorBoard when installed).
Imports ComfyUI: call after lumix_comfy_models.import_comfyui.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

import lumix_comfy_models as comfy_models
from lumix_extension.lumix_core import load_checkpoint
from lumix_extension.lumix_core.training import LumiXAdapters, Trainer, encode_dataset, scan_dataset
from lumix_extension.lumix_core.training import distributed as D
from lumix_extension.lumix_core.training.cache import REFERENCE_TOKENIZER, reference_text_identity
from lumix_extension.lumix_core.training.logs import TrainingLog
from lumix_extension.lumix_core.training.resume import check_training_state
from lumix_extension.lumix_core.training.run_config import RunConfig


class LazyEncoders:
    """The VAE and the text encoders, loaded on first use only: a cache that already holds every
    scene never loads them (they need not fit in memory beside FLUX)."""

    def __init__(self, cfg: RunConfig):
        self.cfg, self.vae, self.clip = cfg, None, None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            self.vae = comfy_models.load_vae(self.cfg.model["vae"])
        return self.vae.encode(images)

    def encode_text(self, caption: str):
        if self.clip is None:
            self.clip = comfy_models.load_text_encoders(self.cfg.model["clip_l"], self.cfg.model["t5xxl"])
            for option, value in REFERENCE_TOKENIZER.items():  # T5-XXL padded to 512 tokens, as the reference
                self.clip.set_tokenizer_option(option, value)
        cond = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(caption))
        return cond[0][0][0], cond[0][1]["pooled_output"][0]

    def release(self) -> None:
        self.vae = self.clip = None


@dataclass
class TrainingRun:
    trainer: Trainer
    ctx: D.DistContext
    log: TrainingLog | None
    log_every: int
    validate_every: int
    save_every: int
    frozen_base: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)

    def on_step(self, metrics) -> None:
        """Every rank, after each step: the loss averaged over ranks (a collective, at the same steps
        on every rank), then rank 0 writes the log record and redraws the plot at each save."""
        step, total = metrics.step, self.trainer.config.steps
        logged = step % self.log_every == 0 or (self.validate_every and step % self.validate_every == 0)
        if not logged:
            return
        per_map = [D.mean_over_ranks(self.ctx, x) for x in metrics.per_map] if self.ctx.distributed else metrics.per_map
        loss = D.mean_over_ranks(self.ctx, metrics.loss)
        if self.log is None:
            return
        record = metrics.record()
        record.update(loss=loss, loss_per_map=per_map, world_size=self.ctx.world_size)
        self.log(record)
        if step == total or (self.save_every and step % self.save_every == 0):
            self.log.plot()

    def close(self) -> None:
        if self.log is not None:
            self.log.plot()
            self.log.close()

    def release(self) -> None:
        """Drop the DDP wrapper now: it must be destroyed before the process group (D.shutdown);
        left to the garbage collector at exit, it sometimes aborts a finished rank."""
        self.trainer.module = self.trainer.adapters


def build_run(cfg: RunConfig, ctx: D.DistContext, resume_state: dict | None) -> TrainingRun:
    from lumix_extension.nodes.training_model import (
        compute_dtype, frozen_base, load_for_training, make_denoiser, new_adapters, prepare_base_for_autograd,
        training_model,
    )

    train = cfg.train
    scan = scan_dataset(cfg.data["root"])
    encoders = LazyEncoders(cfg)

    def encode():
        return encode_dataset(scan, encoders.encode_images, encoders.encode_text, str(cfg.cache_dir),
                              train.resolution, train.flip, encoder_id=cfg.encoder_id(),
                              text_identity=reference_text_identity)

    dataset = D.in_turns(ctx, encode, "encoding the dataset into the cache")
    encoders.release()
    if ctx.is_main:
        print(f"dataset: {dataset.summary}", flush=True)

    patcher = comfy_models.load_flux(cfg.model["flux"], cfg.model["weight_dtype"], cfg.model["flux_config"] or None)
    if resume_state is not None:  # checked against this model before anything is allocated from it
        double, single = _block_counts(patcher)
        hidden = patcher.get_model_object("diffusion_model").hidden_size
        shape = check_training_state(resume_state, hidden_size=hidden, double_blocks=double, single_blocks=single,
                                     num_maps=dataset.num_maps, source="the training state")
        adapters = LumiXAdapters(shape["hidden_size"], *_block_counts(patcher), num_maps=shape["num_maps"],
                                 rank=shape["rank"], alpha=shape["alpha"], device=ctx.device)
    elif cfg.model["init_checkpoint"]:
        checkpoint = load_checkpoint(comfy_models.model_path("lumix", cfg.model["init_checkpoint"], "init_checkpoint"))
        adapters = LumiXAdapters.from_checkpoint(checkpoint, *_block_counts(patcher)).to(ctx.device)
    else:
        adapters = new_adapters(patcher, train.rank, train.alpha, dataset.num_maps, device=ctx.device)
    patched = training_model(patcher, adapters, train.gradient_checkpointing)
    load_for_training(patched)
    prepare_base_for_autograd(patched)
    data = dataset.with_latent_transform(patched.model.process_latent_in)
    validate = None
    if train.validate_every and ctx.is_main:  # rank 0 samples; the others wait in the next all-reduce
        # TODO(training): _validation is private to nodes/training_nodes.py; a public name (e.g.
        # validation_callback) there would let this script stop reaching into the node module.
        from lumix_extension.nodes.training_nodes import _validation

        v = cfg.validation
        validate = _validation(patched, comfy_models.load_vae(cfg.model["vae"]), dataset, v["scenes"], v["size"],
                               v["steps"])
    trainer = Trainer(make_denoiser(patched), adapters, data, train, rank=ctx.rank, world_size=ctx.world_size,
                      is_main=ctx.is_main, ddp_module=D.wrap_adapters(adapters, ctx), device=ctx.device,
                      compute_dtype=compute_dtype(patched), output_dir=str(cfg.output_dir),
                      name=cfg.output["name"], log=None, validate=validate)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    # the log continues from the resumed step: later records (written again now) and a torn line are dropped
    log = TrainingLog(str(cfg.output_dir), keep_until=trainer.step) if ctx.is_main else None
    if log is not None and log.repair_note:
        print(log.repair_note, flush=True)
    return TrainingRun(trainer, ctx, log, train.log_every, train.validate_every, train.save_every,
                       frozen_base(patched))


def _block_counts(patcher) -> tuple[int, int]:
    dm = patcher.get_model_object("diffusion_model")
    return len(dm.double_blocks), len(dm.single_blocks)
