"""The reference's sampling schedule and its photo sizing, as plain math (no ComfyUI).

The reference samples with the FLUX time-shifted schedule: t_i = linspace(1, 0, steps + 1) and
sigma_i = e^mu / (e^mu + 1/t_i - 1), where mu grows linearly with its `image_seq_len` argument. It
passes (W // 8) * (H // 8) // 256 there (16 at 512x512), not the number of image tokens that
ComfyUI's ModelSamplingFlux uses, so its sigmas differ from ComfyUI's at the same size. Every sigma
is computed from its formula (float64), exact for every step count; no lookup table.
"""
from __future__ import annotations

import math

import torch

BASE_SHIFT, MAX_SHIFT = 0.5, 1.15  # mu at BASE_SEQ_LEN and MAX_SEQ_LEN
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096
# The reference's photo-decomposition size (4:3); its area is the default budget for a given photo.
REFERENCE_PHOTO_SIZE = (1536, 1152)
SIZE_MULTIPLE = 16  # FLUX: 8x VAE downsampling, then 2x2 patches


def reference_seq_len(width: int, height: int) -> int:
    """The `image_seq_len` the reference passes for a width x height image."""
    return (width // 8) * (height // 8) // 256


def reference_mu(width: int, height: int) -> float:
    """The schedule's shift mu for width x height (0.459375 at 512x512)."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return BASE_SHIFT + slope * (reference_seq_len(width, height) - BASE_SEQ_LEN)


def reference_sigmas(width: int, height: int, steps: int) -> torch.Tensor:
    """steps + 1 sigmas, from 1 down to 0, float64."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    shift = math.exp(reference_mu(width, height))
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    # e^mu / (e^mu + 1/t - 1) multiplied through by t: the same value, exactly 1 at t = 1 and
    # exactly 0 at t = 0 (where 1/t is infinite).
    return shift * t / (shift * t + (1.0 - t))


def size_for_photo(photo_width: int, photo_height: int, budget_width: int = REFERENCE_PHOTO_SIZE[0],
                   budget_height: int = REFERENCE_PHOTO_SIZE[1]) -> tuple[int, int]:
    """(width, height): the photo's aspect ratio within an area of budget_width x budget_height,
    each side a multiple of 16 rounded down (at least 16). A 4:3 photo with the default budget gets
    the reference's 1536x1152; a 3:4 photo 1152x1536."""
    if min(photo_width, photo_height, budget_width, budget_height) < 1:
        raise ValueError(f"photo size {photo_width}x{photo_height} and budget {budget_width}x{budget_height} "
                         "must be positive")
    area = budget_width * budget_height
    aspect = photo_width / photo_height
    width = math.sqrt(area * aspect)
    height = width / aspect
    # A tiny tolerance so that exact fits (4:3 in 1536x1152) are not lost to float rounding.
    return tuple(max(SIZE_MULTIPLE, int(side / SIZE_MULTIPLE + 1e-9) * SIZE_MULTIPLE) for side in (width, height))
