"""Non-finite values in what a node returns: found and reported, never passed on silently.

NaN or Inf made by a model (an extreme checkpoint or strength, fp16 overflow, a NaN conditioning) or
by a VAE would otherwise come out of the sampler as black or white maps. Every node that returns
latents or images it computed checks them here and names the first scene and map that holds any.
"""
from __future__ import annotations

import math

import torch

from .maps import MAP_COUNT, MAP_NAMES, check_grouped_batch

MODEL_ADVICE = ("The model produced them: lower the LoRA strength, check the checkpoint and the text "
                "conditioning, or run the model in bf16/fp32 (fp16 can overflow).")
VAE_ADVICE = ("The VAE produced them from finite input: connect the FLUX VAE (ae.safetensors) and run "
              "it in bf16/fp32.")


class NonFiniteError(ValueError):
    """A computed batch holds NaN/Inf; the message names where and what to do."""


def check_finite_maps(batch: torch.Tensor, what: str, advice: str, maps_per_scene: int = MAP_COUNT) -> None:
    """Raises NonFiniteError when `batch` ([scenes*M, ...], map index fastest) holds NaN or Inf,
    naming the first scene and map with any, how many values, and `advice`."""
    finite = torch.isfinite(batch)
    if bool(finite.all()):
        return
    scenes = check_grouped_batch(batch.shape[0], maps_per_scene, what)
    bad = (~finite).flatten(1).sum(1)
    first = int(torch.nonzero(bad)[0])
    scene, index = divmod(first, maps_per_scene)
    names = MAP_NAMES if maps_per_scene == MAP_COUNT else [f"map {i}" for i in range(maps_per_scene)]
    affected = sorted({names[int(i) % maps_per_scene] for i in torch.nonzero(bad).flatten()},
                      key=lambda n: list(names).index(n))
    nans = int(torch.isnan(batch[first]).sum())
    raise NonFiniteError(
        f"LumiX: {what} holds non-finite values (NaN/Inf) in {int((bad > 0).sum())} of {batch.shape[0]} maps "
        f"({', '.join(affected)}); first: the {names[index]} map of scene {scene + 1} of {scenes}, "
        f"{int(bad[first])} value(s), {nans} NaN. {advice} Nothing was passed on.")


def check_finite_settings(node: str, **values: float) -> None:
    """Refuses NaN/Inf in a node's number settings: an API prompt can carry them (JSON NaN, 1e999) and
    ComfyUI's min/max check lets NaN through, which would turn every output into NaN."""
    for name, value in values.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"{node}: {name} is {value}; set it to a finite number (the widget's range).")
