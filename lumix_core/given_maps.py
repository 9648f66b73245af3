"""Checking and normalising a given map (an IMAGE batch [n, H, W, C]) before the sampler encodes it.

One NaN pixel in a given map would spread through query broadcast into every map of its scene, and
resize/VAE code fails with internal messages on odd shapes, so every given map passes here first.
The rules (stated once, in GIVEN_MAP_RULES, and shown in the sampler's tooltips/README):

- floating-point values only; NaN or Inf anywhere is refused, naming the map and the scene;
- values must lie in 0..1. Resampling overshoot up to RANGE_TOLERANCE beyond that is clamped; anything
  further is refused, with advice matched to what the image looks like (0-255, -1..1, HDR);
  nothing is rescaled silently, because a guess (e.g. dividing by 255) would be wrong for HDR input;
- channels: 1 (grey) -> repeated to RGB; 2 (grey + alpha) -> grey repeated, alpha dropped; 3 (RGB) as
  is; 4 (RGBA) -> alpha dropped; any other count is refused;
- sizes: at least MIN_SIDE pixels per side, and, when the target size is known, the centre crop to the
  target's aspect ratio must keep at least MIN_SIDE pixels per side (a 1000x1 strip cannot cover 512x512).
"""
from __future__ import annotations

import torch

RANGE_TOLERANCE = 0.05  # bicubic/lanczos resizing can overshoot 0..1 by a few percent
MIN_SIDE = 16           # one FLUX latent patch: 8x VAE downsampling, 2x2 patches
GIVEN_MAP_RULES = (f"values 0..1 (overshoot up to {RANGE_TOLERANCE:g} clamped, NaN/Inf and other ranges refused); "
                   "grey -> RGB, alpha dropped; at least 16 px per side")


class GivenMapError(ValueError):
    """A given map the sampler cannot use; the message names the map, the scene and what to do."""


def _scene_label(index: int, scenes: int) -> str:
    return f"scene {index + 1} of {scenes} (batch index {index})"


# What a non-finite value would do, and what to do about it, by who receives the image.
SAMPLER_NON_FINITE = ("The sampler would spread them into every map of the scene. Fix or replace the node that "
                      "made this image (or load the image from a file).")
TOOL_NON_FINITE = ("Something before this node produced them (the model, the checkpoint or strength, or a VAE); "
                   "fix that node rather than passing NaN on.")


def _check_values(subject: str, image: torch.Tensor, consumer: str, non_finite_advice: str) -> None:
    n = image.shape[0]
    finite = torch.isfinite(image)
    if not finite.all():
        bad = (~finite).flatten(1).sum(1)
        scene = int(torch.nonzero(bad)[0])
        nans = int(torch.isnan(image[scene]).sum())
        raise GivenMapError(
            f"{subject} of {_scene_label(scene, n)} has {int(bad[scene])} non-finite "
            f"value(s) ({nans} NaN, {int(bad[scene]) - nans} Inf). {non_finite_advice}")
    check_range(subject, image, consumer)


def check_range(subject: str, image: torch.Tensor, consumer: str) -> None:
    """Refuses finite values outside 0..1 (beyond RANGE_TOLERANCE), with advice matched to the image."""
    n = image.shape[0]
    low, high = float(image.min()), float(image.max())
    if low >= -RANGE_TOLERANCE and high <= 1.0 + RANGE_TOLERANCE:
        return
    per_scene_high = image.flatten(1).amax(1)
    per_scene_low = image.flatten(1).amin(1)
    scene = int(torch.nonzero((per_scene_high > 1.0 + RANGE_TOLERANCE) | (per_scene_low < -RANGE_TOLERANCE))[0])
    if low >= 0.0 and high <= 255.0 and float((image > 1.0).float().mean()) > 0.5:  # most pixels above 1
        advice = ("This looks like a 0-255 image; ComfyUI images hold 0..1. Divide it by 255 "
                  "(or load the file with Load Image).")
    elif low >= -1.0 - RANGE_TOLERANCE and high <= 1.0 + RANGE_TOLERANCE:
        advice = "This looks like a -1..1 image; map it to 0..1 with (x + 1) / 2."
    else:
        advice = "Tone-map or clamp it to 0..1 (an HDR or data image is not a map the VAE can encode)."
    raise GivenMapError(
        f"{subject} holds values from {low:.4g} to {high:.4g} (first out of range: "
        f"{_scene_label(scene, n)}); {consumer} takes 0..1. {advice}")


