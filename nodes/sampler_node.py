"""LumiX Intrinsic Sampler: the all-in-one node. A thin composition of the steps in sampling_steps
(the same ones the composable nodes run): empty latent, given maps held, scene noise, sigmas,
sampling with the five-map preview, decoding into the five maps."""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.v0_0_2 import io

from ..lumix_core import MAP_COUNT, MAP_NAMES, MAPS
from ..lumix_core.finite_check import check_finite_settings
from ..lumix_core.prompt_length import long_prompt_warning
from ..lumix_core.schedule import REFERENCE_PHOTO_SIZE, size_for_photo
from . import categories
from .memory_guard import check_memory
from .sampling_steps import (
    HELD_GUIDANCE, HELD_GUIDANCE_REFERENCE, HELD_GUIDANCE_TOOLTIP, RESIZE_COVER, RESIZE_STRETCH, RESIZE_TOOLTIP, RESIZES,
    SCHEDULE_REFERENCE, SCHEDULES, SceneNoise, check_given_maps, check_lumix_model, check_multiple_of_16, check_run_size,
    decode_maps, empty_latent, five_map_callback, hold_given_maps, prepare_given_map, resize_maps, sampling_sigmas, warn_user)

SIZE_FROM_GIVEN = "from the given map (aspect kept, area budget)"
SIZE_EXPLICIT = "width x height"
SIZES = [SIZE_FROM_GIVEN, SIZE_EXPLICIT]
OUTPUT_SAMPLED = "sampled size"
OUTPUT_ORIGINAL = "given map's original size"
OUTPUT_SIZES = [OUTPUT_SAMPLED, OUTPUT_ORIGINAL]
SCHEDULE_TOOLTIP = (
    "reference: the sigmas of the LumiX reference for this node's width x height and steps (its FLUX shift, "
    "exact for every step count; the `scheduler` input is then unused). 'model sampling + scheduler': the "
    "model's own ModelSamplingFlux shift with the `scheduler` input, as KSampler does.")


def _check_inputs(model, width, height, scenes, given):
    """Refuses what cannot run (given maps are normalised in place first, before any size is derived
    from them); returns a warning for the user or None."""
    warning = check_lumix_model(model)
    check_run_size(width, height, scenes)
    check_given_maps(given, scenes)
    check_multiple_of_16(width, height)
    return warning


def sampled_size(given, width, height, size_from, area_width, area_height):
    """(width, height) to sample at: the first given map's aspect within the area budget, or width x height."""
    if given and size_from == SIZE_FROM_GIVEN:
        first = next(iter(given.values()))
        return size_for_photo(first.shape[2], first.shape[1], area_width, area_height)
    if size_from not in SIZES:
        raise ValueError(f"LumiX: unknown held_maps_size {size_from!r}; choose one of {SIZES}.")
    return width, height


class LumiXSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        map_inputs = [
            io.Image.Input(spec.name, optional=True,
                           tooltip=f"Optional {spec.name} ({spec.meaning}). A given map is held clean (VAE-encoded, "
                                   f"timestep 0, never updated) and the others are generated around it; one "
                                   f"image per scene.")
            for spec in MAPS
        ]
        return io.Schema(
            node_id="LumiXSampler",
            display_name="LumiX Intrinsic Sampler",
            category=categories.SAMPLING,
            description="Samples the five LumiX maps of each scene together (albedo, irradiance, color, depth, "
                        "normal) with the reference's schedule. Connect a color image to decompose a photo; leave "
                        "all maps unconnected to generate from text. The preview shows the five maps of the first "
                        "scene side by side.",
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1-dev patched by the LumiX Tensor LoRA Loader."),
                io.Conditioning.Input("positive", tooltip="The scene prompt (through FluxGuidance 3.5 as the reference)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt for true CFG; unused when cfg is 1.0 and, "
                                                          "by default, when maps are given."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Scene s of the batch uses seed + s, so a scene can be re-made alone."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="50 as the reference."),
                io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="True classifier-free guidance for text to maps (3.0 as the reference). "
                                       "1.0 skips the negative pass. With given maps the reference runs no CFG: "
                                       "see held_maps_guidance."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="euler as the reference; every ComfyUI sampler works."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="Used only with schedule 'model sampling + scheduler'."),
                io.Int.Input("width", default=512, min=16, max=4096, step=16,
                             tooltip="Multiple of 16; LumiX was trained at 512. With given maps the size comes "
                                     "from the map by default (see held_maps_size)."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16,
                             tooltip="Multiple of 16; LumiX was trained at 512."),
                io.Int.Input("scenes", default=1, min=1, max=64, tooltip="Scenes per run; each makes five maps."),
                io.Boolean.Input("shared_noise", default=True,
                                 tooltip="Start every map of a scene from the same noise, as the reference does."),
                *map_inputs,
                io.Combo.Input("schedule", options=SCHEDULES, default=SCHEDULE_REFERENCE, optional=True,
                               tooltip=SCHEDULE_TOOLTIP),
                io.Combo.Input("held_maps_guidance", options=HELD_GUIDANCE, default=HELD_GUIDANCE_REFERENCE,
                               optional=True, tooltip=HELD_GUIDANCE_TOOLTIP),
                io.Combo.Input("held_maps_size", options=SIZES, default=SIZE_FROM_GIVEN, optional=True,
                               tooltip="With given maps: sample at the first given map's aspect ratio within "
                                       "area_width x area_height (sides multiples of 16; a 4:3 photo gets the "
                                       "reference's 1536x1152), or at width x height."),
                io.Int.Input("area_width", default=REFERENCE_PHOTO_SIZE[0], min=16, max=8192, step=16, optional=True,
                             tooltip="Area budget for held_maps_size 'from the given map' (the reference's 1536x1152)."),
                io.Int.Input("area_height", default=REFERENCE_PHOTO_SIZE[1], min=16, max=8192, step=16, optional=True,
                             tooltip="Area budget for held_maps_size 'from the given map'."),
                io.Combo.Input("held_maps_resize", options=RESIZES, default=RESIZE_STRETCH, optional=True,
                               tooltip=RESIZE_TOOLTIP),
                io.Combo.Input("output_size", options=OUTPUT_SIZES, default=OUTPUT_SAMPLED, optional=True,
                               tooltip="With given maps: return every map at the sampled size, or stretched back to "
                                       "the given map's original size (the given map then comes back as given)."),
            ],
            outputs=[
                *[io.Image.Output(f"{spec.name}_image", display_name=spec.name, tooltip=spec.meaning) for spec in MAPS],
                io.Latent.Output("latent", display_name="latent",
                                 tooltip=f"All scenes x {MAP_COUNT} latents, map index fastest ({', '.join(MAP_NAMES)})."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, seed, steps, cfg, sampler_name, scheduler, width, height,
                scenes, shared_noise, albedo=None, irradiance=None, color=None, depth=None, normal=None,
                schedule=SCHEDULE_REFERENCE, held_maps_guidance=HELD_GUIDANCE_REFERENCE,
                held_maps_size=SIZE_FROM_GIVEN, area_width=REFERENCE_PHOTO_SIZE[0],
                area_height=REFERENCE_PHOTO_SIZE[1], held_maps_resize=RESIZE_STRETCH,
                output_size=OUTPUT_SAMPLED) -> io.NodeOutput:
        given = {name: image for name, image in zip(MAP_NAMES, (albedo, irradiance, color, depth, normal))
                 if image is not None}
        check_finite_settings("LumiX Intrinsic Sampler", cfg=cfg)
        if given and output_size == OUTPUT_ORIGINAL and held_maps_resize == RESIZE_COVER:
            raise ValueError("LumiX: output_size \"given map's original size\" stretches the maps back to the photo, "
                             "which only lines up with held_maps_resize 'stretch (as the reference)'; a cropped "
                             "photo cannot be restored. Set held_maps_resize to stretch or output_size to sampled size.")
        warning = _check_inputs(model, width, height, scenes, given)
        width, height = sampled_size(given, width, height, held_maps_size, area_width, area_height)
        no_cfg = bool(given) and held_maps_guidance == HELD_GUIDANCE_REFERENCE  # the negative pass never runs
        check_memory(model, positive, negative, width, height, scenes, 1.0 if no_cfg else cfg)  # before allocating
        # the negative prompt only counts where it is used (true CFG runs)
        long_prompt = long_prompt_warning(positive=positive, **({} if no_cfg or cfg == 1.0 else {"negative": negative}))
        for text in (warning, long_prompt):
            if text:
                warn_user(cls.hidden.unique_id if cls.hidden else None, text)

        latent = empty_latent(model.get_model_object("latent_format").latent_channels, width, height, scenes)
        given_images = {name: prepare_given_map(image, width, height, held_maps_resize, name) for name, image in given.items()}
        model, latent = hold_given_maps(model, vae, latent, given_images, held_maps_guidance)
        sigmas = sampling_sigmas(model, schedule, steps, width, height, sampler_name, scheduler)
        samples = sample_maps(model, SceneNoise(seed, shared_noise), cfg, comfy.samplers.sampler_object(sampler_name),
                              sigmas, positive, negative, latent)

        comfy.model_management.throw_exception_if_processing_interrupted()
        decoded = decode_maps(vae, samples)
        images = [given_images.get(name, decoded[name]).to(decoded[name]) for name in MAP_NAMES]
        if given and output_size == OUTPUT_ORIGINAL:
            first = next(iter(given.values()))
            h, w = first.shape[1], first.shape[2]
            images = [resize_maps(given[name][..., :3].clamp(0, 1).to(image) if name in given else image, w, h)
                      for name, image in zip(MAP_NAMES, images)]
        return io.NodeOutput(*images, {"samples": samples})


def sample_maps(model, noise, cfg, sampler, sigmas, positive, negative, latent: torch.Tensor) -> torch.Tensor:
    """comfy.sample.sample_custom (what SamplerCustomAdvanced with a CFGGuider runs) with the five-map
    preview and ComfyUI's progress bar; returns the sampled latent on the intermediate device."""
    callback = five_map_callback(model, sigmas.shape[-1] - 1)
    samples = comfy.sample.sample_custom(model, noise.generate_noise({"samples": latent}), cfg, sampler, sigmas,
                                         positive, negative, latent, callback=callback,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=noise.seed)
    return samples.to(latent)
