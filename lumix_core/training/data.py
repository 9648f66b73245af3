"""Finding the scenes of a training folder (two layouts) and reading their maps as aligned images.

Reference layout (the LumiX/x-flux reader):   <root>/<checkpoint map name>/<id>_<map>.png (or <id>.png),
    captions in <root>/captions*/<id>_color.json ({"caption": ...}) or <id>_color.txt (or <id>.json/.txt).
Scene-folder layout (LumiX Save Maps, the batch client): <root>/<scene>/<map>.png with lumix.json
    holding {"generation": {"prompt": ...}}; Save Maps' depth_16bit.png / normal_16bit.png are preferred
    to its 8-bit twins.

Maps are read at full precision: 8- and 16-bit grey or RGB PNG (16-bit through pypng, as Pillow
reads 16-bit RGB as 8 bits), JPEG, and float EXR (optional `openexr`; a map kept in EXR is converted
as LumiX Save Maps writes it: linear RGB, relative depth, unit normals).

A scene with a missing map, maps of different sizes, an unreadable file or no caption is SKIPPED and
counted (DatasetScan.skipped says which and why); a folder with no usable scene is refused. With
`confine=True` (the ComfyUI node) nothing is read through a link that leaves the dataset folder, and
messages name the folder by `label`, never by its absolute path.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..conventions import encode_depth, encode_normals, linear_to_srgb
from ..maps import MAPS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr")   # in order of preference for one map
CROP_GRANULARITY = 16  # pixels: the FLUX token grid (VAE factor 8 x patch 2); crops snap to it
OUTSIDE = "link leaving the dataset folder"
EXR_HINT = "EXR maps need the optional 'openexr' package: python -m pip install openexr"


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
    label: str = ""                               # how messages name the folder (default: root)

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, reason in self.skipped))

    def summary(self) -> str:
        counts = ", ".join(f"{n} {why}" for why, n in sorted(self.skip_counts().items())) or "none"
        return (f"{len(self.scenes)} scene(s) used, {len(self.skipped)} skipped ({counts}) "
                f"[{self.layout} layout, {self.label or self.root}]")


# ---------------------------------------------------------------------------------------------- reading
def _png_bit_depth(path: str) -> int | None:
    """The bit depth in a PNG's IHDR (None for other files)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _read_png16(path: str) -> np.ndarray:
    import png  # pypng, a dependency (lumix_core.export writes 16-bit PNG with it)

    width, height, rows, info = png.Reader(filename=path).asDirect()
    planes, peak = info["planes"], float(2 ** info["bitdepth"] - 1)
    pixels = np.vstack([np.asarray(row, dtype=np.float64) for row in rows]).reshape(height, width, planes)
    return pixels / peak


def _read_exr(path: str, encoding: str) -> np.ndarray:
    try:
        import OpenEXR
    except ImportError:
        raise OSError(EXR_HINT) from None
    with OpenEXR.File(path) as f:
        channels = {name: np.asarray(ch.pixels, dtype=np.float64) for name, ch in f.channels().items()}
    data = channels.get("RGB", channels.get("RGBA"))
    if data is None:
        grey = channels.get("Y", channels.get("R"))
        if grey is None:
            raise OSError(f"no RGB or Y channel (has {', '.join(sorted(channels)) or 'none'})")
        data = np.repeat(grey.reshape(*grey.shape[:2], 1), 3, axis=2)
    data = torch.from_numpy(np.ascontiguousarray(data[..., :3]))
    if not torch.isfinite(data).all():
        raise OSError("non-finite values (NaN/Inf)")
    if encoding == "srgb":
        out = linear_to_srgb(data)
    elif encoding == "depth":
        # Save Maps writes the relative depth (0..1) as its PNG holds it: kept as is, so a scene trains
        # the same from either file. Other EXRs (metric distances) are normalised per image.
        distance = data.mean(-1)
        inside = bool(((distance >= 0) & (distance <= 1)).all())
        out = distance[..., None].expand(*distance.shape, 3) if inside else encode_depth(distance)
    else:
        out = encode_normals(data)
    return out.numpy()


def read_map(path: str, encoding: str = "srgb") -> np.ndarray:
    """A map file as float64 [H, W, 3] in 0..1 at the file's full precision (grey is repeated to RGB,
    alpha dropped). Raises OSError (or PIL's errors) for an unreadable file."""
    if path.lower().endswith(".exr"):
        return _read_exr(path, encoding)
    if _png_bit_depth(path) == 16:
        pixels = _read_png16(path)
    else:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey from other writers
                pixels = np.asarray(img, dtype=np.float64)[..., None] / 65535.0
            else:
                pixels = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    if pixels.shape[2] in (1, 2):       # grey (+ alpha)
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    return pixels[..., :3]


