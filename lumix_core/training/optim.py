"""Optimisers for the adapters: AdamW (torch) or Prodigy (the paper's, from the optional prodigyopt
package), with a linear learning-rate warm-up, then a constant or cosine-decaying learning rate."""
from __future__ import annotations

import math

import torch

from .config import TrainConfig

PRODIGY_MISSING = ("the Prodigy optimiser needs the 'prodigyopt' package, which is not installed: run "
                   "'pip install prodigyopt' in ComfyUI's Python environment, or choose optimizer 'adamw'")


def prodigy_available() -> bool:
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        return False
    return True


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters were given to the optimiser")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise RuntimeError(PRODIGY_MISSING) from None
        return Prodigy(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}: use 'adamw' or 'prodigy'")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimisation step `step` (0-based): linear from 1/warmup to 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier for optimisation step `step` (0-based; the update that completes step
    n = step + 1 of config.steps). Warm-up: n / warmup_steps while n <= warmup_steps. Then "constant":
    1; "cosine": from 1 at the end of warm-up (n = warmup_steps) to lr_min_ratio at the last step
    (n = steps), m + (1 - m) (1 + cos(pi p)) / 2 with p = (n - warmup_steps) / (steps - warmup_steps).
    A run that is all warm-up (steps <= warmup_steps) never decays. A pure function of (step, config):
    a resumed run uses the same learning rates."""
    n, warm = step + 1, config.warmup_steps
    warming = warmup_factor(step, warm)
    if warming < 1.0 or config.lr_schedule == "constant" or config.steps <= warm:
        return warming
    p = min(1.0, (n - warm) / (config.steps - warm))
    m = config.lr_min_ratio
    return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> float:
    lr = config.learning_rate * lr_factor(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
