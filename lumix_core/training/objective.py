"""The flow-matching objective over groups of maps, each map with its own timestep.

For a scene's clean latents z (one per map) and noise eps: z_t = (1 - t) z + t eps, the model
predicts v(z_t, t, C) and the loss is the mean squared error against (eps - z), over the maps that
are not held. A held map is given clean at t = 0 (as the sampler gives a decomposition's input map);
it is context for the others and carries no loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .config import TrainConfig
from .timesteps import sample_held_maps, sample_map_timesteps

# denoiser(x_t [B,C,h,w], t [B], context [B,L,D], pooled [B,V], guidance [B]) -> v [B,C,h,w]
Denoiser = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass
class TrainingExample:
    """One scene ready for the model: latents of its M maps (already cropped/flipped, the model's
    latent space) and the text conditioning it trains with (the empty caption after dropout)."""
    latents: Tensor   # [M, C, h, w]
    context: Tensor   # [L, D]
    pooled: Tensor    # [V]


@dataclass
class FlowBatch:
    x_t: Tensor       # [B, C, h, w], B = scenes * M, map index fastest
    t: Tensor         # [B] float32, one timestep per latent
    target: Tensor    # [B, C, h, w] = eps - z
    context: Tensor   # [B, L, D]
    pooled: Tensor    # [B, V]
    guidance: Tensor  # [B]
    held: Tensor      # bool [B]: clean at t = 0, no loss


def draw_scene_noise(example: TrainingExample, generator: torch.Generator, config: TrainConfig):
    """(t [M], held [M], eps [M, C, h, w]) for one scene, from its own generator, in a fixed order."""
    maps, _, h, w = example.latents.shape
    t = sample_map_timesteps(maps, generator, config.timestep_sampling, config.logit_mean, config.logit_std,
                             image_tokens=(h // 2) * (w // 2))
    held = sample_held_maps(maps, config.held_map_probability, generator)
    eps = torch.randn(example.latents.shape, generator=generator, dtype=torch.float32)
    return torch.where(held, torch.zeros_like(t), t), held, eps


def _pad_tokens(contexts: Sequence[Tensor]) -> list[Tensor]:
    # Captions encoded to different lengths (T5 past ComfyUI's 256-token minimum) are zero-padded.
    longest = max(c.shape[0] for c in contexts)
    return [torch.nn.functional.pad(c, (0, 0, 0, longest - c.shape[0])) for c in contexts]


def make_flow_batch(examples: Sequence[TrainingExample], generators: Sequence[torch.Generator],
                    config: TrainConfig, device=None, dtype: torch.dtype = torch.float32) -> FlowBatch:
    """Noise, per-map timesteps and held maps for each scene (each from its own generator, so a
    scene's draw does not depend on the rank or batch it lands in), concatenated map index fastest."""
    if not examples:
        raise ValueError("make_flow_batch needs at least one scene")
    maps = examples[0].latents.shape[0]
    xs, ts, targets, helds, ctx, pooled = [], [], [], [], [], []
    for example, generator in zip(examples, generators, strict=True):
        if example.latents.shape[0] != maps:
            raise ValueError(f"scenes with {maps} and {example.latents.shape[0]} maps in one batch")
        t, held, eps = draw_scene_noise(example, generator, config)
        z = example.latents.float()
        tt = t.view(-1, 1, 1, 1)
        xs.append((1.0 - tt) * z + tt * eps)
        targets.append(eps - z)
        ts.append(t)
        helds.append(held)
        ctx.append(example.context)
        pooled.append(example.pooled)
    contexts = _pad_tokens(ctx)
    scenes = len(examples)
    to = dict(device=device)
    context = torch.stack(contexts).repeat_interleave(maps, dim=0)
    pooled_b = torch.stack(pooled).repeat_interleave(maps, dim=0)
    return FlowBatch(
        x_t=torch.cat(xs).to(dtype=dtype, **to), t=torch.cat(ts).to(**to), target=torch.cat(targets).to(**to),
        context=context.to(dtype=dtype, **to), pooled=pooled_b.to(dtype=dtype, **to),
        guidance=torch.full((scenes * maps,), float(config.guidance), **to), held=torch.cat(helds).to(**to))


@dataclass
class LossResult:
    loss: Tensor               # scalar, differentiable
    per_map: Tensor            # [M] detached mean squared error per map index (NaN where all held)
    t: Tensor                  # [B] the timesteps used


def flow_matching_loss(denoiser: Denoiser, batch: FlowBatch, maps_per_scene: int) -> LossResult:
    """Squared error of v against (eps - z), averaged over all B latents of the batch with held
    latents counting zero (float32). Dividing by B, not by the number of unheld latents, keeps the
    loss a plain mean over samples: ranks with equal shares average to the global batch's loss
    exactly, whatever the held maps of each rank."""
    v = denoiser(batch.x_t, batch.t, batch.context, batch.pooled, batch.guidance)
    if v.shape != batch.target.shape:
        raise ValueError(f"the model returned {tuple(v.shape)} for latents of shape {tuple(batch.target.shape)}")
    err = (v.float() - batch.target.to(v.device)).pow(2).flatten(1).mean(1)  # [B]
    keep = (~batch.held).to(err.device)
    if not bool(keep.any()):
        raise ValueError("every map of the batch is held: nothing to learn (held_map_probability never holds "
                         "all maps; this means a scene has one map only)")
    loss = (err * keep).sum() / err.shape[0]
    grouped = (err.detach() * keep).view(-1, maps_per_scene).sum(0)
    counts = keep.view(-1, maps_per_scene).sum(0)
    per_map = torch.where(counts > 0, grouped / counts.clamp(min=1), torch.full_like(grouped, float("nan")))
    return LossResult(loss=loss, per_map=per_map.cpu(), t=batch.t.detach().cpu())

