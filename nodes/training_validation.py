"""Training validation in ComfyUI: sample the first dataset captions at a small size with the model
being trained, measure how consistent the five maps are (lumix_core.training.validation) and keep
their images (one five-map grid per caption, written and sent to TensorBoard). Used by the LumiX
Trainer and the command-line trainer; it samples through sampler_node.sample_five_maps, never
through a node's execute."""
from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from ..lumix_core import MAP_NAMES
from ..lumix_core.training.validation import (consistency_summary, scene_grid, validation_sheet,
                                              write_validation_grids)
from .memory_guard import check_memory
from .sampler_node import sample_five_maps
from .sampling_steps import check_lumix_model, check_multiple_of_16

VALIDATION_GUIDANCE = 3.5  # FLUX guidance embed of the validation prompts (the reference's sampling)
SAMPLER, SCHEDULER, CFG = "euler", "simple", 1.0


def _conditioning(text_file: str, guidance: float | None = None) -> list:
    """A CONDITIONING from a cached text embedding ({context [L, D], pooled [V]})."""
    text = load_file(text_file)
    options = {"pooled_output": text["pooled"][None].float()}
    if guidance is not None:
        options["guidance"] = guidance
    return [[text["context"][None].float(), options]]


def _label(scene) -> str:
    """What a grid says about its scene: the caption where the dataset keeps it, else the scene's id."""
    caption = getattr(scene, "caption", None)
    return f"{scene.scene_id}: {caption}" if isinstance(caption, str) and caption else str(scene.scene_id)


class Validation:
    """validation(step) -> {metric: mean over the captions} (consistency_summary's keys); after each
    call `last_grid` holds a PIL sheet of every caption's five maps (one row each, for a preview),
    `last_grids` the rows, `last_paths` the PNGs written (empty without a folder) and `last_maps` the
    sampled maps ({name: [H, W, 3]} per caption). `log` (a TrainingLog, settable after construction)
    gets each caption's grid as TensorBoard image 'validation/<k>'."""

    def __init__(self, model, vae, dataset, scenes: int, size: int, steps: int, folder: str | None,
                 log, guidance: float):
        self.model, self.vae, self.dataset = model, vae, dataset
        self.scenes, self.size, self.steps, self.guidance = scenes, size, steps, guidance
        self.folder, self.log = folder, log
        self.last_grid, self.last_grids, self.last_paths, self.last_maps = None, [], [], []

    @property
    def count(self) -> int:
        return min(self.scenes, len(self.dataset))

    def sample(self) -> list[dict[str, torch.Tensor]]:
        """Each validation caption's five maps ({name: [size, size, 3]} float32 on the CPU): caption k at
        seed k, the empty caption as negative (unused at cfg 1), euler/simple, the reference's sigmas,
        one scene at a time, with no progress bar or preview of its own (it runs inside the caller's:
        the Trainer's bar keeps showing training) and Cancel checked at every step."""
        negative = _conditioning(self.dataset.empty_text)
        maps = []
        with torch.no_grad():
            for k in range(self.count):
                positive = _conditioning(self.dataset.scenes[k].text, self.guidance)
                check_memory(self.model, positive, negative, self.size, self.size, 1, CFG)
                sampled = sample_five_maps(self.model, self.vae, positive, negative, seed=k, steps=self.steps, cfg=CFG,
                                           sampler_name=SAMPLER, scheduler=SCHEDULER, width=self.size,
                                           height=self.size, scenes=1, shared_noise=True, previews=False)
                maps.append({name: sampled.maps[name][0].float().cpu() for name in MAP_NAMES})
        return maps

    def __call__(self, step: int) -> dict[str, float]:
        maps = self.sample()
        metrics = consistency_summary(maps)
        grids = [scene_grid(scene_maps, _label(self.dataset.scenes[k])) for k, scene_maps in enumerate(maps)]
        paths = write_validation_grids(self.folder, step, grids) if self.folder else []
        if self.log is not None:
            for k, grid in enumerate(grids):
                self.log.add_image(f"validation/{k}", grid, step)
        self.last_maps, self.last_grids, self.last_paths = maps, grids, paths
        self.last_grid = validation_sheet(grids)
        return metrics


def make_validation(model, vae, dataset, scenes: int = 2, size: int = 256, steps: int = 12, folder: str | None = None,
                    log=None, guidance: float = VALIDATION_GUIDANCE) -> Validation:
    """The validation of a training run (see Validation). model: the patched training model (a ComfyUI
    MODEL); vae: the FLUX VAE; dataset: the EncodedDataset (its first `scenes` captions are sampled);
    folder: where validation/step_<N>_<k>.png go (None: no files); log: a TrainingLog for TensorBoard
    images (None: none). Refuses, with what to change, settings that cannot run."""
    if vae is None:
        raise ValueError("validation needs the FLUX VAE to decode the sampled maps; connect one (or turn "
                         "validation off).")
    for name, value in (("scenes", scenes), ("steps", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"validation {name} is {value!r}; set a whole number of at least 1.")
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ValueError(f"validation size is {size!r}; set a multiple of 16 of at least 16 (e.g. 256).")
    check_multiple_of_16(size, size)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"validation guidance is {guidance!r}; set a finite number (3.5 as the reference).")
    if len(dataset) < 1:
        raise ValueError("validation needs at least one scene in the dataset.")
    check_lumix_model(model)  # a FLUX model (a warning about patching does not apply to a training model)
    return Validation(model, vae, dataset, scenes, size, steps, folder, log, guidance)