def _image_size(path: str) -> tuple[int, int]:
    if path.lower().endswith(".exr"):
        pixels = _read_exr(path, "srgb")
        return pixels.shape[1], pixels.shape[0]
    with Image.open(path) as img:  # reads the header only
        return img.size


# ---------------------------------------------------------------------------------------------- scanning
class _Folder:
    """The dataset root; with `confine`, every path is checked to resolve inside it."""

    def __init__(self, root: str, confine: bool):
        self.root, self.confine = root, confine
        self.real = os.path.realpath(root)

    def inside(self, path: str) -> bool:
        if not self.confine:
            return True
        real = os.path.realpath(path)
        return real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path) and self.inside(path)

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path) and self.inside(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path)) if self.isdir(path) else []

    def find_image(self, folder: str, stems: list[str]) -> tuple[str | None, bool]:
        """(the first existing image, whether one was refused for leaving the folder)."""
        refused = False
        for stem in stems:
            for ext in IMAGE_EXTENSIONS:
                path = os.path.join(folder, stem + ext)
                if os.path.isfile(path):
                    if self.inside(path):
                        return path, refused
                    refused = True
        return None, refused


def _check_images(scene_id: str, maps: dict[str, str], caption: str | None, refused: bool = False):
    """(SceneFiles, None) or (None, reason)."""
    missing = [spec.name for spec in MAPS if spec.name not in maps]
    if missing:
        return None, (OUTSIDE if refused else f"missing map: {', '.join(missing)}")
    if caption is None or not caption.strip():
        return None, "no caption"
    sizes = {}
    for name, path in maps.items():
        try:
            sizes[name] = _image_size(path)
        except Exception as exc:  # PIL raises several types for broken files
            detail = str(exc) if EXR_HINT in str(exc) else type(exc).__name__
            return None, f"unreadable file: {os.path.basename(path)} ({detail})"
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{n} {w}x{h}" for n, (w, h) in sizes.items())
        return None, f"misaligned maps: sizes differ ({detail})"
    return SceneFiles(scene_id, {spec.name: maps[spec.name] for spec in MAPS}, caption.strip(),
                      next(iter(sizes.values()))), None


