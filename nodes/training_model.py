"""The FLUX model ComfyUI loaded, made trainable for LumiX: LumiX's own block patches (nodes/patch.py)
with trainable adapters, optional per-block gradient checkpointing, and a denoiser callable for the
host-free trainer. The base model is never changed: a ModelPatcher clone carries the patches."""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.utils.checkpoint

import comfy.model_management
import comfy.patcher_extension
import comfy.utils

from ..lumix_core.training import LumiXAdapters
from .adapter_memory import resolve_adapter_dtype
from .checkpoint_cache import build_loaded_adapters
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


def trained_model(model, adapters: LumiXAdapters, checkpoint_name: str, adapter_dtype: str = "auto"):
    """The Trainer's MODEL output, built the way the LumiX Tensor LoRA Loader builds its own: a
    private copy of the trained factors in the loader's adapter dtype ('auto': float32 for a float32
    model, else bfloat16), on the offload device, held by an adapter ModelPatcher that ComfyUI counts,
    loads and offloads with the model (nodes/adapter_memory.py). Later training does not change it."""
    dtype = resolve_adapter_dtype(adapter_dtype, model)
    loaded = build_loaded_adapters(adapters.as_checkpoint(model.offload_device), dtype, model.load_device,
                                   model.offload_device)
    return apply_lumix(model, adapters=loaded.adapters, adapter_model=loaded.model, strength=1.0,
                       checkpoint_name=checkpoint_name, maps_per_scene=adapters.num_maps, query_broadcast=True)


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


# Per FLUX module being trained: the flags of its parameters as found, and the tensors whose
# inference-mode contents were swapped for ordinary ones (restored by frozen_base).
_TRAINING_BASES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _base_record(dm) -> dict:
    record = _TRAINING_BASES.get(dm)
    if record is None:
        record = _TRAINING_BASES[dm] = {"flags": [(p, p.requires_grad) for p in dm.parameters()], "swapped": []}
    return record


def _swap_contents(tensor, replacement) -> bool:
    """Give `tensor` (the same Python object, wherever it is referenced) the contents and autograd
    flags of `replacement`. False where torch refuses (another reference to its storage is alive)."""
    try:
        torch.utils.swap_tensors(tensor, replacement)
    except (RuntimeError, TypeError):
        return False
    return True


def prepare_base_for_autograd(model) -> int:
    """Make every inference-mode tensor of the FLUX an ordinary tensor with the same values, in place.

    ComfyUI builds and loads models inside torch.inference_mode(); autograd refuses to save such
    tensors for the backward pass (every frozen weight the gradient flows through is saved). The
    contents of each parameter and buffer object are swapped for an ordinary copy of the same bits
    (torch.utils.swap_tensors), so the objects other nodes and ComfyUI hold stay the same; one
    tensor at a time, so memory grows by one tensor at most. `frozen_base` swaps inference copies
    back and restores the requires_grad flags found here. Returns how many tensors were swapped.
    Call with inference mode off."""
    dm = flux_diffusion_model(model)
    record = _base_record(dm)
    count = 0
    for name, param in list(dm.named_parameters()):
        if param.is_inference():
            # the flag as found: should training not start after all, objects, values and flags are unchanged
            fresh = torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
            if _swap_contents(param, fresh):
                record["swapped"].append(param)
            else:  # cannot happen for ComfyUI's own weights; an equal new object is the only way left
                comfy.utils.set_attr_param(dm, name, fresh.detach())  # (set_attr_param freezes it)
            count += 1
    for name, buffer in list(dm.named_buffers()):
        if buffer.is_inference():
            fresh = buffer.clone()
            if _swap_contents(buffer, fresh):
                record["swapped"].append(buffer)
            else:
                comfy.utils.set_attr(dm, name, fresh)
            count += 1
    return count


def _restore_base(dm) -> None:
    """Undo prepare_base_for_autograd and frozen_base: inference-mode contents (the same values, on
    whatever device ComfyUI moved them to meanwhile) and the requires_grad flags as found."""
    record = _TRAINING_BASES.pop(dm, None)
    if record is None:
        return
    flags = {id(p): flag for p, flag in record["flags"]}
    for tensor in record["swapped"]:
        with torch.inference_mode():
            copy = tensor.detach().clone()
        if isinstance(tensor, torch.nn.Parameter):
            with torch.inference_mode():
                copy = torch.nn.Parameter(copy, requires_grad=flags.get(id(tensor), False))
        _swap_contents(tensor, copy)  # where refused, the ordinary copy (same values) stays
        del copy
    for param, flag in record["flags"]:
        if param.requires_grad != flag:
            if param.is_inference():  # only inside inference mode may such a tensor ask for gradients
                with torch.inference_mode():
                    param.requires_grad_(flag)
            else:
                param.requires_grad_(flag)


@contextlib.contextmanager
def frozen_base(model):
    """The base FLUX ready for training for the duration: no parameter asks for a gradient (ComfyUI
    loads weights frozen; randomly built models may not be) and inference-mode tensors are made
    ordinary (prepare_base_for_autograd, where not called yet). Afterwards, also when training
    fails or is cancelled, the shared model is as found: the same parameter and buffer objects,
    the same values, requires_grad flags and inference-mode state."""
    dm = model.get_model_object("diffusion_model")
    _base_record(dm)
    try:
        prepare_base_for_autograd(model)
        for p in dm.parameters():
            p.requires_grad_(False)
        yield
    finally:
        _restore_base(dm)


def load_for_training(model):
    """Load the model's weights onto its device the ComfyUI way (patches such as other LoRAs applied)."""
    comfy.model_management.load_models_gpu([model], force_full_load=True)
