"""Every training setting in one schema (type, range, default, meaning), and the dataclass built from it.

The schema (`SETTINGS`) is shared by the LumiX Trainer node (its widgets take their ranges from it)
and the command-line trainer's [train] table (`TrainConfig.from_dict`): one set of rules, whichever
way a run is started. Ranges are those the project's own loader accepts for what training writes
(rank and alpha: lumix_core.checkpoint), so a run never trains for hours into a file it then refuses.
Kept flat and JSON-serialisable: it is written into checkpoint metadata and resume states.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ..checkpoint import MAX_ALPHA, MAX_CHECKPOINT_RANK

TIMESTEP_SAMPLINGS = ("logit_normal", "shifted_uniform")
OPTIMIZERS = ("adamw", "prodigy")
LR_SCHEDULES = ("constant", "cosine")
# validation metrics a best checkpoint can be chosen by (validation.METRIC_KEYS' names) and whether
# lower values are better
BEST_METRICS = {"photometric_residual": "lower", "geometric_degrees": "lower", "structural_alignment": "higher"}
MAX_PREFETCH = 64
MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class Setting:
    """One training setting: its type (bool, int, float or str), default, allowed values and meaning.
    Numbers must lie in [low, high] (low excluded when low_open, high when high_open); floats must be finite."""
    name: str
    kind: type
    default: object
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Optional[tuple] = None
    meaning: str = ""

    def describe_range(self) -> str:
        if self.choices is not None:
            return f"one of {', '.join(map(repr, self.choices))}"
        what = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string"}[self.kind]
        if self.low is None:
            return what
        return (f"{what} in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")

    def check(self, value):
        """`value` as this setting's type, or a ValueError that says what is allowed."""
        given = value

        def refuse():
            raise ValueError(f"training setting: {self.name} must be {self.describe_range()}, got {given!r}")
        if self.kind is bool:
            if not isinstance(value, bool):
                refuse()
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                refuse()
            return value
        # numbers: bool is not a number here (TOML `true` for steps), nor is 1.5 or 1.0 a whole number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse()
        if self.kind is int and not isinstance(value, int):
            refuse()
        if self.kind is float:
            value = float(value)
            if not math.isfinite(value):
                refuse()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low) or value > self.high
                                      or (self.high_open and value == self.high)):
            refuse()
        return value


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


