"""The steps of a LumiX run, one implementation each, shared by the all-in-one LumiX Intrinsic
Sampler and the composable nodes (empty latent, hold maps, noise, sigmas, split): an empty grouped
latent, given maps prepared and held, per-scene noise, the reference's sigmas, a five-map preview,
decoding into the five maps."""
from __future__ import annotations

import logging
import sys

import torch

import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import latent_preview

from ..lumix_core import MAP_COUNT, MAP_NAMES
from ..lumix_core.finite_check import MODEL_ADVICE, VAE_ADVICE, check_finite_maps
from ..lumix_core.given_maps import check_cover_crop, check_given_map
from ..lumix_core.map_resize import centre_crop_box, geometry_safe_resize, reference_resize
from ..lumix_core.sampling import held_map_mask, hold_maps, scene_noise, split_maps, tile_scene
from ..lumix_core.schedule import reference_sigmas
from .flux_model import NotFluxError, flux_diffusion_model
from .patch import lumix_settings

_LOG = logging.getLogger("LumiX")

HELD_MAPS_WRAPPER_KEY = "lumix_held_maps"

# Choices shared by the nodes (their values are what API workflows store).
SCHEDULE_REFERENCE = "reference"
SCHEDULE_MODEL = "model sampling + scheduler"
SCHEDULES = [SCHEDULE_REFERENCE, SCHEDULE_MODEL]
HELD_GUIDANCE_REFERENCE = "reference: guidance 1.0, no CFG"
HELD_GUIDANCE_AS_SET = "as connected: conditioning guidance and cfg"
HELD_GUIDANCE = [HELD_GUIDANCE_REFERENCE, HELD_GUIDANCE_AS_SET]
HELD_GUIDANCE_TOOLTIP = (
    "With given (held) maps the reference hard-codes guidance embed 1.0 and runs no CFG (its negative "
    "prompt is prepared but unused). 'reference' does the same whatever the conditioning's FluxGuidance "
    "and the sampler's cfg say; 'as connected' uses those instead.")
RESIZE_STRETCH = "stretch (as the reference)"
RESIZE_COVER = "cover and centre-crop"
RESIZE_GEOMETRY = "stretch, depth/normal geometry-safe"
RESIZES = [RESIZE_STRETCH, RESIZE_COVER, RESIZE_GEOMETRY]
RESIZE_TOOLTIP = ("How a given map is fitted to the sampled size. 'stretch (as the reference)': stretched with "
                  "Pillow's antialiased bicubic on the 8-bit image, byte for byte the reference's resize, for "
                  "every map. 'cover and centre-crop': the same filter after a centre crop to the sampled aspect. "
                  "'geometry-safe': stretched, colour maps as the reference, depth with antialiased bilinear "
                  "(no ringing at edges), normals renormalised to unit vectors. Alpha is dropped.")


# ---- checks and warnings -------------------------------------------------------------------------

# Short enough for the two lines the frontend's text box on the node shows without scrolling.
UNPATCHED_WARNING = ("LumiX: model not patched, so the five maps will NOT be aligned. "
                     "Add 'LumiX Tensor LoRA Loader' before the sampler.")


def check_lumix_model(model) -> str | None:
    """Refuses a model LumiX cannot run on; returns a warning for one it runs on badly (else None)."""
    try:
        flux_diffusion_model(model)
    except NotFluxError as exc:
        raise ValueError(f"LumiX: {exc}") from None
    settings = lumix_settings(model)
    if settings is not None and settings.maps_per_scene != MAP_COUNT:
        raise ValueError(f"LumiX: the model is patched for {settings.maps_per_scene} maps per scene; the "
                         f"sampler makes {MAP_COUNT}. Set maps_per_scene to {MAP_COUNT}.")
    if settings is None or (not settings.query_broadcast and not settings.adapters):
        return UNPATCHED_WARNING
    return None


def check_given_maps(given: dict[str, torch.Tensor], scenes: int) -> None:
    """Refuses unusable given maps and normalises the rest in place (RGB float 0..1, GIVEN_MAP_RULES)."""
    if len(given) == MAP_COUNT:
        raise ValueError("LumiX: all five maps are given, so there is nothing to generate. Disconnect the "
                         "map(s) you want the sampler to produce (for photo decomposition, give only color).")
    for name, image in given.items():
        given[name] = image = check_given_map(name, image)
        if image.shape[0] != scenes:
            raise ValueError(f"LumiX: the {name} input holds {image.shape[0]} image(s) but scenes is {scenes}; "
                             f"each image is one scene, so set scenes to {image.shape[0]} (or batch "
                             f"{scenes} images).")


def warn_user(node_id, text: str) -> None:
    """A warning in the server log and, while ComfyUI's server runs, as text on the node in the UI."""
    _LOG.warning(text)
    server_module = sys.modules.get("server")  # ComfyUI's server.py, loaded only where a server runs
    server = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if server is not None and node_id is not None:
        server.send_progress_text(text, node_id)


