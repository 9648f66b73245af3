"""Recognising a ComfyUI FLUX model and reaching its blocks without touching the shared model."""
from __future__ import annotations

import comfy.ldm.flux.layers as flux_layers
import comfy.ldm.flux.model as flux_model


class NotFluxError(ValueError):
    pass


def flux_diffusion_model(model):
    """The FLUX transformer inside a ModelPatcher, or a NotFluxError that says what to load."""
    try:
        diffusion_model = model.get_model_object("diffusion_model")
    except AttributeError:
        raise NotFluxError("LumiX needs a MODEL input (from Load Diffusion Model / UNETLoader); "
                           f"got {type(model).__name__}.") from None
    name = type(diffusion_model).__name__
    if not isinstance(diffusion_model, flux_model.Flux):
        raise NotFluxError(
            f"LumiX patches FLUX.1 models, but this MODEL is a {name}. Load flux1-dev with "
            "'Load Diffusion Model' (UNETLoader) and connect that.")
    blocks_ok = (all(type(b) is flux_layers.DoubleStreamBlock and not b.flipped_img_txt
                     for b in diffusion_model.double_blocks)
                 and all(type(b) is flux_layers.SingleStreamBlock for b in diffusion_model.single_blocks))
    if not blocks_ok or len(diffusion_model.double_blocks) == 0:
        raise NotFluxError(
            f"this {name} model has FLUX-like but non-standard blocks (a FLUX variant such as Chroma "
            "or HiDream); LumiX was trained on FLUX.1-dev. Load flux1-dev with 'Load Diffusion Model'.")
    return diffusion_model


def block_counts(diffusion_model) -> tuple[int, int]:
    return len(diffusion_model.double_blocks), len(diffusion_model.single_blocks)
