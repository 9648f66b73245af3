"""One rank's training run for the command-line trainer: the dataset encoded once into the cache
(rank by rank; the encoders load only for what the cache lacks), FLUX loaded from its file through
ComfyUI, then the same training session as the LumiX Trainer node (nodes/training_session.py:
adapters, patched model, Trainer with DDP over the adapters, rank 0's log).
Imports ComfyUI: call after lumix_comfy_models.import_comfyui.
"""
from __future__ import annotations

import errno

import torch

import lumix_comfy_models as comfy_models
from lumix_extension.lumix_core.training import encode_dataset, scan_dataset
from lumix_extension.lumix_core.training import distributed as D
from lumix_extension.lumix_core.training.cache import REFERENCE_TOKENIZER, text_identity
from lumix_extension.lumix_core.training.encoder_identity import encoder_id, fingerprint_file
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


ENCODER_FILES = (("vae", "vae"), ("clip_l", "text_encoders"), ("t5xxl", "text_encoders"))  # [model] key, folder


def cache_identity(cfg: RunConfig):
    """(latent encoder id, text encoder id, text_identity) for the dataset cache, as the LumiX Training
    Dataset node keys it, from the encoder files (a few sampled rows each) and FLUX's tokenizer, without
    loading any encoder."""
    parts = []
    for key, folder in ENCODER_FILES:
        path = comfy_models.model_path(folder, cfg.model[key], key)
        try:
            parts.append((key, fingerprint_file(path)))
        except OSError as exc:
            raise ValueError(f"[model] {key} = {path}: cannot read it to key the dataset cache "
                             f"({exc.strerror or type(exc).__name__})") from None
    tokenizer = comfy_models.flux_tokenizer()

    def identity(caption: str) -> str:  # the tokens the loaded CLIP makes with REFERENCE_TOKENIZER set
        return text_identity(tokenizer.tokenize_with_weights(caption, False, tokenizer_options=dict(REFERENCE_TOKENIZER)))
    return encoder_id(parts[:1]), encoder_id(parts[1:]), identity


def _unwritable_cache(cfg: RunConfig, exc: OSError) -> str:
    return (f"the dataset cache {cfg.cache_dir} cannot be written ({exc.strerror}): the dataset folder may be read-only "
            "or shared; set [data] cache_dir to a folder you can write (the node's cache sits in the dataset folder "
            "by default, so either finds the other's entries only there)")


def build_run(cfg: RunConfig, ctx: D.DistContext, resume_state: dict | None):
    """The dataset encoded (or found) in the cache, rank by rank, then the session the node builds too."""
    from lumix_extension.nodes.training_session import ValidationSpec, build_session

    train = cfg.train
    scan = scan_dataset(cfg.data["root"])
    encoders = LazyEncoders(cfg)

    image_id, text_id, identity = cache_identity(cfg)

    def encode():
        return encode_dataset(scan, encoders.encode_images, encoders.encode_text, str(cfg.cache_dir),
                              train.resolution, train.flip, encoder_id=image_id, text_encoder_id=text_id,
                              text_identity=identity)

    try:
        dataset = D.in_turns(ctx, encode, "encoding the dataset into the cache")
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):  # not permission: a full disk, a bad file
            raise
        raise ValueError(_unwritable_cache(cfg, exc)) from None
    encoders.release()
    if ctx.is_main:
        print(f"dataset: {dataset.summary}", flush=True)

    patcher = comfy_models.load_flux(cfg.model["flux"], cfg.model["weight_dtype"], cfg.model["flux_config"] or None)
    init = comfy_models.model_path("lumix", cfg.model["init_checkpoint"], "init_checkpoint") \
        if cfg.model["init_checkpoint"] and resume_state is None else None
    validation = None
    if train.validate_every and ctx.is_main:  # rank 0 samples; the others wait in the next all-reduce
        v = cfg.validation
        validation = ValidationSpec(comfy_models.load_vae(cfg.model["vae"]), v["scenes"], v["size"], v["steps"])
    session = build_session(patcher, dataset, train, cfg.files(), init_checkpoint=init, resume_state=resume_state,
                            ctx=ctx, validation=validation)
    if session.log is not None:
        for note in [session.log.repair_note] + session.trainer.notes:
            if note:
                print(note, flush=True)
    return session