def _read_caption_json(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    caption = data.get("caption") if isinstance(data, dict) else data if isinstance(data, str) else None
    return caption if isinstance(caption, str) else None


def _reference_caption(folder: _Folder, scene_id: str) -> str | None:
    for name in folder.listdir(folder.root):
        captions = os.path.join(folder.root, name)
        if not name.startswith("captions") or not folder.isdir(captions):
            continue
        for stem in (f"{scene_id}_color", scene_id):
            json_path = os.path.join(captions, stem + ".json")
            if folder.isfile(json_path):
                return _read_caption_json(json_path)
            txt_path = os.path.join(captions, stem + ".txt")
            if folder.isfile(txt_path):
                with open(txt_path, encoding="utf-8", errors="replace") as f:
                    return f.read()
    return None


def _scan_reference(folder: _Folder) -> DatasetScan:
    root = folder.root
    ids: set[str] = set()
    for spec in MAPS:
        for name in folder.listdir(os.path.join(root, spec.checkpoint_name)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                suffix = f"_{spec.checkpoint_name}"
                ids.add(stem[:-len(suffix)] if stem.endswith(suffix) else stem)
    scan = DatasetScan(root, "reference", [])
    for scene_id in sorted(ids):
        maps, refused = {}, False
        for spec in MAPS:
            path, out = folder.find_image(os.path.join(root, spec.checkpoint_name),
                                          [f"{scene_id}_{spec.checkpoint_name}", scene_id])
            refused |= out
            if path:
                maps[spec.name] = path
        scene, reason = _check_images(scene_id, maps, _reference_caption(folder, scene_id), refused)
        scan.scenes.append(scene) if scene else scan.skipped.append((scene_id, reason))
    return scan


def _scene_caption(folder: _Folder, scene: str) -> str | None:
    path = os.path.join(scene, "lumix.json")
    if not folder.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    prompt = (data.get("generation") or {}).get("prompt") if isinstance(data, dict) else None
    return prompt if isinstance(prompt, str) else None


def _scan_scene_folders(folder: _Folder) -> DatasetScan:
    scan = DatasetScan(folder.root, "scene-folders", [])
    for name in folder.listdir(folder.root):
        scene = os.path.join(folder.root, name)
        if not os.path.isdir(scene) or name.startswith("."):
            continue
        if not folder.inside(scene):
            scan.skipped.append((name, OUTSIDE))
            continue
        maps, refused = {}, False
        for spec in MAPS:
            path, out = folder.find_image(scene, [f"{spec.name}_16bit", spec.name, spec.checkpoint_name])
            refused |= out
            if path:
                maps[spec.name] = path
        if not maps and not refused and not os.path.isfile(os.path.join(scene, "lumix.json")):
            continue  # not a scene folder (a cache folder, notes, ...)
        found, reason = _check_images(name, maps, _scene_caption(folder, scene), refused)
        scan.scenes.append(found) if found else scan.skipped.append((name, reason))
    return scan


def scan_dataset(root: str, confine: bool = False, label: str | None = None) -> DatasetScan:
    """Every usable scene under `root` and every skipped one with its reason. `confine`: nothing is
    read through links that leave `root`; `label`: the folder's name in messages (default: its path)."""
    root = os.path.abspath(os.path.expanduser(root))
    label = label or root
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {label} does not exist; give the folder that holds the scenes")
    folder = _Folder(root, confine)
    reference = any(folder.isdir(os.path.join(root, spec.checkpoint_name)) for spec in MAPS)
    scan = _scan_reference(folder) if reference else _scan_scene_folders(folder)
    scan.label = label
    if not scan.scenes:
        reasons = "; ".join(f"{sid}: {why}" for sid, why in scan.skipped[:5]) or "no scene folders or map folders found"
        raise DatasetError(
            f"no usable scene in {label} ({reasons}). Expected either <root>/<map>/<id>_<map>.png with map folders "
            f"{', '.join(s.checkpoint_name for s in MAPS)} and captions in <root>/captions*/<id>_color.json, or "
            f"scene folders <root>/<scene>/{{{','.join(s.name for s in MAPS)}}}.png with lumix.json (as LumiX Save "
            "Maps writes).")
    return scan


def looks_like_dataset(path: str) -> bool:
    """Cheap test for folder listings: map folders of the reference layout, or a scene folder inside."""
    try:
        entries = [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    except OSError:
        return False
    names = {e.name for e in entries}
    if any(spec.checkpoint_name in names for spec in MAPS if spec.checkpoint_name != "color") or \
            ({"color", "depth"} <= names):
        return True
    for entry in entries[:50]:
        if os.path.isfile(os.path.join(entry.path, "lumix.json")) or os.path.isfile(os.path.join(entry.path, "color.png")):
            return True
    return False


# ---------------------------------------------------------------------------------------------- images
def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Aspect-preserving size whose short side is `resolution`, long side trimmed to the 16-px grid."""
    scale = resolution / min(width, height)
    w, h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    return w - w % CROP_GRANULARITY, h - h % CROP_GRANULARITY


def _resize_channel(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BICUBIC), dtype=np.float32)


def load_scene_images(scene: SceneFiles, resolution: int) -> torch.Tensor:
    """[M, H, W, 3] float32 in 0..1, every map resized the same way (short side = resolution,
    bicubic in float, the long side centre-trimmed to the 16-pixel grid). Raises for unreadable files."""
    encodings = {spec.name: spec.encoding for spec in MAPS}
    out = []
    for name, path in scene.maps.items():
        pixels = read_map(path, encodings.get(name, "srgb"))
        height, width = pixels.shape[:2]
        w, h = resized_size(width, height, resolution)
        scale = resolution / min(width, height)
        full = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        if full != (width, height):
            pixels = np.stack([_resize_channel(pixels[..., c], full) for c in range(3)], axis=2)
        left, top = (full[0] - w) // 2, (full[1] - h) // 2
        pixels = np.clip(pixels[top:top + h, left:left + w], 0.0, 1.0)  # bicubic overshoots a little
        out.append(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)))
    return torch.stack(out)


def flip_scene_images(images: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror of [M, H, W, 3] maps. A mirrored normal points the other way in x: its red
    channel (x, stored as (x + 1) / 2) becomes 1 - red."""
    flipped = images.flip(2)
    normal = [spec.index for spec in MAPS if spec.encoding == "normal"]
    for i in normal:
        flipped[i, ..., 0] = 1.0 - flipped[i, ..., 0]
    return flipped
