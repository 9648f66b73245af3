"""The sampler's size guard: the host-free estimate against the memory ComfyUI reports free."""
from __future__ import annotations

import torch

import comfy.model_management

from ..lumix_core.memory_estimate import DEFAULT_TEXT_TOKENS, check_latent_memory, check_sampler_memory
from .flux_model import flux_diffusion_model


def _text_tokens(conditioning) -> int:
    try:
        return max(int(c[0].shape[1]) for c in conditioning)
    except (TypeError, IndexError, AttributeError, ValueError):
        return DEFAULT_TEXT_TOKENS


def _freeable(device) -> int:
    """Memory ComfyUI could free on `device` by unloading the models it holds there."""
    return sum(m.model_loaded_memory() for m in comfy.model_management.current_loaded_models
               if m.device == device)


def check_memory(model, positive, negative, width: int, height: int, scenes: int, cfg: float) -> None:
    """Refuse (before anything is allocated) a run that cannot fit; see lumix_core.memory_estimate."""
    device = model.load_device
    cpu = torch.device("cpu")
    shared = comfy.model_management.is_device_cpu(device)
    host_free = comfy.model_management.get_free_memory(cpu)
    device_free = host_free if shared else comfy.model_management.get_free_memory(device) + _freeable(device)
    base = model.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    check_sampler_memory(
        width, height, scenes, cfg, device_free, host_free, shared,
        latent_channels=model.get_model_object("latent_format").latent_channels,
        hidden=flux_diffusion_model(model).hidden_size,
        activation_bytes=comfy.model_management.dtype_size(dtype),
        text_tokens=max(_text_tokens(positive), _text_tokens(negative)))


def check_latent_host_memory(width: int, height: int, scenes: int, latent_channels: int = 16) -> None:
    """LumiX Empty Latent's guard (no model known): the latents and decoded maps of the run against the
    system memory ComfyUI reports free, before the latent is allocated."""
    check_latent_memory(width, height, scenes, comfy.model_management.get_free_memory(torch.device("cpu")),
                        latent_channels=latent_channels)
