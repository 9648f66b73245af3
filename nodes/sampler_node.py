"""LumiX Intrinsic Sampler: five batched latents per scene, per-map timesteps, five image outputs."""
from __future__ import annotations

import logging

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.v0_0_2 import io

from ..lumix_core import MAP_COUNT, MAP_NAMES, MAPS
from ..lumix_core.given_maps import check_given_map
from ..lumix_core.sampling import held_map_mask, hold_maps, scene_noise, split_maps
from .flux_model import NotFluxError, flux_diffusion_model
from .memory_guard import check_memory
from . import categories
from .patch import lumix_settings

_LOG = logging.getLogger("LumiX")
HELD_MAPS_WRAPPER_KEY = "lumix_held_maps"
RESIZE_POLICY = "resized to cover width x height (bicubic) and centre-cropped; alpha is dropped"


class HeldMapsWrapper:
    """APPLY_MODEL wrapper: held maps enter the model as their clean latent at timestep 0.

    With sigma 0 the model's denoised output for them is exactly that clean latent, so the
    sampler never pulls them anywhere; every other map is sampled as usual, in the same batch.
    """

    def __init__(self, held: torch.Tensor, clean: torch.Tensor):
        self.held, self.clean = held, clean

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        x, t = hold_maps(x, t, self.held, self.clean)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def _prepare_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[n, H, W, C] in 0..1 -> [n, height, width, 3], RESIZE_POLICY."""
    rgb = image[..., :3]
    if rgb.shape[1] != height or rgb.shape[2] != width:
        rgb = comfy.utils.common_upscale(rgb.movedim(-1, 1), width, height, "bicubic", "center").movedim(1, -1)
    return rgb.clamp(0.0, 1.0)


def _check_inputs(model, width, height, scenes, given):
    try:
        flux_diffusion_model(model)
    except NotFluxError as exc:
        raise ValueError(f"LumiX: {exc}") from None
    if width % 16 or height % 16:
        raise ValueError(f"LumiX: width and height must be multiples of 16 (got {width}x{height}); "
                         f"try {round(width / 16) * 16}x{round(height / 16) * 16}.")
    if len(given) == MAP_COUNT:
        raise ValueError("LumiX: all five maps are given, so there is nothing to generate. Disconnect the "
                         "map(s) you want the sampler to produce (for photo decomposition, give only color).")
    for name, image in given.items():
        given[name] = image = check_given_map(name, image, (width, height))  # normalised in place: RGB 0..1
        if image.ndim != 4:
            raise ValueError(f"LumiX: the {name} input is not an IMAGE batch (shape {tuple(image.shape)}).")
        if image.shape[0] != scenes:
            raise ValueError(f"LumiX: the {name} input holds {image.shape[0]} image(s) but scenes is {scenes}; "
                             f"each image is one scene, so set scenes to {image.shape[0]} (or batch "
                             f"{scenes} images).")
    settings = lumix_settings(model)
    if settings is not None and settings.maps_per_scene != MAP_COUNT:
        raise ValueError(f"LumiX: the model is patched for {settings.maps_per_scene} maps per scene; the "
                         f"sampler makes {MAP_COUNT}. Set maps_per_scene to {MAP_COUNT}.")
    if settings is None or (not settings.query_broadcast and not settings.adapters):
        _LOG.warning("LumiX Intrinsic Sampler: the model is not patched by a LumiX node, so the five maps "
                     "are sampled independently and will NOT be aligned. Add 'LumiX Tensor LoRA Loader' "
                     "between the model loader and this sampler.")


class LumiXSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        map_inputs = [
            io.Image.Input(spec.name, optional=True,
                           tooltip=f"Optional {spec.name} ({spec.meaning}). A given map is held clean (VAE-encoded, "
                                   f"timestep 0, never updated) and the others are generated around it; one "
                                   f"image per scene, {RESIZE_POLICY}.")
            for spec in MAPS
        ]
        return io.Schema(
            node_id="LumiXSampler",
            display_name="LumiX Intrinsic Sampler",
            category=categories.SAMPLING,
            description="Samples the five LumiX maps of each scene together (albedo, irradiance, color, depth, "
                        "normal). Connect a color image to decompose a photo; leave all maps unconnected to "
                        "generate from text.",
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1-dev patched by the LumiX Tensor LoRA Loader."),
                io.Conditioning.Input("positive", tooltip="The scene prompt (through FluxGuidance 3.5 as the reference)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt for true CFG; ignored when cfg is 1.0."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Scene s of the batch uses seed + s, so a scene can be re-made alone."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="50 as the reference."),
                io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="True classifier-free guidance (3.0 as the reference). 1.0 skips the negative "
                                       "pass; use 1.0 for photo decomposition, as the reference does."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler"),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple"),
                io.Int.Input("width", default=512, min=16, max=4096, step=16, tooltip="Multiple of 16; LumiX was trained at 512."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16, tooltip="Multiple of 16; LumiX was trained at 512."),
                io.Int.Input("scenes", default=1, min=1, max=64, tooltip="Scenes per run; each makes five maps."),
                io.Boolean.Input("shared_noise", default=True,
                                 tooltip="Start every map of a scene from the same noise, as the reference does."),
                *map_inputs,
            ],
            outputs=[
                *[io.Image.Output(f"{spec.name}_image", display_name=spec.name, tooltip=spec.meaning) for spec in MAPS],
                io.Latent.Output("latent", display_name="latent",
                                 tooltip=f"All scenes x {MAP_COUNT} latents, map index fastest ({', '.join(MAP_NAMES)})."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, seed, steps, cfg, sampler_name, scheduler, width, height,
                scenes, shared_noise, albedo=None, irradiance=None, color=None, depth=None, normal=None) -> io.NodeOutput:
        given = {name: image for name, image in zip(MAP_NAMES, (albedo, irradiance, color, depth, normal))
                 if image is not None}
        _check_inputs(model, width, height, scenes, given)
        check_memory(model, positive, negative, width, height, scenes, cfg)  # refuse before allocating

        channels = model.get_model_object("latent_format").latent_channels
        latent_shape = (channels, height // 8, width // 8)
        batch = scenes * MAP_COUNT
        latent = torch.zeros((batch, *latent_shape))
        given_images = {name: _prepare_image(image, width, height) for name, image in given.items()}
        for name, image in given_images.items():
            encoded = vae.encode(image)
            if tuple(encoded.shape[1:]) != latent_shape:
                raise ValueError(f"LumiX: the VAE turned the {name} image into latents of shape "
                                 f"{tuple(encoded.shape[1:])}, not {latent_shape}; connect the FLUX VAE (ae.safetensors).")
            latent[MAP_NAMES.index(name)::MAP_COUNT] = encoded.to(latent)

        noise = scene_noise(latent_shape, seed, scenes, MAP_COUNT, shared=shared_noise)
        sampling_model = model
        held = held_map_mask([name in given for name in MAP_NAMES], scenes)
        if given:
            sampling_model = model.clone()
            clean = sampling_model.model.process_latent_in(latent)  # the model's own latent space
            sampling_model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                                HELD_MAPS_WRAPPER_KEY, HeldMapsWrapper(held, clean))

        callback = latent_preview.prepare_callback(sampling_model, steps)
        samples = comfy.sample.sample(sampling_model, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                      latent, denoise=1.0, callback=callback,
                                      disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        samples = samples.to(latent)
        samples[held] = latent[held]  # exactly the encoding, not its round trip through the sampler

        comfy.model_management.throw_exception_if_processing_interrupted()
        decoded = split_maps(vae.decode(samples)[..., :3].clamp(0.0, 1.0), MAP_COUNT)
        images = [given_images.get(name, decoded[name]).to(decoded[name]) for name in MAP_NAMES]
        return io.NodeOutput(*images, {"samples": samples})