SETTINGS: tuple[Setting, ...] = (
    # adapters
    Setting("rank", int, 8, 1, MAX_CHECKPOINT_RANK, meaning="Tensor LoRA rank R (the paper: 8)"),
    Setting("alpha", float, 1.0, 0.0, MAX_ALPHA, low_open=True, meaning="scale alpha / sqrt(R) (the released: 1.0)"),
    # optimisation
    Setting("steps", int, 1000, 1, MAX_STEPS, meaning="optimisation steps (the paper: 10K)"),
    Setting("batch_size", int, 1, 1, 65536, meaning="scenes per optimisation step, over all ranks and micro-steps"),
    Setting("grad_accumulation", int, 1, 1, 65536, meaning="micro-steps per optimisation step"),
    Setting("optimizer", str, "adamw", choices=OPTIMIZERS,
            meaning="prodigy as the paper (lr 1.0), needs the prodigyopt package"),
    Setting("learning_rate", float, 1e-4, 1e-8, 10.0, meaning="AdamW: about 1e-4; Prodigy: 1.0"),
    Setting("weight_decay", float, 0.0, 0.0, 10.0, meaning="decoupled weight decay"),
    Setting("warmup_steps", int, 0, 0, MAX_STEPS, meaning="linear learning-rate warm-up"),
    Setting("lr_schedule", str, "constant", choices=LR_SCHEDULES,
            meaning="after warm-up: constant, or cosine decay to lr_min_ratio x learning_rate at the last step"),
    Setting("lr_min_ratio", float, 0.0, 0.0, 1.0, meaning="cosine: the last step's lr as a fraction of learning_rate"),
    Setting("ema_decay", float, 0.0, 0.0, 1.0, high_open=True,
            meaning="EMA of the adapters (e.g. 0.999; decay warmed up as min(d, (1+n)/(10+n)) at update n), saved "
                    "as *_ema.safetensors and used for validation; 0: off"),
    Setting("max_grad_norm", float, 1.0, 0.0, 1e4, meaning="gradient clipping; 0 turns it off"),
    # objective
    Setting("timestep_sampling", str, "logit_normal", choices=TIMESTEP_SAMPLINGS,
            meaning="per-map t: logit-normal, or uniform over the shifted FLUX schedule (x-flux)"),
    Setting("logit_mean", float, 0.0, -10.0, 10.0, meaning="logit-normal t = sigmoid(mean + std * N(0, 1))"),
    Setting("logit_std", float, 1.0, 0.0, 10.0, low_open=True, meaning="see logit_mean"),
    Setting("guidance", float, 1.0, 0.0, 100.0, meaning="FLUX guidance embed during training (x-flux: 1.0)"),
    Setting("held_map_probability", float, 0.0, 0.0, 1.0,
            meaning="chance that a scene holds a random subset of maps clean at t = 0"),
    Setting("caption_dropout", float, 0.0, 0.0, 1.0, meaning="chance that a scene trains with the empty caption"),
    # data
    Setting("resolution", int, 512, 16, 4096, meaning="crop side in pixels (a multiple of 16)"),
    Setting("flip", bool, False, meaning="random horizontal flip (the normal map's x is negated)"),
    Setting("seed", int, 0, 0, 2 ** 62, meaning="data order, crops, noise and timesteps"),
    # model
    Setting("gradient_checkpointing", bool, True, meaning="recompute each block in the backward pass"),
    Setting("prefetch", int, 1, 0, MAX_PREFETCH,
            meaning="steps of data read ahead in a background thread (same results); 0: read in the step"),
    # output
    Setting("save_every", int, 500, 0, MAX_STEPS, meaning="checkpoint + state every N steps; 0: only at the end"),
    Setting("keep_last", int, 3, 0, MAX_STEPS, meaning="keep only the newest N step checkpoints of the run; 0: keep all"),
    Setting("validate_every", int, 0, 0, MAX_STEPS, meaning="validation every N steps; 0: never"),
    Setting("keep_best", bool, True, meaning="on validation, keep <name>_best.safetensors: the best best_metric so far"),
    Setting("best_metric", str, "photometric_residual", choices=tuple(BEST_METRICS),
            meaning="validation metric for keep_best: photometric_residual and geometric_degrees lower, "
                    "structural_alignment higher is better"),
    Setting("log_every", int, 1, 1, MAX_STEPS, meaning="steps between log records"),
)
SETTING = {s.name: s for s in SETTINGS}


@dataclass
class TrainConfig:
    # the fields and defaults are SETTINGS' (a test checks they agree); see SETTINGS for their meaning
    rank: int = 8
    alpha: float = 1.0
    steps: int = 1000
    batch_size: int = 1
    grad_accumulation: int = 1
    optimizer: str = "adamw"
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    lr_min_ratio: float = 0.0
    ema_decay: float = 0.0
    max_grad_norm: float = 1.0
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    guidance: float = 1.0
    held_map_probability: float = 0.0
    caption_dropout: float = 0.0
    resolution: int = 512
    flip: bool = False
    seed: int = 0
    gradient_checkpointing: bool = True
    prefetch: int = 1
    save_every: int = 500
    keep_last: int = 3
    validate_every: int = 0
    keep_best: bool = True
    best_metric: str = "photometric_residual"
    log_every: int = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for setting in SETTINGS:
            setattr(self, setting.name, setting.check(getattr(self, setting.name)))
        if self.batch_size % self.grad_accumulation:
            raise ValueError(f"training setting: batch_size {self.batch_size} must be a multiple of grad_accumulation "
                             f"{self.grad_accumulation}")
        if self.resolution % 16:
            raise ValueError(f"training setting: resolution must be a positive multiple of 16, got {self.resolution}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ValueError(f"training settings must be a table of name = value, got {type(values).__name__}")
        unknown = sorted(set(values) - set(SETTING))
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known settings: {sorted(SETTING)}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
