"""The FLUX model ComfyUI loaded, made trainable for LumiX: LumiX's own block patches (nodes/patch.py)
with trainable adapters, optional per-block gradient checkpointing, and a denoiser callable for the
host-free trainer. The base model is never changed: a ModelPatcher clone carries the patches."""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint

import comfy.model_management
import comfy.patcher_extension
import comfy.utils

from ..lumix_core.training import LumiXAdapters
from .flux_model import block_counts, flux_diffusion_model
from .patch import LumiXBlockPatch, apply_lumix

_BLOCK_NAMES = {"double_blocks": "double_block", "single_blocks": "single_block"}


class CheckpointedBlock:
    """Block-replace patch that runs the LumiX block under torch.utils.checkpoint while gradients are
    on: its activations are recomputed in the backward pass instead of kept (memory for time)."""

    def __init__(self, inner: LumiXBlockPatch):
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        self.inner = self.inner.to(device_or_dtype)
        return self

    def __call__(self, args, extra):
        if not torch.is_grad_enabled():
            return self.inner(args, extra)
        return torch.utils.checkpoint.checkpoint(self.inner, args, extra, use_reentrant=False)


def new_adapters(model, rank: int, alpha: float, num_maps: int, seed: int = 0, device=None) -> LumiXAdapters:
    """Fresh float32 adapters (G3 = 0, the rest drawn from `seed`) for every block of the FLUX in `model`."""
    dm = flux_diffusion_model(model)
    return LumiXAdapters(dm.hidden_size, *block_counts(dm), num_maps=num_maps, rank=rank, alpha=alpha,
                         device=device if device is not None else model.load_device, seed=seed)


def training_model(model, adapters: LumiXAdapters, gradient_checkpointing: bool = True):
    """A clone of `model` whose FLUX blocks run LumiX (query broadcast on) with these trainable adapters."""
    dm = flux_diffusion_model(model)
    if (dm.hidden_size, *block_counts(dm)) != (adapters.hidden_size, *adapters.counts.values()):
        raise ValueError(f"the adapters are for width {adapters.hidden_size} with {adapters.counts}, the model has "
                         f"width {dm.hidden_size} and {block_counts(dm)} double/single blocks")
    patched = apply_lumix(model, adapters=adapters.block_dict(), query_broadcast=True,
                          maps_per_scene=adapters.num_maps, strength=1.0, checkpoint_name=None)
    if gradient_checkpointing:
        replaced = patched.model_options["transformer_options"]["patches_replace"]["dit"]
        for kind, name in _BLOCK_NAMES.items():
            for index in range(adapters.counts[kind]):
                patched.set_model_patch_replace(CheckpointedBlock(replaced[(name, index)]), "dit", name, index)
    return patched


def compute_dtype(model) -> torch.dtype:
    base = model.model
    return base.manual_cast_dtype if base.manual_cast_dtype is not None else base.get_dtype()


def make_denoiser(patched):
    """denoiser(x_t, t, context, pooled, guidance) -> v in float32, through ComfyUI's FLUX forward
    (its wrappers and block patches included), inputs cast as ComfyUI's apply_model casts them."""
    dm = patched.get_model_object("diffusion_model")
    # as ComfyUI's sampler prepares them: the patcher's wrappers (DIFFUSION_MODEL ones included) join the options
    options = dict(patched.model_options.get("transformer_options", {}))
    options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patched.wrappers)
    dtype = compute_dtype(patched)

    def denoise(x, t, context, pooled, guidance):
        device = patched.load_device
        out = dm(x.to(device, dtype), t.to(device).float(), context.to(device, dtype), y=pooled.to(device, dtype),
                 guidance=guidance.to(device, dtype), transformer_options=options)
        return out.float()

    return denoise


def prepare_base_for_autograd(model) -> int:
    """Re-create any inference-mode tensor of the FLUX as an ordinary tensor with the same values.

    ComfyUI builds and loads models inside torch.inference_mode(); autograd refuses to save such
    tensors for the backward pass (every frozen weight the gradient flows through is saved). The
    copies hold the same bits and serve inference as before (ComfyUI's own device moves re-create
    the tensors the same way); one parameter at a time, so memory grows by one tensor at most.
    Returns how many tensors were re-created. Call with inference mode off."""
    dm = flux_diffusion_model(model)
    count = 0
    for name, param in list(dm.named_parameters()):
        if param.is_inference():
            comfy.utils.set_attr_param(dm, name, param.detach().clone())
            count += 1
    for name, buffer in list(dm.named_buffers()):
        if buffer.is_inference():
            comfy.utils.set_attr(dm, name, buffer.clone())
            count += 1
    return count


@contextlib.contextmanager
def frozen_base(model):
    """Make sure no parameter of the base FLUX asks for a gradient while training (ComfyUI loads
    weights frozen; randomly built models may not be); restores the flags afterwards."""
    dm = model.get_model_object("diffusion_model")
    flagged = [p for p in dm.parameters() if p.requires_grad]
    for p in flagged:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in flagged:
            p.requires_grad_(True)


def load_for_training(model):
    """Load the model's weights onto its device the ComfyUI way (patches such as other LoRAs applied)."""
    comfy.model_management.load_models_gpu([model], force_full_load=True)
