"""LumiX Intrinsic Sampler: the all-in-one node. A thin composition of the steps in sampling_steps
(the same ones the composable nodes run): empty latent, given maps held, scene noise, sigmas,
sampling with the five-map preview, decoding into the five maps."""
from __future__ import annotations

from typing import NamedTuple

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.v0_0_2 import io

from ..lumix_core import MAP_COUNT, MAP_NAMES, MAPS
from ..lumix_core.finite_check import check_finite_settings
from ..lumix_core import options
from ..lumix_core.options import (HELD_GUIDANCE_REFERENCE, OUTPUT_SAMPLED, RESIZE_STRETCH, SCHEDULE_REFERENCE,
                                  SIZE_FROM_GIVEN, option_key)
from ..lumix_core.prompt_length import long_prompt_warning
from ..lumix_core.schedule import REFERENCE_PHOTO_SIZE
from . import categories
from .memory_guard import check_memory
from .sampling_steps import (
    HELD_GUIDANCE, HELD_GUIDANCE_TOOLTIP, RESIZE_TOOLTIP, RESIZES, SCHEDULES, SceneNoise, check_given_maps,
    check_lumix_model, check_multiple_of_16, check_output_size, check_run_size, decode_maps, empty_latent,
    five_map_callback, given_maps_record, hold_given_maps, latent_channels, maps_returned, prepare_given_map,
    sampled_size, sampling_sigmas, validate_options, warn_user)

SIZES = options.keys("held_maps_size")
OUTPUT_SIZES = options.keys("output_size")
SCHEDULE_TOOLTIP = options.tooltip("schedule")
SIZE_TOOLTIP = options.tooltip("held_maps_size", "With given maps, the sampled size:")
OUTPUT_SIZE_TOOLTIP = options.tooltip("output_size", "With given maps:")