def _to_rgb(subject: str, image: torch.Tensor, consumer: str) -> torch.Tensor:
    channels = image.shape[-1]
    if channels in (1, 2):
        return image[..., :1].expand(*image.shape[:-1], 3)
    if channels in (3, 4):
        return image[..., :3]
    raise GivenMapError(f"{subject} has {channels} channels; {consumer} takes grey (1), "
                        "grey+alpha (2), RGB (3) or RGBA (4) images. Convert it to RGB first.")


def _check_size(subject: str, height: int, width: int, target: tuple[int, int] | None, min_side: int) -> None:
    if height < min_side or width < min_side:
        raise GivenMapError(f"{subject} is {width}x{height} pixels; a map needs at least "
                            f"{min_side} pixel{'s' if min_side > 1 else ''} on each side. Connect the full image, not a strip or an empty one.")
    if target is None:
        return
    target_width, target_height = target
    # what a centre crop to the target's aspect ratio keeps (the sampler's resize policy)
    if width * target_height > height * target_width:
        kept = (height * target_width / target_height, height)
    else:
        kept = (width, width * target_height / target_width)
    if min(kept) < min_side:
        raise GivenMapError(
            f"{subject} is {width}x{height}; cropping it to the sampler's {target_width}x"
            f"{target_height} aspect ratio keeps only {kept[0]:.0f}x{kept[1]:.0f} pixels. Set width and "
            f"height to the image's aspect ratio (e.g. {width}x{height} rounded to multiples of 16), or "
            "crop the image to the sampler's.")


def check_map_image(name: str, image, *, node: str = "LumiX", role: str = "given ", consumer: str = "the sampler",
                    min_side: int = MIN_SIDE, target: tuple[int, int] | None = None,
                    non_finite_advice: str = SAMPLER_NON_FINITE) -> torch.Tensor:
    """An IMAGE batch checked and normalised to float [n, H, W, 3] in 0..1 (see the module's rules), for
    any node that takes maps: messages read "<node>: the <role><name> map ...", naming the scene and
    what to do. target: (width, height) the map will be resized to (checks what a centre crop keeps)."""
    subject = f"{node}: the {role}{name} map"
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise GivenMapError(f"{node}: the {role}{name} input is not an IMAGE batch [images, height, width, "
                            f"channels] (got {shape}). Connect an IMAGE output (e.g. Load Image).")
    n, height, width, _ = image.shape
    if n == 0:
        raise GivenMapError(f"{node}: the {role}{name} input is an empty batch (0 images); connect one image per scene.")
    if not image.is_floating_point():
        raise GivenMapError(f"{subject} has dtype {image.dtype}; ComfyUI images are float 0..1. "
                            "Convert it (divide 8-bit values by 255).")
    _check_size(subject, height, width, target, min_side)
    rgb = _to_rgb(subject, image, consumer)
    _check_values(subject, rgb, consumer, non_finite_advice)
    return rgb.float().clamp(0.0, 1.0)


def check_given_map(name: str, image, target: tuple[int, int] | None = None) -> torch.Tensor:
    """A given IMAGE batch checked and normalised to float [n, H, W, 3] in 0..1 (see the module's rules).

    target: (width, height) the map will be resized to, to check the centre crop keeps enough of it.
    Raises GivenMapError naming the map, the scene and what to do.
    """
    return check_map_image(name, image, target=target)


def check_cover_crop(name: str, image: torch.Tensor, target: tuple[int, int]) -> None:
    """Refuses a given map whose centre crop to target = (width, height)'s aspect ratio keeps fewer than
    MIN_SIDE pixels per side (a strip covering a strip of the other orientation)."""
    _check_size(f"LumiX: the given {name} map", image.shape[1], image.shape[2], target, MIN_SIDE)


def check_tool_map(node: str, name: str, image) -> torch.Tensor:
    """A map given to a tool node (consistency, relight, display, split): the same rules as a given map,
    any size of at least one pixel, non-finite values refused as coming from an earlier node."""
    return check_map_image(name, image, node=node, role="", consumer="this node", min_side=1,
                           non_finite_advice=TOOL_NON_FINITE)
