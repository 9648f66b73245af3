"""Optimisers for the adapters: AdamW (torch) or Prodigy (the paper's, from the optional prodigyopt
package), with a linear learning-rate warm-up."""
from __future__ import annotations

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


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> float:
    lr = config.learning_rate * warmup_factor(step, config.warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