# ---- latent --------------------------------------------------------------------------------------

def check_run_size(width: int, height: int, scenes: int) -> None:
    """Refuses sizes below the widgets' minimums (a value linked from another node skips ComfyUI's check)."""
    if scenes < 1:
        raise ValueError(f"LumiX: scenes is {scenes}; set at least 1 (a value linked from another node skips the "
                         "widget's minimum).")
    if width < 16 or height < 16:
        raise ValueError(f"LumiX: the size is {width}x{height}; width and height must be at least 16 (multiples "
                         "of 16; a value linked from another node skips the widget's minimum).")


def check_multiple_of_16(width: int, height: int) -> None:
    """Refuses sides a FLUX latent cannot hold (8x VAE downsampling, 2x2 patches), suggesting the nearest."""
    if width % 16 or height % 16:
        raise ValueError(f"LumiX: width and height must be multiples of 16 (got {width}x{height}); "
                         f"try {round(width / 16) * 16}x{round(height / 16) * 16}.")


def empty_latent(channels: int, width: int, height: int, scenes: int) -> torch.Tensor:
    """Zeros [scenes * 5, C, height/8, width/8], map index fastest."""
    return torch.zeros((scenes * MAP_COUNT, channels, height // 8, width // 8))


def latent_size(latent: torch.Tensor) -> tuple[int, int]:
    """(width, height) in pixels of a [B, C, h, w] latent."""
    return latent.shape[-1] * 8, latent.shape[-2] * 8


# ---- given maps ----------------------------------------------------------------------------------

def prepare_given_map(image: torch.Tensor, width: int, height: int, resize: str = RESIZE_STRETCH,
                      name: str = "given") -> torch.Tensor:
    """A given map as the sampler encodes it: [n, H, W, C] in 0..1 -> [n, height, width, 3]
    (RGB, clamped, fitted to width x height as `resize` says, with the reference's filter; see
    lumix_core.map_resize). The one place given maps are prepared."""
    if resize not in RESIZES:
        raise ValueError(f"LumiX: unknown resize {resize!r}; choose one of {RESIZES}.")
    rgb = image[..., :3].float().clamp(0.0, 1.0)
    if rgb.shape[1] == height and rgb.shape[2] == width:
        return rgb  # the reference's resize to the same size is a copy
    if resize == RESIZE_GEOMETRY:
        return geometry_safe_resize(rgb, width, height, name)
    box = None
    if resize == RESIZE_COVER:
        check_cover_crop(name, rgb, (width, height))
        box = centre_crop_box(rgb.shape[2], rgb.shape[1], width, height)
    return reference_resize(rgb, width, height, box)


def resize_maps(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[n, H, W, 3] stretched to width x height (the inverse of the stretch that fitted a photo)."""
    if images.shape[1] == height and images.shape[2] == width:
        return images
    out = comfy.utils.common_upscale(images.movedim(-1, 1), width, height, "bicubic", "disabled").movedim(1, -1)
    return out.clamp(0.0, 1.0)


def encode_given_maps(vae, latent: torch.Tensor, images: dict[str, torch.Tensor]) -> torch.Tensor:
    """A copy of `latent` with each given map's rows replaced by its VAE encoding."""
    latent = latent.clone()
    scenes = latent.shape[0] // MAP_COUNT
    for name, image in images.items():
        if image.shape[0] != scenes:
            raise ValueError(f"LumiX: the {name} input holds {image.shape[0]} image(s) but the latent holds "
                             f"{scenes} scene(s); give one image per scene.")
        encoded = vae.encode(image)
        if not bool(torch.isfinite(encoded).all()):
            raise ValueError(f"LumiX: the VAE turned the given {name} map (finite, 0..1) into non-finite latents "
                             f"(NaN/Inf). {VAE_ADVICE}")
        if tuple(encoded.shape[1:]) != tuple(latent.shape[1:]):
            raise ValueError(f"LumiX: the VAE turned the {name} image into latents of shape "
                             f"{tuple(encoded.shape[1:])}, not {tuple(latent.shape[1:])}; connect the FLUX VAE "
                             f"(ae.safetensors).")
        latent[MAP_NAMES.index(name)::MAP_COUNT] = encoded.to(latent)
    return latent


class HeldMapsWrapper:
    """APPLY_MODEL wrapper: held maps enter the model as their clean latent at timestep 0 (so the
    model's denoised output for them is exactly that latent and no sampler moves them), and with
    `reference_guidance` every pass gets guidance embed 1.0, as the reference's decomposition."""

    def __init__(self, held: torch.Tensor, clean: torch.Tensor, reference_guidance: bool):
        self.held, self.clean, self.reference_guidance = held, clean, reference_guidance

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        x, t = hold_maps(x, t, self.held, self.clean)
        if self.reference_guidance and kwargs.get("guidance") is not None:
            kwargs["guidance"] = torch.ones_like(kwargs["guidance"])
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


class HeldMapsRestore:
    """OUTER_SAMPLE wrapper: the sampled latent's held rows are exactly the given encoding, not its
    round trip through the sampler's arithmetic."""

    def __init__(self, held: torch.Tensor, latent: torch.Tensor):
        self.held, self.latent = held, latent

    def __call__(self, executor, *args, **kwargs):
        samples = executor(*args, **kwargs)
        if samples.shape[0] == self.held.shape[0]:
            samples = samples.clone()
            samples[self.held.to(samples.device)] = self.latent[self.held].to(samples)
        return samples


def positive_pass_only(args):
    """sampler_calc_cond_batch_function: only the positive pass runs; its prediction stands in for
    the negative one, so CFG of any scale gives exactly the positive prediction (no CFG)."""
    cond = comfy.samplers.calc_cond_batch(args["model"], [args["conds"][0], None], args["input"], args["sigma"],
                                          args["model_options"])[0]
    return [cond] + [cond] * (len(args["conds"]) - 1)


def hold_given_maps(model, vae, latent: torch.Tensor, images: dict[str, torch.Tensor], guidance: str):
    """(patched model copy, latent with the given maps encoded). Any sampler run on the copy keeps the
    given maps at timestep 0 and returns them unchanged; with HELD_GUIDANCE_REFERENCE it also runs with
    guidance 1.0 and without CFG. `images` are prepared maps (prepare_given_map) at the latent's size."""
    if guidance not in HELD_GUIDANCE:
        raise ValueError(f"LumiX: unknown held_maps_guidance {guidance!r}; choose one of {HELD_GUIDANCE}.")
    latent = encode_given_maps(vae, latent, images)
    if not images:
        return model, latent
    held = held_map_mask([name in images for name in MAP_NAMES], latent.shape[0] // MAP_COUNT)
    patched = model.clone()
    clean = patched.model.process_latent_in(latent)  # the model's own latent space
    reference = guidance == HELD_GUIDANCE_REFERENCE
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, HELD_MAPS_WRAPPER_KEY,
                                 HeldMapsWrapper(held, clean, reference))
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, HELD_MAPS_WRAPPER_KEY,
                                 HeldMapsRestore(held, latent))
    if reference:
        patched.model_options["sampler_calc_cond_batch_function"] = positive_pass_only
    return patched, latent


# ---- noise and sigmas ----------------------------------------------------------------------------

class SceneNoise:
    """A NOISE object (as core RandomNoise) drawing the reference's noise: one tensor per scene,
    scene s from seed + s, repeated for its five maps when `shared`."""

    def __init__(self, seed: int, shared: bool = True):
        self.seed, self.shared = seed, shared

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        if samples.shape[0] % MAP_COUNT:
            raise ValueError(f"LumiX Noise: the latent holds {samples.shape[0]} latents, not whole scenes of "
                             f"{MAP_COUNT}; start from the LumiX Empty Latent.")
        return scene_noise(samples.shape[1:], self.seed, samples.shape[0] // MAP_COUNT, MAP_COUNT, shared=self.shared)


def sampling_sigmas(model, schedule: str, steps: int, width: int, height: int, sampler_name: str = "euler",
                    scheduler: str = "simple") -> torch.Tensor:
    """float32 sigmas: the reference's for width x height, or the model's own (its model sampling and
    `scheduler`, exactly as KSampler computes them)."""
    if schedule == SCHEDULE_REFERENCE:
        return reference_sigmas(width, height, steps).to(torch.float32)
    if schedule == SCHEDULE_MODEL:
        return comfy.samplers.KSampler(model, steps, "cpu", sampler_name, scheduler, 1.0).sigmas.to(torch.float32)
    raise ValueError(f"LumiX: unknown schedule {schedule!r}; choose one of {SCHEDULES}.")


# ---- preview and decoding ------------------------------------------------------------------------

class FiveMapPreviewer(latent_preview.LatentPreviewer):
    """The user's previewer (latent2rgb or TAESD) shown all five maps of the first scene, tiled."""

    def __init__(self, inner):
        self.inner = inner

    def decode_latent_to_preview_image(self, preview_format, x0):
        return self.inner.decode_latent_to_preview_image(preview_format, tile_scene(x0))


def five_map_callback(model, steps: int):
    """latent_preview.prepare_callback with the five-map previewer: progress bar, previews, Cancel."""
    inner = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    previewer = FiveMapPreviewer(inner) if inner is not None else None
    pbar = comfy.utils.ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
        pbar.update_absolute(step + 1, total_steps, preview)
    return callback


def decode_maps(vae, samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """{map name: [scenes, H, W, 3]} from a grouped latent batch; NaN/Inf in the latent or in the
    VAE's output is refused (naming scene and map), not returned as black maps."""
    check_finite_maps(samples, "the sampled latent", MODEL_ADVICE)
    decoded = vae.decode(samples)[..., :3]
    check_finite_maps(decoded, "the VAE's output", VAE_ADVICE)
    return split_maps(decoded.clamp(0.0, 1.0), MAP_COUNT)
