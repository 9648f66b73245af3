"""Sampling helpers for grouped maps: per-scene noise, held (given) maps, and map (de)interleaving.

A batch holds `scenes` groups of M maps, map index fastest. A held map is one given as an image:
the model always sees its clean latent at timestep 0, and its latent never changes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .maps import MAP_COUNT, MAP_NAMES, check_grouped_batch


SEED_MODULUS = 2 ** 64  # seeds are 0..2^64-1 (the sampler's range, and what torch.Generator accepts)


def scene_seed(seed: int, scene: int) -> int:
    """The seed of scene `scene` of a run: seed + scene, wrapped modulo 2^64 so that every allowed seed
    works with any number of scenes (identical to seed + scene wherever that stays below 2^64)."""
    return (seed + scene) % SEED_MODULUS


def scene_noise(latent_shape: Sequence[int], seed: int, scenes: int, maps_per_scene: int = MAP_COUNT,
                shared: bool = True) -> torch.Tensor:
    """Initial noise [scenes*M, C, H, W] on the CPU in float32.

    Scene s draws from a generator seeded with scene_seed(seed, s) = seed + s (mod 2^64), so scene s
    of a batch equals a one-scene run with that seed. With `shared`, one noise tensor per scene is repeated for its M maps (the
    reference's behaviour); otherwise each map gets its own draw from the scene's generator.
    """
    per_scene = []
    for s in range(scenes):
        g = torch.Generator(device="cpu").manual_seed(scene_seed(seed, s))
        n = 1 if shared else maps_per_scene
        noise = torch.randn([n, *latent_shape], generator=g, dtype=torch.float32, device="cpu")
        per_scene.append(noise.expand(maps_per_scene, *latent_shape) if shared else noise)
    return torch.cat(per_scene).contiguous()


def held_map_mask(given: Sequence[bool], scenes: int) -> torch.Tensor:
    """Bool [scenes*M]: True where the map is given (held clean)."""
    return torch.tensor(list(given) * scenes, dtype=torch.bool)


def hold_maps(x: torch.Tensor, sigma: torch.Tensor, held: torch.Tensor, clean: torch.Tensor):
    """Model inputs with held maps replaced by their clean latent at sigma 0.

    x: [n*B, ...] and sigma: [n*B] for n conditions (cond, uncond, ...) batched over B latents;
    held: bool [B]; clean: [B, ...] (only the held rows are read). Returns new tensors.
    """
    batch = held.shape[0]
    if x.shape[0] % batch != 0:
        raise ValueError(f"the model was called with {x.shape[0]} latents, not a multiple of the "
                         f"{batch} being sampled; a node before the sampler changed the batch.")
    repeats = x.shape[0] // batch
    mask = held.to(x.device).repeat(repeats)
    x = torch.where(mask.view(-1, *[1] * (x.ndim - 1)), clean.to(x).repeat(repeats, *[1] * (x.ndim - 1)), x)
    sigma = torch.where(mask, torch.zeros((), dtype=sigma.dtype, device=sigma.device), sigma)
    return x, sigma


def split_maps(batch: torch.Tensor, maps_per_scene: int = MAP_COUNT) -> dict[str, torch.Tensor]:
    """{map name: [scenes, ...]} from [scenes*M, ...] (map index fastest)."""
    check_grouped_batch(batch.shape[0], maps_per_scene)
    return {name: batch[i::maps_per_scene] for i, name in enumerate(MAP_NAMES[:maps_per_scene])}


def interleave_maps(per_map: Sequence[torch.Tensor]) -> torch.Tensor:
    """[scenes*M, ...] from M tensors of [scenes, ...]; the inverse of split_maps."""
    stacked = torch.stack(list(per_map), dim=1)
    return stacked.reshape(-1, *stacked.shape[2:])


def tile_scene(batch: torch.Tensor, scene: int = 0, maps_per_scene: int = MAP_COUNT) -> torch.Tensor:
    """[1, C, H, M*W]: the M maps of one scene of a [scenes*M, C, H, W] batch side by side, in map
    order (a preview of all maps forming together). A batch shorter than one scene is returned whole."""
    if batch.shape[0] < maps_per_scene:
        return batch[:1]
    scenes = check_grouped_batch(batch.shape[0], maps_per_scene)
    scene = min(max(scene, 0), scenes - 1)
    group = batch[scene * maps_per_scene:(scene + 1) * maps_per_scene]
    return torch.cat(list(group), dim=-1).unsqueeze(0)
