"""An exponential moving average (EMA) of the adapters' weights, for validation and a second checkpoint.

After each optimiser step: ema = d * ema + (1 - d) * weights, with d = min(decay, (1 + n) / (10 + n))
where n counts the updates made before this one (the usual warm-up of the decay, as in diffusers'
EMAModel: the first updates follow the weights closely, so the early average is not dominated by
the random start). The average is kept in float32 on the adapters' device. `swapped_in` puts the
average into the adapters for a while (validation, writing the EMA checkpoint) and restores the raw
weights bit-exactly afterwards, whatever happens inside.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


def ema_decay_at(decay: float, updates_done: int) -> float:
    """The decay used by update number `updates_done` (0-based)."""
    return min(decay, (1.0 + updates_done) / (10.0 + updates_done))


class AdapterEMA:
    """EMA of every trainable parameter of `module` (keyed by parameter name), starting from its weights."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0 or not math.isfinite(decay):
            raise ValueError(f"the EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.tensors = {name: p.detach().to(torch.float32, copy=True) for name, p in self._params(module)}

    @staticmethod
    def _params(module: nn.Module):
        return [(name, p) for name, p in module.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, module: nn.Module) -> float:
        """Fold the current weights in; returns the decay used."""
        d = ema_decay_at(self.decay, self.updates)
        for name, p in self._params(module):
            self.tensors[name].mul_(d).add_(p.detach().to(torch.float32), alpha=1.0 - d)
        self.updates += 1
        return d

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module):
        """The EMA weights in `module` inside the block; the raw weights back exactly on leaving it
        (also when the block raises, e.g. an interrupt during validation)."""
        params = self._params(module)
        raw = [p.detach().clone() for _, p in params]
        try:
            with torch.no_grad():
                for name, p in params:
                    p.copy_(self.tensors[name])
            yield module
        finally:
            with torch.no_grad():
                for (_, p), saved in zip(params, raw):
                    p.copy_(saved)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "tensors": {k: v.detach().cpu().clone() for k, v in self.tensors.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved average (the decay stays this run's setting)."""
        tensors = state["tensors"]
        if set(tensors) != set(self.tensors):
            raise ValueError("the saved EMA does not cover these adapters' parameters; resume with the same model")
        for name, t in self.tensors.items():
            t.copy_(tensors[name].to(t.device, torch.float32))
        self.updates = int(state["updates"])
