"""LumiX on a ComfyUI FLUX model: one settings object and one block-replace patch per block.

Both LumiX nodes clone the incoming ModelPatcher, update the shared `LumiXSettings` stored in the
clone's transformer_options under SETTINGS_KEY, and (re)install a `LumiXBlockPatch` on every FLUX
block through ComfyUI's `set_model_patch_replace`. The base model and other clones never change.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

import comfy.ldm.flux.math as flux_math
import comfy.patcher_extension

from ..lumix_core import MAP_COUNT, SOURCE_MAP_INDEX, double_block_forward, single_block_forward
from ..lumix_core.maps import check_sampled_batch
from ..lumix_core.rope import apply_rope
from .flux_model import flux_diffusion_model, refuse_reference_latents

SETTINGS_KEY = "lumix"
REFERENCE_LATENTS_KEY = "lumix_refuse_reference_latents"
_LOG = logging.getLogger("LumiX")
_BLOCK_NAMES = {"double_blocks": "double_block", "single_blocks": "single_block"}


@dataclasses.dataclass(frozen=True)
class LumiXSettings:
    maps_per_scene: int = MAP_COUNT
    source_map: int = SOURCE_MAP_INDEX
    query_broadcast: bool = False
    # {(kind, index): {"kv_tt_lora": TensorLoRA, "proj_tt_lora": TensorLoRA}}, shared, read-only
    adapters: dict | None = None
    # the ModelPatcher holding `adapters` for ComfyUI's memory manager (nodes/adapter_memory.py);
    # None where a caller supplies adapters it moves itself
    adapter_model: object | None = None
    strength: float = 1.0
    checkpoint_name: str | None = None

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options; the adapters (up to 133M parameters) are
        # read-only, so every clone shares them instead of copying them.
        return self

    @property
    def adapter_maps(self) -> int | None:
        """The map count the loaded adapters mix (None without adapters)."""
        if not self.adapters:
            return None
        return next(iter(next(iter(self.adapters.values())).values())).num_maps

    def adapters_for(self, kind: str, index: int):
        if not self.adapters or self.strength == 0.0:
            return None, None  # strength 0: skip the adapters, exactly the plain block
        block = self.adapters.get((kind, index), {})
        return block.get("kv_tt_lora"), block.get("proj_tt_lora")


def lumix_settings(model) -> LumiXSettings | None:
    """The LumiX settings of a ModelPatcher, or None where no LumiX node patched it."""
    return model.model_options.get("transformer_options", {}).get(SETTINGS_KEY)


class LumiXBlockPatch:
    """Runs one FLUX block with LumiX. Called by ComfyUI's forward_orig as a block replacement."""

    def __init__(self, kind: str, index: int, block, settings: LumiXSettings, inner=None):
        self.kind, self.index, self.block, self.settings, self.inner = kind, index, block, settings, inner

    def __deepcopy__(self, memo):
        return self  # immutable but for device moves of shared adapters, see `to`

    def to(self, device_or_dtype):
        # ComfyUI calls this with the load/offload device and with the model dtype. Adapters held by
        # an adapter model are moved by ComfyUI's memory manager (see `models`), within its budget.
        # Otherwise only devices are followed: the adapters compute in the activations' dtype (fp8
        # storage would ruin them).
        if isinstance(device_or_dtype, torch.device) and self.settings.adapter_model is None:
            kv, proj = self.settings.adapters_for(self.kind, self.index)
            for adapter in (kv, proj):
                if adapter is not None and adapter.G1.device != device_or_dtype:
                    adapter.to(device_or_dtype)
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device_or_dtype)
        return self

    def models(self):
        """The adapters' ModelPatcher, which load_models_gpu loads and offloads with the model."""
        kv, proj = self.settings.adapters_for(self.kind, self.index)
        inner = self.inner.models() if hasattr(self.inner, "models") else []
        if self.settings.adapter_model is None or (kv is None and proj is None):
            return inner
        return [self.settings.adapter_model] + inner

    def __call__(self, args, extra):
        if self.inner is not None:  # another extension's patch on this block: LumiX runs as its original
            return self.inner(args, {**extra, "original_block": self.run})
        return self.run(args)

    def run(self, args):
        settings = self.settings
        options = args.get("transformer_options") or {}

        def attention(q, k, v, pe, mask):
            if pe is not None and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
                # Training: the host's RoPE kernel may have no backward (comfy-kitchen's on ComfyUI
                # 0.8); rotate with plain torch ops here and let the host attend without RoPE.
                q, k = apply_rope(q, k, pe)
                pe = None
            return flux_math.attention(q, k, v, pe=pe, mask=mask, transformer_options=options)

        # The batch as the user set it (the model sees it once per batched condition, e.g. x2 with CFG).
        check_sampled_batch(args["img"].shape[0], len(options.get("cond_or_uncond") or ()), settings.maps_per_scene)
        kv, proj = settings.adapters_for(self.kind, self.index)
        common = dict(maps_per_scene=settings.maps_per_scene, source_map=settings.source_map,
                      query_broadcast=settings.query_broadcast, kv_lora=kv, proj_lora=proj,
                      attn_mask=args.get("attn_mask"), lora_strength=settings.strength)
        if self.kind == "double_blocks":
            img, txt = double_block_forward(self.block, args["img"], args["txt"], args["vec"], args["pe"],
                                            attention, **common)
            return {"img": img, "txt": txt}
        return {"img": single_block_forward(self.block, args["img"], args["vec"], args["pe"], attention, **common)}


def apply_lumix(model, **changes):
    """A clone of `model` with LumiX settings updated by `changes` and installed on every block."""
    diffusion_model = flux_diffusion_model(model)
    settings = dataclasses.replace(lumix_settings(model) or LumiXSettings(), **changes)
    patched = model.clone()
    replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    foreign = []
    for kind, blocks in (("double_blocks", diffusion_model.double_blocks),
                         ("single_blocks", diffusion_model.single_blocks)):
        name = _BLOCK_NAMES[kind]
        for index, block in enumerate(blocks):
            previous = replaced.get((name, index))
            if isinstance(previous, LumiXBlockPatch):
                previous = previous.inner
            elif previous is not None:
                foreign.append(f"{name} {index} ({type(previous).__name__})")
            patched.set_model_patch_replace(LumiXBlockPatch(kind, index, block, settings, previous),
                                            "dit", name, index)
    patched.model_options.setdefault("transformer_options", {})[SETTINGS_KEY] = settings
    wrapper_type = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    if not patched.get_wrappers(wrapper_type, REFERENCE_LATENTS_KEY):
        patched.add_wrapper_with_key(wrapper_type, REFERENCE_LATENTS_KEY, refuse_reference_latents)
    if foreign:
        _LOG.warning(
            "LumiX: %d FLUX blocks already carry another node's block-replace patch (%s%s). LumiX "
            "runs inside them as their original block; a patch that does not call its original "
            "block bypasses LumiX there.", len(foreign), ", ".join(foreign[:3]), ", ..." if len(foreign) > 3 else "")
    return patched
