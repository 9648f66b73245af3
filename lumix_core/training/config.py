"""Every training setting in one dataclass, with the paper's values where the paper states them.

Kept flat and JSON-serialisable: it is written into checkpoint metadata and resume states, and the
command-line trainer reads it from a config file (`TrainConfig.from_dict`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

TIMESTEP_SAMPLINGS = ("logit_normal", "shifted_uniform")
OPTIMIZERS = ("adamw", "prodigy")


@dataclass
class TrainConfig:
    # adapters
    rank: int = 8
    alpha: float = 1.0
    # optimisation
    steps: int = 1000
    batch_size: int = 1            # scenes per optimisation step, over all ranks and micro-steps
    grad_accumulation: int = 1     # micro-steps per optimisation step
    optimizer: str = "adamw"       # "prodigy" as the paper (lr 1.0), needs the prodigyopt package
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0     # 0 turns clipping off
    # objective
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    guidance: float = 1.0          # FLUX guidance embed during training (x-flux uses 1.0)
    held_map_probability: float = 0.0   # chance that a scene holds a random subset of maps clean at t = 0
    caption_dropout: float = 0.0   # chance that a scene trains with the empty caption
    # data
    resolution: int = 512          # crop side in pixels (a multiple of 16)
    flip: bool = False             # random horizontal flip (the normal map's x is negated)
    seed: int = 0
    # model
    gradient_checkpointing: bool = True
    # output
    save_every: int = 500          # 0: only at the end
    validate_every: int = 0        # 0: never
    log_every: int = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(ok, message):
            if not ok:
                raise ValueError(f"training setting: {message}")
        need(self.rank >= 1, f"rank must be at least 1, got {self.rank}")
        need(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        need(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        need(self.grad_accumulation >= 1, f"grad_accumulation must be at least 1, got {self.grad_accumulation}")
        need(self.batch_size % self.grad_accumulation == 0,
             f"batch_size {self.batch_size} must be a multiple of grad_accumulation {self.grad_accumulation}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        need(self.timestep_sampling in TIMESTEP_SAMPLINGS,
             f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {self.timestep_sampling!r}")
        need(self.logit_std > 0, f"logit_std must be positive, got {self.logit_std}")
        need(0.0 <= self.held_map_probability <= 1.0, f"held_map_probability must be in 0..1, got {self.held_map_probability}")
        need(0.0 <= self.caption_dropout <= 1.0, f"caption_dropout must be in 0..1, got {self.caption_dropout}")
        need(self.resolution >= 16 and self.resolution % 16 == 0,
             f"resolution must be a positive multiple of 16, got {self.resolution}")
        need(self.warmup_steps >= 0 and self.max_grad_norm >= 0 and self.save_every >= 0
             and self.validate_every >= 0 and self.log_every >= 1,
             "warmup_steps, max_grad_norm, save_every, validate_every must be >= 0 and log_every >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
