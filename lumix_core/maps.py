"""The five LumiX maps: their order, names and roles, stated once for the whole project.

Inside every batch the maps of one scene sit next to each other, map index fastest:
batch index = scene * MAP_COUNT + map index.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MapSpec:
    index: int
    checkpoint_name: str  # the name the released checkpoint and reference code use
    name: str  # the name shown to users (node sockets, file names)
    meaning: str
    encoding: str  # how the decoded RGB image stores the quantity: see ENCODINGS


# How each map's VAE-decoded RGB image (values in 0..1) encodes its quantity.
ENCODINGS = {
    "srgb": "a display image: sRGB-encoded; the physical (linear) value is the sRGB decoding of it",
    "depth": "relative distance from the camera centre (not metric, not planar z): the three channels carry "
             "one value (read as their mean); 0 is the nearest point of the scene, 1 the farthest",
    "normal": "unit normal in camera space, OpenGL axes (+x right, +y up, +z towards the camera); "
              "rgb = (n + 1) / 2, so a surface facing the camera is (0.5, 0.5, 1.0)",
}

MAPS: tuple[MapSpec, ...] = (
    MapSpec(0, "diffuse_reflectance", "albedo", "diffuse base colour, no lighting", "srgb"),
    MapSpec(1, "diffuse_illumination", "irradiance", "diffuse light arriving at each pixel", "srgb"),
    MapSpec(2, "color", "color", "the final rendered image", "srgb"),
    MapSpec(3, "depth", "depth", "distance, encoded as an RGB image by the VAE", "depth"),
    MapSpec(4, "normal", "normal", "surface normals, encoded as an RGB image", "normal"),
)
# Hypersim-like horizontal field of view assumed where geometry needs one (normals from depth).
DEFAULT_FOV_DEGREES = 60.0

MAP_COUNT = len(MAPS)
MAP_NAMES: tuple[str, ...] = tuple(m.name for m in MAPS)
CHECKPOINT_MAP_NAMES: tuple[str, ...] = tuple(m.checkpoint_name for m in MAPS)
# The map whose query every map of a scene shares under query-broadcast attention.
SOURCE_MAP = "color"
SOURCE_MAP_INDEX = MAP_NAMES.index(SOURCE_MAP)


def map_index(name: str) -> int:
    """Index of a map given its display name or its checkpoint name."""
    for spec in MAPS:
        if name in (spec.name, spec.checkpoint_name):
            return spec.index
    raise ValueError(
        f"unknown map {name!r}: expected one of {', '.join(MAP_NAMES)} "
        f"(or the checkpoint names {', '.join(CHECKPOINT_MAP_NAMES)})"
    )


def check_grouped_batch(batch_size: int, maps_per_scene: int, what: str = "batch") -> int:
    """Number of scenes in a batch of grouped maps; a clear error when it does not divide."""
    if maps_per_scene < 1:
        raise ValueError(f"maps_per_scene must be at least 1, got {maps_per_scene}")
    if batch_size % maps_per_scene != 0:
        raise ValueError(
            f"LumiX expects the {what} to hold whole scenes of {maps_per_scene} maps "
            f"(map index fastest), but it has {batch_size} entries, which is not a multiple "
            f"of {maps_per_scene}. Use the LumiX Intrinsic Sampler, or a batch of "
            f"{maps_per_scene} latents per scene."
        )
    return batch_size // maps_per_scene


def check_sampled_batch(model_batch: int, passes: int, maps_per_scene: int) -> int:
    """Scenes in one model call that batches `passes` conditions (positive, negative, ...) over the
    sampler's latent batch; the error counts the latents the user set, not the passes' total."""
    passes = max(passes, 1)
    if maps_per_scene >= 1 and model_batch % (passes * maps_per_scene) == 0:
        return model_batch // (passes * maps_per_scene)
    user_batch = model_batch // passes if model_batch % passes == 0 else model_batch
    if maps_per_scene < 1 or user_batch % maps_per_scene == 0:
        return check_grouped_batch(model_batch, maps_per_scene)
    raise ValueError(
        f"LumiX samples whole scenes of {maps_per_scene} maps (map index fastest), but the sampler's latent "
        f"batch has {user_batch} latents, which is not a multiple of {maps_per_scene}. Set the batch size to a "
        f"multiple of {maps_per_scene} (LumiX Empty Latent does: scenes x {maps_per_scene}), or use the LumiX "
        f"Intrinsic Sampler.")