def _check_inputs(model, width, height, scenes, given):
    """Refuses what cannot run (given maps are normalised in place first, before any size is derived
    from them); returns a warning for the user or None."""
    warning = check_lumix_model(model)
    check_run_size(width, height, scenes)
    check_given_maps(given, scenes)
    check_multiple_of_16(width, height)
    return warning


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
                               tooltip=SIZE_TOOLTIP),
                io.Int.Input("area_width", default=REFERENCE_PHOTO_SIZE[0], min=16, max=8192, step=16, optional=True,
                             tooltip="Area budget for held_maps_size from_given (the reference's 1536x1152)."),
                io.Int.Input("area_height", default=REFERENCE_PHOTO_SIZE[1], min=16, max=8192, step=16, optional=True,
                             tooltip="Area budget for held_maps_size from_given."),
                io.Combo.Input("held_maps_resize", options=RESIZES, default=RESIZE_STRETCH, optional=True,
                               tooltip=RESIZE_TOOLTIP),
                io.Combo.Input("output_size", options=OUTPUT_SIZES, default=OUTPUT_SAMPLED, optional=True,
                               tooltip=OUTPUT_SIZE_TOOLTIP),
            ],
            outputs=[
                *[io.Image.Output(f"{spec.name}_image", display_name=spec.name, tooltip=spec.meaning) for spec in MAPS],
                io.Latent.Output("latent", display_name="latent",
                                 tooltip=f"All scenes x {MAP_COUNT} latents, map index fastest ({', '.join(MAP_NAMES)})."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, schedule=SCHEDULE_REFERENCE, held_maps_guidance=HELD_GUIDANCE_REFERENCE,
                        held_maps_size=SIZE_FROM_GIVEN, held_maps_resize=RESIZE_STRETCH, output_size=OUTPUT_SAMPLED):
        """The option keys and the values shipped before them (ComfyUI's own list check is skipped for these)."""
        return validate_options(schedule=schedule, held_maps_guidance=held_maps_guidance,
                                held_maps_size=held_maps_size, held_maps_resize=held_maps_resize,
                                output_size=output_size)

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
        held_maps_guidance = option_key("held_maps_guidance", held_maps_guidance)
        held_maps_resize = option_key("held_maps_resize", held_maps_resize)
        output_size = check_output_size(given, output_size, held_maps_resize)
        warning = _check_inputs(model, width, height, scenes, given)
        width, height = sampled_size(given, width, height, held_maps_size, area_width, area_height)
        no_cfg = bool(given) and held_maps_guidance == HELD_GUIDANCE_REFERENCE  # the negative pass never runs
        check_memory(model, positive, negative, width, height, scenes, 1.0 if no_cfg else cfg)  # before allocating
        # the negative prompt only counts where it is used (true CFG runs)
        long_prompt = long_prompt_warning(positive=positive, **({} if no_cfg or cfg == 1.0 else {"negative": negative}))
        for text in (warning, long_prompt):
            if text:
                warn_user(cls.hidden.unique_id if cls.hidden else None, text)

        given_images = {name: prepare_given_map(image, width, height, held_maps_resize, name) for name, image in given.items()}
        sampled = sample_five_maps(model, vae, positive, negative, seed, steps, cfg, sampler_name, scheduler, width,
                                   height, scenes, shared_noise, schedule, given_images, held_maps_guidance)
        record = given_maps_record(given, given_images, held_maps_resize)
        images = maps_returned(sampled.maps, record, output_size)
        return io.NodeOutput(*(images[name] for name in MAP_NAMES), {"samples": sampled.samples, **record})


class SampledMaps(NamedTuple):
    samples: torch.Tensor  # the sampled latent [scenes * 5, C, h, w], map index fastest
    maps: dict  # {map name: [scenes, H, W, 3]} in 0..1, as decoded (given maps as their VAE round trip)


def sample_five_maps(model, vae, positive, negative, seed: int, steps: int, cfg: float = 1.0,
                     sampler_name: str = "euler", scheduler: str = "simple", width: int = 512, height: int = 512,
                     scenes: int = 1, shared_noise: bool = True, schedule: str = SCHEDULE_REFERENCE,
                     given_images: dict | None = None, held_maps_guidance: str = HELD_GUIDANCE_REFERENCE,
                     previews: bool = True) -> SampledMaps:
    """The five maps of `scenes` scenes for a conditioning: empty latent, given maps held (prepared images,
    prepare_given_map; none for text to maps), scene noise, sigmas, sampling, decoding. What the LumiX
    Intrinsic Sampler runs after its checks, and what training validation runs. `previews` False: no
    progress bar, no five-map preview and no console bar (work inside another node's progress, e.g. the
    Trainer's); Cancel still stops it at the next step. Checks nothing the caller is meant to check."""
    latent = empty_latent(latent_channels(model), width, height, scenes)
    model, latent = hold_given_maps(model, vae, latent, given_images or {}, held_maps_guidance)
    sigmas = sampling_sigmas(model, schedule, steps, width, height, sampler_name, scheduler)
    samples = sample_maps(model, SceneNoise(seed, shared_noise), cfg, comfy.samplers.sampler_object(sampler_name),
                          sigmas, positive, negative, latent, previews=previews)
    comfy.model_management.throw_exception_if_processing_interrupted()
    return SampledMaps(samples, decode_maps(vae, samples))


def _check_cancel(step, x0, x, total_steps):
    """A sampler callback without a progress bar: raises ComfyUI's Cancel (the flag its /interrupt sets),
    which the progress hook would otherwise raise inside ProgressBar.update."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def sample_maps(model, noise, cfg, sampler, sigmas, positive, negative, latent: torch.Tensor,
                previews: bool = True) -> torch.Tensor:
    """comfy.sample.sample_custom (what SamplerCustomAdvanced with a CFGGuider runs) with the five-map
    preview and ComfyUI's progress bar (`previews` False: neither, only the Cancel check each step);
    returns the sampled latent on the intermediate device."""
    callback = five_map_callback(model, sigmas.shape[-1] - 1) if previews else _check_cancel
    samples = comfy.sample.sample_custom(model, noise.generate_noise({"samples": latent}), cfg, sampler, sigmas,
                                         positive, negative, latent, callback=callback,
                                         disable_pbar=not (previews and comfy.utils.PROGRESS_BAR_ENABLED),
                                         seed=noise.seed)
    return samples.to(latent)
