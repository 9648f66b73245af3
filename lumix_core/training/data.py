"""Finding the scenes of a training folder (two layouts) and reading their maps as aligned images.

Reference layout (the LumiX/x-flux reader):   <root>/<checkpoint map name>/<id>_<map>.png (or <id>.png),
    captions in <root>/captions*/<id>_color.json ({"caption": ...}) or <id>_color.txt (or <id>.json/.txt).
Scene-folder layout (LumiX Save Maps, the batch client): <root>/<scene>/<map>.png with lumix.json
    holding {"generation": {"prompt": ...}}.

A scene with a missing map, maps of different sizes, an unreadable file or no caption is SKIPPED and
counted (DatasetScan.skipped says which and why); a folder with no usable scene is refused.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..maps import MAPS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CROP_GRANULARITY = 16  # pixels: the FLUX token grid (VAE factor 8 x patch 2); crops snap to it


class DatasetError(ValueError):
    """The folder cannot be used for training; the message says why and what to do."""


@dataclass
class SceneFiles:
    scene_id: str
    maps: dict[str, str]     # display map name -> file, in MAP order
    caption: str
    size: tuple[int, int]    # (width, height) shared by all maps


@dataclass
class DatasetScan:
    root: str
    layout: str                                   # "reference" or "scene-folders"
    scenes: list[SceneFiles]
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (scene id, reason)

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, reason in self.skipped))

    def summary(self) -> str:
        counts = ", ".join(f"{n} {why}" for why, n in sorted(self.skip_counts().items())) or "none"
        return f"{len(self.scenes)} scene(s) used, {len(self.skipped)} skipped ({counts}) [{self.layout} layout, {self.root}]"


def _find_image(folder: str, stems: list[str]) -> str | None:
    for stem in stems:
        for ext in IMAGE_EXTENSIONS:
            path = os.path.join(folder, stem + ext)
            if os.path.isfile(path):
                return path
    return None


def _image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:  # reads the header only
        return img.size


def _check_images(scene_id: str, maps: dict[str, str], caption: str | None):
    """(SceneFiles, None) or (None, reason)."""
    missing = [spec.name for spec in MAPS if spec.name not in maps]
    if missing:
        return None, f"missing map: {', '.join(missing)}"
    if caption is None or not caption.strip():
        return None, "no caption"
    sizes = {}
    for name, path in maps.items():
        try:
            sizes[name] = _image_size(path)
        except Exception as exc:  # PIL raises several types for broken files
            return None, f"unreadable file: {os.path.basename(path)} ({type(exc).__name__})"
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{n} {w}x{h}" for n, (w, h) in sizes.items())
        return None, f"misaligned maps: sizes differ ({detail})"
    return SceneFiles(scene_id, {spec.name: maps[spec.name] for spec in MAPS}, caption.strip(),
                      next(iter(sizes.values()))), None


def _reference_caption(root: str, scene_id: str) -> str | None:
    for folder in sorted(d for d in os.listdir(root) if d.startswith("captions") and os.path.isdir(os.path.join(root, d))):
        for stem in (f"{scene_id}_color", scene_id):
            json_path = os.path.join(root, folder, stem + ".json")
            if os.path.isfile(json_path):
                try:
                    with open(json_path, encoding="utf-8") as f:
                        data = json.load(f)
                except (OSError, ValueError):
                    return None
                caption = data.get("caption") if isinstance(data, dict) else data if isinstance(data, str) else None
                return caption if isinstance(caption, str) else None
            txt_path = os.path.join(root, folder, stem + ".txt")
            if os.path.isfile(txt_path):
                with open(txt_path, encoding="utf-8", errors="replace") as f:
                    return f.read()
    return None


def _scan_reference(root: str) -> DatasetScan:
    ids: set[str] = set()
    for spec in MAPS:
        folder = os.path.join(root, spec.checkpoint_name)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                suffix = f"_{spec.checkpoint_name}"
                ids.add(stem[:-len(suffix)] if stem.endswith(suffix) else stem)
    scan = DatasetScan(root, "reference", [])
    for scene_id in sorted(ids):
        maps = {}
        for spec in MAPS:
            path = _find_image(os.path.join(root, spec.checkpoint_name), [f"{scene_id}_{spec.checkpoint_name}", scene_id])
            if path:
                maps[spec.name] = path
        scene, reason = _check_images(scene_id, maps, _reference_caption(root, scene_id))
        scan.scenes.append(scene) if scene else scan.skipped.append((scene_id, reason))
    return scan


def _scene_caption(folder: str) -> str | None:
    path = os.path.join(folder, "lumix.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    prompt = (data.get("generation") or {}).get("prompt") if isinstance(data, dict) else None
    return prompt if isinstance(prompt, str) else None


def _scan_scene_folders(root: str) -> DatasetScan:
    scan = DatasetScan(root, "scene-folders", [])
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        maps = {}
        for spec in MAPS:
            path = _find_image(folder, [spec.name, spec.checkpoint_name])
            if path:
                maps[spec.name] = path
        if not maps and not os.path.isfile(os.path.join(folder, "lumix.json")):
            continue  # not a scene folder (a cache folder, notes, ...)
        scene, reason = _check_images(name, maps, _scene_caption(folder))
        scan.scenes.append(scene) if scene else scan.skipped.append((name, reason))
    return scan


def scan_dataset(root: str) -> DatasetScan:
    """Every usable scene under `root` and every skipped one with its reason."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root} does not exist; give the folder that holds the scenes")
    reference = any(os.path.isdir(os.path.join(root, spec.checkpoint_name)) for spec in MAPS)
    scan = _scan_reference(root) if reference else _scan_scene_folders(root)
    if not scan.scenes:
        reasons = "; ".join(f"{sid}: {why}" for sid, why in scan.skipped[:5]) or "no scene folders or map folders found"
        raise DatasetError(
            f"no usable scene in {root} ({reasons}). Expected either <root>/<map>/<id>_<map>.png with map folders "
            f"{', '.join(s.checkpoint_name for s in MAPS)} and captions in <root>/captions*/<id>_color.json, or "
            f"scene folders <root>/<scene>/{{{','.join(s.name for s in MAPS)}}}.png with lumix.json (as LumiX Save "
            "Maps writes).")
    return scan


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Aspect-preserving size whose short side is `resolution`, long side trimmed to the 16-px grid."""
    scale = resolution / min(width, height)
    w, h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    return w - w % CROP_GRANULARITY, h - h % CROP_GRANULARITY


def load_scene_images(scene: SceneFiles, resolution: int) -> torch.Tensor:
    """[M, H, W, 3] float32 in 0..1, every map resized the same way (short side = resolution,
    bicubic, the long side centre-trimmed to the 16-pixel grid). Raises OSError for unreadable files."""
    out = []
    for name, path in scene.maps.items():
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = resized_size(img.width, img.height, resolution)
            scale = resolution / min(img.width, img.height)
            full = (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale)))
            img = img.resize(full, Image.BICUBIC)
            left, top = (full[0] - w) // 2, (full[1] - h) // 2
            img = img.crop((left, top, left + w, top + h))
            out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    return torch.stack(out)


def flip_scene_images(images: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror of [M, H, W, 3] maps. A mirrored normal points the other way in x: its red
    channel (x, stored as (x + 1) / 2) becomes 1 - red."""
    flipped = images.flip(2)
    normal = [spec.index for spec in MAPS if spec.encoding == "normal"]
    for i in normal:
        flipped[i, ..., 0] = 1.0 - flipped[i, ..., 0]
    return flipped
