"""Validation: how consistent the maps a model samples are (lumix_core.metrics), averaged over the
fixed validation scenes, and the images of each validation (five maps per caption). The sampling
itself is the host's (the project's sampler)."""
from __future__ import annotations

import math
import os

import torch
from PIL import Image, ImageDraw

from ..map_resize import to_uint8
from ..maps import MAP_NAMES
from ..metrics import consistency
from .files import atomic_write

VALIDATION_FOLDER = "validation"

METRIC_KEYS = {
    "photometric_residual": ("photometric", "residual"),
    "geometric_degrees": ("geometric", "mean_degrees"),
    "structural_alignment": ("structural", "alignment"),
}


def consistency_summary(scenes: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each consistency metric over scenes ({map name: [H, W, 3] in 0..1} each); a metric
    that no scene allows is left out; NaN scenes are not averaged in."""
    sums: dict[str, list[float]] = {k: [] for k in METRIC_KEYS}
    for maps in scenes:
        numbers = consistency(maps).numbers()
        for key, (group, field) in METRIC_KEYS.items():
            value = numbers.get(group, {}).get(field)
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums[key].append(float(value))
    return {k: sum(v) / len(v) for k, v in sums.items() if v}


# ---- images of a validation: one five-map row per caption, and a sheet of all rows -----------------

GRID_GAP = 2  # pixels between maps, and between a sheet's rows
LINE_HEIGHT = 12  # one line of PIL's default font
LABEL_HEIGHT = 2 * LINE_HEIGHT  # the caption line, then each map's name over its column
GRID_BACKGROUND = (24, 24, 24)
GRID_TEXT = (235, 235, 235)


def _maps_in_order(maps: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    missing = [name for name in MAP_NAMES if name not in maps]
    if missing:
        raise ValueError(f"a validation grid needs all five maps; {', '.join(missing)} missing")
    images = [maps[name] for name in MAP_NAMES]
    shape = tuple(images[0].shape)
    for name, image in zip(MAP_NAMES, images):
        if image.ndim != 3 or image.shape[-1] < 3 or tuple(image.shape) != shape:
            raise ValueError(f"a validation grid needs five [H, W, 3] maps of one size; {name} is "
                             f"{list(image.shape)}, albedo {list(shape)}")
        if not bool(torch.isfinite(image).all()):
            raise ValueError(f"the {name} map holds NaN/Inf; a validation grid shows finite maps only")
    return images


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """`text` on one line, cut (with '...') to fit `width` pixels."""
    text = " ".join(text.split())  # newlines and tabs: one line
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..." if text else ""


def scene_grid(maps: dict[str, torch.Tensor], caption: str) -> Image.Image:
    """One scene's five maps side by side in MAP_NAMES order, as sampled (the sRGB maps, depth as its
    grey encoding, normals as rgb = (n + 1) / 2: what the sampler returns and Save Maps writes), each
    value to the nearest 8-bit level, GRID_GAP pixels apart, under a label row: the caption (cut to
    the width), then each map's name over its column. maps: {name: [H, W, 3] in 0..1}."""
    images = _maps_in_order(maps)
    height, width = images[0].shape[:2]
    grid = Image.new("RGB", (5 * width + 4 * GRID_GAP, LABEL_HEIGHT + height), GRID_BACKGROUND)
    draw = ImageDraw.Draw(grid)
    draw.text((2, 0), _fit(draw, caption, grid.width - 4), fill=GRID_TEXT)
    for k, (name, image) in enumerate(zip(MAP_NAMES, images)):
        x = k * (width + GRID_GAP)
        draw.text((x + 2, LINE_HEIGHT), _fit(draw, name, width - 2), fill=GRID_TEXT)
        grid.paste(Image.fromarray(to_uint8(image[..., :3])), (x, LABEL_HEIGHT))
    return grid


def validation_sheet(grids: list[Image.Image]) -> Image.Image:
    """Scene grids one under the other (GRID_GAP apart), left-aligned: one image of a whole validation."""
    if not grids:
        raise ValueError("a validation sheet needs at least one scene grid")
    width = max(g.width for g in grids)
    sheet = Image.new("RGB", (width, sum(g.height for g in grids) + GRID_GAP * (len(grids) - 1)), GRID_BACKGROUND)
    y = 0
    for grid in grids:
        sheet.paste(grid, (0, y))
        y += grid.height + GRID_GAP
    return sheet


def validation_image_path(folder: str, step: int, index: int) -> str:
    """<folder>/validation/step_<step, 6 digits>_<index>.png: the grid of caption `index` at `step`."""
    return os.path.join(folder, VALIDATION_FOLDER, f"step_{step:06d}_{index}.png")


def write_validation_grids(folder: str, step: int, grids: list[Image.Image]) -> list[str]:
    """Each grid as a PNG at validation_image_path (atomically: never half-written under its name)."""
    return [atomic_write(validation_image_path(folder, step, k), lambda tmp, g=grid: g.save(tmp, format="PNG"))
            for k, grid in enumerate(grids)]
