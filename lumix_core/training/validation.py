"""Validation numbers: how consistent the maps a model samples are (lumix_core.metrics), averaged
over the fixed validation scenes. The sampling itself is the host's (the project's sampler)."""
from __future__ import annotations

import math

import torch

from ..metrics import consistency

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
