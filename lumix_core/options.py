"""The choices of the LumiX nodes' option inputs: short, stable keys (what workflows and API prompts
store) with their explanation, and the prose values shipped before the keys, still accepted.

Standard library only (with the map names of lumix_core.maps), so that the headless client imports it
instead of copying a value: `from lumix_core.options import ...` works without torch.
A label may be reworded freely; a key never changes. A new choice adds a key (and its help line).
"""
from __future__ import annotations

from .maps import MAP_COUNT, MAP_NAMES  # noqa: F401  (re-exported for the client: one place for both)

# option input name -> {key: what it does (the tooltip lists these)}
CHOICES: dict[str, dict[str, str]] = {
    "schedule": {
        "reference": "the sigmas of the LumiX reference for the sampled width x height and steps (its FLUX shift, "
                     "exact for every step count; the scheduler input is then unused)",
        "model_scheduler": "the model's own ModelSamplingFlux shift with the scheduler input, as KSampler does",
    },
    "held_maps_guidance": {
        "reference": "as the reference's decomposition: guidance embed 1.0 and no CFG (the negative pass never "
                     "runs), whatever the conditioning's FluxGuidance and the cfg say",
        "as_connected": "the conditioning's guidance and the cfg as connected",
    },
    "held_maps_size": {
        "from_given": "the first given map's aspect ratio within area_width x area_height (sides multiples of 16; "
                      "a 4:3 photo gets the reference's 1536x1152)",
        "explicit": "width x height",
    },
    "held_maps_resize": {
        "stretch": "stretched to the sampled size with Pillow's antialiased bicubic on the 8-bit image, byte for "
                   "byte the reference's resize, for every map",
        "cover": "the same filter after a centre crop to the sampled aspect",
        "geometry_safe": "stretched: colour maps as the reference, depth with antialiased bilinear (no ringing at "
                         "edges), normals renormalised to unit vectors",
    },
    "output_size": {
        "sampled": "every map at the sampled size",
        "original": "every map stretched back to the first given map's original size; the given maps come back "
                    "exactly as given (not after a cover crop)",
    },
    "depth_convention": {
        "far_is_bright": "far is bright, near is dark (LumiX's depth maps)",
        "near_is_bright": "near is bright, far is dark (disparity-like maps)",
    },
}

# The prose values the options had before their keys (saved workflows and API prompts carry them).
LEGACY_VALUES: dict[str, dict[str, str]] = {
    "schedule": {"model sampling + scheduler": "model_scheduler"},
    "held_maps_guidance": {"reference: guidance 1.0, no CFG": "reference",
                           "as connected: conditioning guidance and cfg": "as_connected"},
    "held_maps_size": {"from the given map (aspect kept, area budget)": "from_given", "width x height": "explicit"},
    "held_maps_resize": {"stretch (as the reference)": "stretch", "cover and centre-crop": "cover",
                         "stretch, depth/normal geometry-safe": "geometry_safe"},
    "output_size": {"sampled size": "sampled", "given map's original size": "original"},
    "depth_convention": {"far is bright (LumiX)": "far_is_bright", "near is bright": "near_is_bright"},
}

SCHEDULE_REFERENCE, SCHEDULE_MODEL = "reference", "model_scheduler"
HELD_GUIDANCE_REFERENCE, HELD_GUIDANCE_AS_CONNECTED = "reference", "as_connected"
SIZE_FROM_GIVEN, SIZE_EXPLICIT = "from_given", "explicit"
RESIZE_STRETCH, RESIZE_COVER, RESIZE_GEOMETRY = "stretch", "cover", "geometry_safe"
OUTPUT_SAMPLED, OUTPUT_ORIGINAL = "sampled", "original"
DEPTH_FAR_IS_BRIGHT, DEPTH_NEAR_IS_BRIGHT = "far_is_bright", "near_is_bright"


def keys(option: str) -> list[str]:
    """The keys of an option, the first being its default."""
    return list(CHOICES[option])


def tooltip(option: str, intro: str = "") -> str:
    """`intro` followed by one line per key saying what it does."""
    lines = [f"{key}: {help_text}." for key, help_text in CHOICES[option].items()]
    return "\n".join(([intro] if intro else []) + lines)


def option_key(option: str, value) -> str:
    """The key for a value of `option` (a key, or a value shipped before the keys); a clear error otherwise."""
    if value in CHOICES[option]:
        return value
    if value in LEGACY_VALUES.get(option, {}):
        return LEGACY_VALUES[option][value]
    raise ValueError(f"LumiX: unknown {option} {value!r}; choose one of {keys(option)}.")


def check_option(option: str, value) -> bool | str:
    """For a node's validate_inputs: True, or the error text ComfyUI shows."""
    try:
        option_key(option, value)
    except ValueError as exc:
        return str(exc)
    return True
