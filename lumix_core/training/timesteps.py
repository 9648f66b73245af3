"""Disentangled timestep sampling: every map of every scene draws its own t.

t is the flow-matching time (1 = pure noise), z_t = (1 - t) z + t eps, and it reaches the model
per sample (one entry per latent of the batch, map index fastest), as at inference.
"""
from __future__ import annotations

import math

import torch

SCHEDULE_STEPS = 1000


def flux_shift_mu(image_tokens: int) -> float:
    """FLUX's time-shift parameter for a sequence of image tokens (x-flux's get_lin_function)."""
    return 0.5 + (1.15 - 0.5) * (image_tokens - 256) / (4096 - 256)


def shifted_schedule(image_tokens: int, steps: int = SCHEDULE_STEPS) -> torch.Tensor:
    """The shifted FLUX schedule as x-flux's trainer draws from: linspace(1, 0, steps) shifted by
    t -> e^mu / (e^mu + 1/t - 1), float64."""
    t = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    mu = math.exp(flux_shift_mu(image_tokens))
    out = torch.zeros_like(t)
    positive = t > 0
    out[positive] = mu / (mu + 1.0 / t[positive] - 1.0)
    return out


def sample_map_timesteps(maps: int, generator: torch.Generator, method: str = "logit_normal",
                         logit_mean: float = 0.0, logit_std: float = 1.0, image_tokens: int = 1024) -> torch.Tensor:
    """[maps] float32 timesteps, each drawn independently.

    logit_normal: sigmoid(mean + std * N(0, 1)). shifted_uniform: uniform over the 1000 values of
    the shifted schedule (x-flux's way, here per map instead of per batch).
    """
    if method == "logit_normal":
        normal = torch.randn(maps, generator=generator, dtype=torch.float64)
        return torch.sigmoid(logit_mean + logit_std * normal).float()
    if method == "shifted_uniform":
        schedule = shifted_schedule(image_tokens)
        index = torch.randint(0, len(schedule), (maps,), generator=generator)
        return schedule[index].float()
    raise ValueError(f"unknown timestep sampling {method!r}: use 'logit_normal' or 'shifted_uniform'")


def sample_held_maps(maps: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Bool [maps]: with `probability`, a random non-empty subset of maps (never all) is held clean.

    The draw happens whatever `probability` is, so the random stream does not depend on it.
    """
    coin = torch.rand((), generator=generator).item()
    # a uniformly chosen subset among the 2^M - 2 non-empty proper subsets
    code = int(torch.randint(1, 2 ** maps - 1, (), generator=generator).item())
    if coin >= probability:
        return torch.zeros(maps, dtype=torch.bool)
    return torch.tensor([(code >> i) & 1 == 1 for i in range(maps)], dtype=torch.bool)
