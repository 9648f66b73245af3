"""The consistency filter: thresholds on the metrics LumiX Save Maps writes into lumix.json
(lumix_core/metrics.py): photometric residual, geometric residual (degrees), structural alignment."""
from __future__ import annotations

import math

# option name -> (path in lumix.json "metrics", "min" or "max", what it is)
THRESHOLDS = {
    "min_alignment": (("structural", "alignment"), "min", "structural alignment (mean edge correlation with color)"),
    "max_photometric": (("photometric", "residual"), "max", "photometric residual (linear RGB)"),
    "max_geometric": (("geometric", "mean_degrees"), "max", "geometric residual (degrees)"),
}


def metric(metrics: dict, path: tuple[str, str]) -> float | None:
    """The metric as a float, None when missing or not a number (lumix.json comes from the server)."""
    group = metrics.get(path[0]) if isinstance(metrics, dict) else None
    value = group.get(path[1]) if isinstance(group, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return None


def judge(metrics: dict, limits: dict) -> list[str]:
    """Reasons the scene fails the given limits (empty: it passes). A metric that was not computed
    (NaN or missing) fails its limit: the filter keeps only scenes it could check."""
    reasons = []
    for name, limit in limits.items():
        if limit is None:
            continue
        path, kind, what = THRESHOLDS[name]
        value = metric(metrics, path)
        if value is None or math.isnan(value):
            reasons.append(f"{what} not computed")
        elif (kind == "min" and value < limit) or (kind == "max" and value > limit):
            reasons.append(f"{what} {value:.4g} {'<' if kind == 'min' else '>'} {limit:g}")
    return reasons
