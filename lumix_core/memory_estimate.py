"""How much memory a LumiX sampler run needs, counted from its sizes before anything is allocated.

4096x4096 with 64 scenes is within the sampler's limits but needs far more memory than any machine
has; without a guard it allocates until the process dies. The count (bytes):

- host (CPU memory; ComfyUI keeps latents and images there):
    HOST_LATENT_COPIES float32 latents per map (zero latent, noise, result, held clean latent)
    + IMAGE_COPIES float32 RGB images per map at full size (the VAE's output and its clamped copy);
- device (where the model runs), per model call:
    SAMPLER_LATENT_COPIES float32 latents per map (the sampler's x, denoised, derivative, model output)
    + ACTIVATION_WIDTHS x hidden values per token at the model's activation precision, for every map
      and every condition batched in the call (tokens = (H/16)(W/16) image + text tokens).
  ComfyUI batches cond and uncond together when memory allows and runs them one after the other
  when it does not, so the peak counts both (cfg != 1) and the minimum one condition.

ACTIVATION_WIDTHS counts a single-stream FLUX block at its widest (input, modulated input, linear1's
qkv + mlp output (7), q/k/v after norm and RoPE (3), attention output, MLP activation (4), the concat
before linear2 (5), linear2 output, LumiX's K/V delta (2) and the residual: 25). Attention itself runs in
ComfyUI's memory-bounded kernels and is not counted beyond this. Model weights are not counted: ComfyUI
loads them partially when memory is short. The estimate is deliberately a lower bound of what a run
needs, so a refusal is certain to be right; a run it allows can still be tight.
"""
from __future__ import annotations

from dataclasses import dataclass

from .maps import MAP_COUNT

FLOAT32_BYTES = 4
HOST_LATENT_COPIES = 4
IMAGE_COPIES = 2
SAMPLER_LATENT_COPIES = 4
ACTIVATION_WIDTHS = 25
DEFAULT_TEXT_TOKENS = 512
GIB = 1024 ** 3


@dataclass(frozen=True)
class SamplerMemory:
    host_bytes: int            # latents and decoded images in CPU memory
    device_bytes: int          # the peak of one model call, conditions batched together
    device_minimum_bytes: int  # one model call with one condition (what ComfyUI falls back to)


def estimate_sampler_memory(width: int, height: int, scenes: int, cfg: float, *, maps: int = MAP_COUNT,
                            latent_channels: int = 16, hidden: int = 3072, activation_bytes: int = 2,
                            text_tokens: int = DEFAULT_TEXT_TOKENS) -> SamplerMemory:
    """The memory a run needs (see the module's count); activation_bytes: 2 for bf16/fp16, 4 for fp32."""
    latents = scenes * maps
    latent_bytes = latents * latent_channels * (height // 8) * (width // 8) * FLOAT32_BYTES
    image_bytes = latents * height * width * 3 * FLOAT32_BYTES
    tokens = (height // 16) * (width // 16) + text_tokens
    one_condition = latents * tokens * hidden * ACTIVATION_WIDTHS * activation_bytes
    conditions = 1 if cfg == 1.0 else 2
    state = SAMPLER_LATENT_COPIES * latent_bytes
    return SamplerMemory(host_bytes=HOST_LATENT_COPIES * latent_bytes + IMAGE_COPIES * image_bytes,
                         device_bytes=state + conditions * one_condition,
                         device_minimum_bytes=state + one_condition)


def fits(memory: SamplerMemory, device_free: int, host_free: int, shared: bool) -> bool:
    """Whether the minimum of a run fits; `shared`: the model runs on the CPU, one pool for both."""
    if shared:
        return memory.host_bytes + memory.device_minimum_bytes <= host_free
    return memory.host_bytes <= host_free and memory.device_minimum_bytes <= device_free


class SamplerMemoryError(ValueError):
    """A run that cannot fit; the message says how much it needs, what is free and what would fit."""


def check_sampler_memory(width: int, height: int, scenes: int, cfg: float, device_free: int, host_free: int,
                         shared: bool, **sizes) -> SamplerMemory:
    """The estimate, or SamplerMemoryError (before anything is allocated) naming what would fit."""
    memory = estimate_sampler_memory(width, height, scenes, cfg, **sizes)
    if fits(memory, device_free, host_free, shared):
        return memory
    advice = _advice(width, height, scenes, lambda w, h, s: fits(estimate_sampler_memory(w, h, s, cfg, **sizes),
                                                                  device_free, host_free, shared))
    if shared:
        need = f"{(memory.host_bytes + memory.device_minimum_bytes) / GIB:.1f} GiB of memory"
        have = f"{host_free / GIB:.1f} GiB is free"
    else:
        need = (f"{memory.device_minimum_bytes / GIB:.1f} GiB on the GPU and {memory.host_bytes / GIB:.1f} GiB "
                "of system memory")
        have = f"{device_free / GIB:.1f} GiB and {host_free / GIB:.1f} GiB are free"
    raise SamplerMemoryError(
        f"LumiX: {scenes} scene(s) of {width}x{height} ({scenes * MAP_COUNT} maps) need at least {need}, but only "
        f"{have}. {advice}")


def check_latent_memory(width: int, height: int, scenes: int, host_free: int, **sizes) -> int:
    """The host part of the count (latents and decoded images; where no model is known, as in LumiX
    Empty Latent), or SamplerMemoryError naming what would fit. Returns the bytes needed."""
    def need(w, h, s):
        return estimate_sampler_memory(w, h, s, 1.0, **sizes).host_bytes
    needed = need(width, height, scenes)
    if needed <= host_free:
        return needed
    advice = _advice(width, height, scenes, lambda w, h, s: need(w, h, s) <= host_free)
    raise SamplerMemoryError(
        f"LumiX: {scenes} scene(s) of {width}x{height} ({scenes * MAP_COUNT} maps) need at least "
        f"{needed / GIB:.1f} GiB of system memory for their latents and decoded maps (the model's own "
        f"memory not counted), but only {host_free / GIB:.1f} GiB is free. {advice}")


def _advice(width: int, height: int, scenes: int, fits_run) -> str:
    """What would fit, for a run of `scenes` that does not: fewer scenes, else a smaller size, else
    nothing. fits_run(width, height, scenes) says whether a run fits."""
    fitting_scenes = next((s for s in range(scenes - 1, 0, -1) if fits_run(width, height, s)), 0)
    if fitting_scenes:
        return f"Set scenes to {fitting_scenes} (and run several times), or make the images smaller."
    size = _largest_size(width, height, lambda w, h: fits_run(w, h, 1))
    return (f"Even one scene does not fit: set width x height to {size[0]}x{size[1]} or less."
            if size else "Not even one 16x16 scene fits: free memory (close other programs or models).")


def _largest_size(width, height, fits_one) -> tuple[int, int] | None:
    """The largest (width, height), multiples of 16 at about the same aspect ratio, where fits_one(w, h)."""
    for step in range(max(width, height) // 16, 0, -1):
        scale = 16 * step / max(width, height)
        w, h = max(16, int(width * scale) // 16 * 16), max(16, int(height * scale) // 16 * 16)
        if fits_one(w, h):
            return w, h
    return None
