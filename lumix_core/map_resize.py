"""Fitting a given map to the sampled size: exactly as the LumiX reference does, or geometry-safe.

The reference (eval/eval_lumix_conditional_inference.py, with image_datasets/dataset_v2_inference.py
reading the files) opens every given map with Pillow as 8-bit RGB (`Image.open(f).convert('RGB')`) and
fits it with `img.resize((width, height))`: Pillow's default filter for RGB images, BICUBIC (a = -0.5),
antialiased (the kernel widens by the scale factor when shrinking), in fixed point, rounded to 8 bits.
It has no code of its own for depth or normal maps: they are resized the same way, so the checkpoint
saw bicubic-resized depth and normal images. `reference_resize` reproduces that byte for byte.

Bicubic rings at depth edges (overshoot next to a step) and does not keep normals unit length; the
explicit `geometry_safe_resize` fits depth with Pillow's antialiased BILINEAR (non-negative weights:
every output lies within the values it comes from) and normals the same way per component, then
renormalised to unit vectors. Colour maps stay as the reference.

ComfyUI's IMAGE is float 0..1. An image on the 8-bit grid (every Load Image photo) is turned back into
its exact bytes (round(x * 255)) and resized as the reference resizes a file. An image off the grid
(made by another node) is resized with the same filter in float (Pillow mode "F", per channel) and not
rounded to 8 bits: rounding would discard precision the reference never had a way to receive. (Pillow's
8-bit path rounds and clips between its horizontal and vertical passes; the float path does neither, so
the two differ by more than rounding only where the first pass overshoots 0..1.)
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

REFERENCE_FILTER = Image.Resampling.BICUBIC  # Pillow's default for Image.resize of an RGB image
SMOOTH_FILTER = Image.Resampling.BILINEAR    # non-negative antialiased weights: no ringing
GRID_TOLERANCE = 1e-3                        # of one 8-bit level: float32 k/255 is within ~3e-5 of it
NORMAL_MIN_LENGTH = 1e-3                     # shorter (averaged-out) vectors are left as they are

Box = tuple[float, float, float, float]


def on_8bit_grid(image: torch.Tensor) -> bool:
    """True when every value of `image` (0..1) is k/255 for an integer k, up to float32 rounding."""
    scaled = image.float() * 255.0  # float32 k/255 * 255 is within ~3e-5 of k: float32 suffices
    return bool(((scaled - scaled.round()).abs() <= GRID_TOLERANCE).all())


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, C] float 0..1 -> uint8 numpy, each value to the nearest 8-bit level (exact on the grid)."""
    return (image.float() * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _resize_float(channels: np.ndarray, width: int, height: int, resample, box: Box | None) -> np.ndarray:
    """[H, W, C] float32 -> [height, width, C], each channel through Pillow in mode "F"."""
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c], dtype=np.float32))
                         .resize((width, height), resample, box=box))
              for c in range(channels.shape[-1])]
    return np.stack(planes, axis=-1)


def _check(image: torch.Tensor, width: int, height: int) -> None:
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB IMAGE batch [n, H, W, 3], got {tuple(image.shape)}")
    if width < 1 or height < 1:
        raise ValueError(f"target size {width}x{height} must be positive")


def reference_resize(image: torch.Tensor, width: int, height: int, box: Box | None = None) -> torch.Tensor:
    """[n, H, W, 3] float 0..1 -> float32 [n, height, width, 3] as the reference's `img.resize`.

    box: (left, top, right, bottom) source region in pixels (Pillow's `box`; float allowed), for a crop;
    None = the whole image (the reference's stretch)."""
    _check(image, width, height)
    out = []
    for one in image:
        if on_8bit_grid(one):
            resized = np.asarray(Image.fromarray(to_uint8(one)).resize((width, height), REFERENCE_FILTER,
                                                                                  box=box))
            out.append(torch.from_numpy(resized.astype(np.float32) / 255.0))
        else:
            resized = _resize_float(one.float().cpu().numpy(), width, height, REFERENCE_FILTER, box)
            out.append(torch.from_numpy(resized).clamp(0.0, 1.0))  # as the 8-bit path clips
    return torch.stack(out).to(image.device)


def geometry_safe_resize(image: torch.Tensor, width: int, height: int, kind: str,
                         box: Box | None = None) -> torch.Tensor:
    """[n, H, W, 3] float 0..1 -> float32 [n, height, width, 3]. kind "depth": antialiased bilinear per
    channel (no overshoot at edges); "normal": the vectors 2x - 1 resized the same way and renormalised
    to unit length (vectors that average out to nearly zero are kept as they are); anything else: as
    the reference (reference_resize)."""
    if kind not in ("depth", "normal"):
        return reference_resize(image, width, height, box)
    _check(image, width, height)
    out = []
    for one in image:
        pixels = one.float().cpu().numpy()
        if kind == "depth":
            out.append(torch.from_numpy(_resize_float(pixels, width, height, SMOOTH_FILTER, box)).clamp(0.0, 1.0))
            continue
        vectors = torch.from_numpy(_resize_float(pixels * 2.0 - 1.0, width, height, SMOOTH_FILTER, box))
        length = vectors.norm(dim=-1, keepdim=True)
        unit = torch.where(length > NORMAL_MIN_LENGTH, vectors / length.clamp_min(NORMAL_MIN_LENGTH), vectors)
        out.append(((unit + 1.0) / 2.0).clamp(0.0, 1.0))
    return torch.stack(out).to(image.device)


def centre_crop_box(source_width: int, source_height: int, width: int, height: int) -> Box:
    """The centred source region with the target's aspect ratio (exact, in fractional pixels)."""
    if source_width * height > source_height * width:  # source wider: trim left and right
        kept = source_height * width / height
        left = (source_width - kept) / 2
        return (left, 0.0, left + kept, float(source_height))
    kept = source_width * height / width
    top = (source_height - kept) / 2
    return (0.0, top, float(source_width), top + kept)
