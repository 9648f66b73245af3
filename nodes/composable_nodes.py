"""Composable LumiX nodes, so that core samplers (KSampler, SamplerCustomAdvanced, guiders) run LumiX:
an empty grouped latent, per-scene noise, the reference's sigmas, given maps held on a model copy,
and a split into the five maps. They run the same steps (sampling_steps) as the all-in-one sampler."""
from __future__ import annotations

import torch

from comfy_api.v0_0_2 import io

from ..lumix_core import MAP_COUNT, MAP_NAMES, MAPS
from ..lumix_core.finite_check import check_finite_maps
from ..lumix_core.given_maps import check_given_map, check_tool_map
from ..lumix_core.sampling import split_maps
from ..lumix_core import options
from ..lumix_core.options import (HELD_GUIDANCE_REFERENCE, OUTPUT_SAMPLED, RESIZE_STRETCH, SCHEDULE_REFERENCE,
                                  SIZE_FROM_GIVEN, option_key)
from ..lumix_core.schedule import REFERENCE_PHOTO_SIZE
from . import categories
from .memory_guard import check_latent_host_memory, check_memory
from .sampling_steps import (
    HELD_GUIDANCE, HELD_GUIDANCE_TOOLTIP, RESIZE_TOOLTIP, RESIZES, SceneNoise, check_given_maps,
    check_lumix_model, check_multiple_of_16, check_run_size, decode_maps, empty_latent, given_maps_record,
    hold_given_maps, latent_channels, latent_size, maps_returned, prepare_given_map, sampled_size, sampling_sigmas,
    validate_options, warn_user)

# The text route's memory guard on LumiX Empty Latent assumes true CFG (two passes), as the reference's text run.
ASSUMED_TEXT_CFG = 3.0


class LumiXEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXEmptyLatent",
            display_name="LumiX Empty Latent",
            category=categories.SAMPLING,
            description=f"An empty latent of scenes x {MAP_COUNT} maps (map index fastest: {', '.join(MAP_NAMES)}), "
                        "for core samplers and LumiX Hold Maps. Connect a photo to size it from the photo.",
            inputs=[
                io.Int.Input("width", default=512, min=16, max=4096, step=16, tooltip="Multiple of 16; LumiX was trained at 512."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16, tooltip="Multiple of 16."),
                io.Int.Input("scenes", default=1, min=1, max=64, tooltip="Scenes; each holds five maps."),
                io.Image.Input("photo", optional=True,
                               tooltip="When connected, the size is the photo's aspect ratio within area_width x "
                                       "area_height (sides multiples of 16; a 4:3 photo gets the reference's "
                                       "1536x1152) and width/height are unused."),
                io.Int.Input("area_width", default=REFERENCE_PHOTO_SIZE[0], min=16, max=8192, step=16, optional=True,
                             tooltip="Area budget with a photo (the reference's 1536x1152)."),
                io.Int.Input("area_height", default=REFERENCE_PHOTO_SIZE[1], min=16, max=8192, step=16, optional=True,
                             tooltip="Area budget with a photo."),
                io.Model.Input("model", optional=True,
                               tooltip="The model that will sample this latent (recommended): its latent channels are "
                                       "used, it is checked as the LumiX Intrinsic Sampler checks it (a warning when "
                                       "no LumiX node patched it) and the run's memory is estimated before "
                                       "anything is allocated (assuming true CFG, as the text run)."),
            ],
            outputs=[io.Latent.Output(tooltip="Zeros, scenes x 5 latents (the model's channels; 16 for FLUX).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, width, height, scenes, photo=None, area_width=REFERENCE_PHOTO_SIZE[0],
                area_height=REFERENCE_PHOTO_SIZE[1], model=None) -> io.NodeOutput:
        given = {"photo": check_given_map("photo", photo)} if photo is not None else {}
        width, height = sampled_size(given, width, height, SIZE_FROM_GIVEN, area_width, area_height)
        check_run_size(width, height, scenes)
        check_multiple_of_16(width, height)
        if model is not None:  # the same checks, in the same order, as the LumiX Intrinsic Sampler
            warning = check_lumix_model(model)
            check_memory(model, None, None, width, height, scenes, 1.0 if given else ASSUMED_TEXT_CFG)
            if warning:
                warn_user(cls.hidden.unique_id if cls.hidden else None, warning)
        channels = latent_channels(model)
        check_latent_host_memory(width, height, scenes, channels)  # before allocating, as the sampler's guard
        return io.NodeOutput({"samples": empty_latent(channels, width, height, scenes)})


class LumiXNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXNoise",
            display_name="LumiX Noise",
            category=categories.SAMPLING,
            description="Noise for SamplerCustomAdvanced as the reference draws it: one tensor per scene, "
                        "repeated for its five maps; scene s uses seed + s (the LumiX Intrinsic Sampler's noise).",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Scene s uses seed + s, as the LumiX Intrinsic Sampler."),
                io.Boolean.Input("shared_noise", default=True,
                                 tooltip="Every map of a scene starts from the same noise, as the reference."),
            ],
            outputs=[io.Noise.Output(tooltip="For SamplerCustomAdvanced's noise input.")],
        )

    @classmethod
    def execute(cls, seed, shared_noise) -> io.NodeOutput:
        return io.NodeOutput(SceneNoise(seed, shared_noise))


class LumiXReferenceSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXReferenceSigmas",
            display_name="LumiX Reference Sigmas",
            category=categories.SAMPLING,
            description="The LumiX reference's sigmas (FLUX shift with its image_seq_len = (W//8)*(H//8)//256, "
                        "t = linspace(1, 0, steps + 1)) for SamplerCustomAdvanced. Exact for every step count.",
            inputs=[
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="50 as the reference."),
                io.Int.Input("width", default=512, min=16, max=8192, step=16, tooltip="Unused when a latent is connected."),
                io.Int.Input("height", default=512, min=16, max=8192, step=16, tooltip="Unused when a latent is connected."),
                io.Latent.Input("latent", optional=True, tooltip="Take the size from this latent (set it once)."),
            ],
            outputs=[io.Sigmas.Output(tooltip="For SamplerCustomAdvanced's sigmas input.")],
        )

    @classmethod
    def execute(cls, steps, width, height, latent=None) -> io.NodeOutput:
        if latent is not None:
            width, height = latent_size(latent["samples"])
        return io.NodeOutput(sampling_sigmas(None, SCHEDULE_REFERENCE, steps, width, height))


class LumiXHoldMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXHoldMaps",
            display_name="LumiX Hold Maps",
            category=categories.SAMPLING,
            description="Encodes the given maps into the LumiX latent and returns a model copy that keeps them clean "
                        "(timestep 0, never updated) under any sampler, with the reference's decomposition settings.",
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1-dev patched by the LumiX Tensor LoRA Loader."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Latent.Input("latent", tooltip="From LumiX Empty Latent (its size is the sampled size)."),
                *[io.Image.Input(spec.name, optional=True, tooltip=f"Optional {spec.name}: held clean; one image per scene.")
                  for spec in MAPS],
                io.Combo.Input("held_maps_guidance", options=HELD_GUIDANCE, default=HELD_GUIDANCE_REFERENCE,
                               optional=True, tooltip=HELD_GUIDANCE_TOOLTIP),
                io.Combo.Input("held_maps_resize", options=RESIZES, default=RESIZE_STRETCH, optional=True,
                               tooltip=RESIZE_TOOLTIP),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy; the input model is left as it was."),
                     io.Latent.Output(tooltip="The latent with the given maps encoded.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, held_maps_guidance=HELD_GUIDANCE_REFERENCE, held_maps_resize=RESIZE_STRETCH):
        return validate_options(held_maps_guidance=held_maps_guidance, held_maps_resize=held_maps_resize)

    @classmethod
    def execute(cls, model, vae, latent, albedo=None, irradiance=None, color=None, depth=None, normal=None,
                held_maps_guidance=HELD_GUIDANCE_REFERENCE, held_maps_resize=RESIZE_STRETCH) -> io.NodeOutput:
        given = {name: image for name, image in zip(MAP_NAMES, (albedo, irradiance, color, depth, normal))
                 if image is not None}
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[0] % MAP_COUNT:
            raise ValueError(f"LumiX Hold Maps: the latent holds {samples.shape[0]} latents, not whole scenes of "
                             f"{MAP_COUNT}; start from the LumiX Empty Latent.")
        warning = check_lumix_model(model)
        if samples.shape[1] != latent_channels(model):
            raise ValueError(f"LumiX Hold Maps: the latent has {samples.shape[1]} channels but the model's latents "
                             f"have {latent_channels(model)}; connect the model to LumiX Empty Latent too.")
        held_maps_resize = option_key("held_maps_resize", held_maps_resize)
        held_maps_guidance = option_key("held_maps_guidance", held_maps_guidance)
        check_given_maps(given, samples.shape[0] // MAP_COUNT)
        width, height = latent_size(samples)
        no_cfg = held_maps_guidance == HELD_GUIDANCE_REFERENCE or not given
        check_memory(model, None, None, width, height, samples.shape[0] // MAP_COUNT,
                     1.0 if no_cfg else ASSUMED_TEXT_CFG)  # before encoding
        if warning:
            warn_user(cls.hidden.unique_id if cls.hidden else None, warning)
        images = {name: prepare_given_map(image, width, height, held_maps_resize, name) for name, image in given.items()}
        patched, held = hold_given_maps(model, vae, samples, images, held_maps_guidance)
        return io.NodeOutput(patched, {**latent, "samples": held, **given_maps_record(given, images, held_maps_resize)})


class LumiXSplitMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXSplitMaps",
            display_name="LumiX Split Maps",
            category=categories.SAMPLING,
            description="Splits a LumiX batch (scenes x 5, map index fastest) into the five maps: a decoded IMAGE "
                        "batch, or a LATENT decoded with the VAE (maps given to LumiX Hold Maps then come back exactly as "
                        "given, as from the LumiX Intrinsic Sampler).",
            inputs=[
                io.Image.Input("images", optional=True, tooltip="A decoded batch (e.g. from VAE Decode or a tiled decode)."),
                io.Latent.Input("latent", optional=True, tooltip="A sampled LumiX latent; needs the vae."),
                io.Vae.Input("vae", optional=True, tooltip="Decodes the latent."),
                io.Combo.Input("output_size", options=options.keys("output_size"), default=OUTPUT_SAMPLED, optional=True,
                               tooltip=options.tooltip("output_size", "With maps given to LumiX Hold Maps (the latent "
                                                       "input carries them; decoded images do not):")),
            ],
            outputs=[io.Image.Output(f"{spec.name}_image", display_name=spec.name, tooltip=spec.meaning) for spec in MAPS],
        )

    @classmethod
    def validate_inputs(cls, output_size=OUTPUT_SAMPLED):
        return validate_options(output_size=output_size)

    @classmethod
    def execute(cls, images=None, latent=None, vae=None, output_size=OUTPUT_SAMPLED) -> io.NodeOutput:
        if (images is None) == (latent is None):
            raise ValueError("LumiX Split Maps: connect either images (a decoded batch) or latent (with the vae), "
                             "not both and not neither.")
        if latent is not None:
            if vae is None:
                raise ValueError("LumiX Split Maps: a latent needs the vae to be decoded; connect the FLUX VAE.")
            # the given maps as the sampler returns them (exactly as encoded, or at their own size)
            maps = maps_returned(decode_maps(vae, latent["samples"]), latent, output_size)
        else:
            if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[0] % MAP_COUNT == 0:
                check_finite_maps(images, "the images batch", "Something before LumiX Split Maps produced them "
                                  "(the model, the checkpoint or strength, or the VAE); fix that node.")
            maps = split_maps(check_tool_map("LumiX Split Maps", "images", images), MAP_COUNT)
        return io.NodeOutput(*(maps[name] for name in MAP_NAMES))
