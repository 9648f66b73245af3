"""Recognising a ComfyUI FLUX model and reaching its blocks without touching the shared model.

LumiX's adapters were trained on FLUX.1-dev: one guidance-embedded FLUX.1 transformer with 16 latent
channels in, per-block modulation and GELU MLPs. ComfyUI runs several other models through the same
Flux class (FLUX.2 with global modulation and SiLU-gated MLPs since 0.8, FLUX.1-schnell without a
guidance embedding, FLUX.1 Fill/Depth/Canny with extra input channels) and FLUX-like classes (Chroma).
Each is refused here with its name, before any block runs, instead of failing deep inside a block.
"""
from __future__ import annotations

import comfy.ldm.flux.layers as flux_layers
import comfy.ldm.flux.model as flux_model

_LOAD_DEV = "Load flux1-dev with 'Load Diffusion Model' (UNETLoader) and connect that."


class NotFluxError(ValueError):
    pass


def _model_family(model) -> str:
    """The family name ComfyUI detected for this model ('flux', 'flux2', 'chroma', ...), or ''."""
    config = getattr(getattr(getattr(model, "model", None), "model_config", None), "unet_config", None)
    return config.get("image_model", "") if isinstance(config, dict) else ""


def _unsupported_variant(diffusion_model, family: str) -> str | None:
    """Why this Flux-class model is not FLUX.1-dev, or None where it is. Flags a host version lacks
    read as FLUX.1's values (feature detection: older ComfyUI had only FLUX.1 in this class)."""
    params = getattr(diffusion_model, "params", None)
    if family == "flux2" or any(getattr(params, flag, False) for flag in ("global_modulation", "mlp_silu_act", "yak_mlp")):
        return "FLUX.2 (global modulation, gated MLPs)"
    if any(getattr(b, "modulation", True) is False for b in diffusion_model.double_blocks) or \
            any(getattr(b, "modulation", True) is None for b in diffusion_model.single_blocks):
        return "a FLUX variant without per-block modulation"
    if not getattr(params, "guidance_embed", True):
        return "FLUX.1-schnell or another FLUX without a guidance embedding"
    if getattr(params, "in_channels", 16) != 16:
        return (f"a FLUX with {params.in_channels} input channels (FLUX.1 Fill, Depth or Canny), "
                "not the 16 latent channels LumiX generates")
    return None


def flux_diffusion_model(model):
    """The FLUX transformer inside a ModelPatcher, or a NotFluxError that says what to load."""
    try:
        diffusion_model = model.get_model_object("diffusion_model")
    except AttributeError:
        raise NotFluxError("LumiX needs a MODEL input (from Load Diffusion Model / UNETLoader); "
                           f"got {type(model).__name__}.") from None
    name = type(diffusion_model).__name__
    if not isinstance(diffusion_model, flux_model.Flux):
        raise NotFluxError(f"LumiX patches FLUX.1-dev, but this MODEL is a {name}. {_LOAD_DEV}")
    variant = _unsupported_variant(diffusion_model, _model_family(model))
    if variant is not None:
        raise NotFluxError(f"LumiX was trained on FLUX.1-dev and cannot run on this MODEL: it is {variant}. "
                           f"{_LOAD_DEV}")
    blocks_ok = (all(type(b) is flux_layers.DoubleStreamBlock and not b.flipped_img_txt
                     for b in diffusion_model.double_blocks)
                 and all(type(b) is flux_layers.SingleStreamBlock for b in diffusion_model.single_blocks))
    if not blocks_ok or len(diffusion_model.double_blocks) == 0:
        raise NotFluxError(
            f"this {name} model has FLUX-like but non-standard blocks (a FLUX variant such as Chroma "
            f"or HiDream); LumiX was trained on FLUX.1-dev. {_LOAD_DEV}")
    return diffusion_model


class ReferenceLatentsError(ValueError):
    pass


def refuse_reference_latents(executor, x, timestep, context, y=None, guidance=None, ref_latents=None,
                             *args, **kwargs):
    """DIFFUSION_MODEL wrapper: Kontext-style reference latents append a reference image's tokens to
    every map's image tokens; LumiX's maps would attend to them in ways it was never trained for."""
    if ref_latents is not None:
        raise ReferenceLatentsError(
            "LumiX cannot use reference latents (FLUX Kontext / ReferenceLatent conditioning): remove the "
            "ReferenceLatent node from the prompts. To generate maps for a photo, give it to the LumiX "
            "sampler's color input instead (decomposition).")
    return executor(x, timestep, context, y, guidance, ref_latents, *args, **kwargs)


def block_counts(diffusion_model) -> tuple[int, int]:
    return len(diffusion_model.double_blocks), len(diffusion_model.single_blocks)
