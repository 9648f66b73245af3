"""The loaded Tensor-LoRA adapters as one model that ComfyUI's memory manager counts, loads and offloads.

The adapters live in one nn.Module (`LumiXAdapterSet`) inside a small ModelPatcher. Every LumiX block
patch reports that patcher through `models()`, which is how core model patches join a model:
`load_models_gpu` then plans, loads and offloads it together with the FLUX model it patches, and
low-VRAM budgets and free-memory decisions include it. Its size is the factors plus the merged
weights each adapter caches for inference (see TensorLoRA), both in the adapters' dtype.
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher

from ..lumix_core import TensorLoRA

# The loader's choices for the dtype the adapters are kept in. The merged weight is formed in
# float32 whatever is picked; activations keep the model's compute dtype.
ADAPTER_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def model_compute_dtype(model) -> torch.dtype:
    """The dtype a ComfyUI model computes in (its manual-cast dtype for fp8 weights)."""
    base = model.model
    return getattr(base, "manual_cast_dtype", None) or model.model_dtype() or torch.float32


def resolve_adapter_dtype(choice: str, model) -> torch.dtype:
    """'auto': float32 for a float32 model, else bfloat16 (as the reference runs them)."""
    if choice not in ADAPTER_DTYPES:
        raise ValueError(f"adapter_dtype {choice!r} is not one of {', '.join(ADAPTER_DTYPES)}")
    if ADAPTER_DTYPES[choice] is not None:
        return ADAPTER_DTYPES[choice]
    return torch.float32 if model_compute_dtype(model) == torch.float32 else torch.bfloat16


class LumiXAdapterSet(torch.nn.Module):
    """Every adapter of one checkpoint; `by_block` indexes the same modules as the patches need them."""

    def __init__(self, adapters: dict):
        super().__init__()
        self.adapters = torch.nn.ModuleDict({f"{kind}_{index}_{name}": module
                                             for (kind, index), block in sorted(adapters.items())
                                             for name, module in sorted(block.items())})
        self.by_block = adapters

    def cached_weights_bytes(self) -> int:
        return sum(m.cached_weights_bytes(m.G2.dtype) for m in self.adapters.values()
                   if isinstance(m, TensorLoRA))


def adapter_model(adapters: dict, load_device, offload_device) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher holding `adapters` ({(kind, index): {name: TensorLoRA}}), sized for ComfyUI's planning."""
    module = LumiXAdapterSet(adapters)
    size = comfy.model_management.module_size(module) + module.cached_weights_bytes()
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device,
                                            size=size)
