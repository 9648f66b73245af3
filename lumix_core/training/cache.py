"""Encoding a scanned dataset once: VAE latents and text embeddings cached on disk (safetensors).

Latent files are keyed by the bytes of the scene's map files, the resolution, the flip setting and
the encoder's identity; text files by the caption, the text encoder's identity and `text_identity`
(what else changes the embedding: the tokenizer's settings, e.g. T5 padding, or the tokens
themselves). A changed image, setting or encoder gives a new key, so a stale cache is never read.
Files are written atomically, so several processes may fill the same cache.

Cache files are checked before they are used: at encoding, a file whose keys or shapes do not fit
is encoded again (and counted); while training, every read is checked for its keys, shape (map
count, latent size, widths) and finite values, and a bad file stops training with a CacheError that
names the file relative to the cache folder and says how to rebuild it. While training, only the
current scene's files are read (the VAE and the text encoders need not stay in memory).
Images are decoded before any encoder is called, so a folder of undecodable scenes is refused
before the (lazily loaded) encoders load.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import TrainConfig
from .data import DatasetScan, flip_scene_images, load_scene_images, resized_size
from .files import atomic_write
from .objective import TrainingExample

CACHE_VERSION = "2"  # 2: maps read at full precision and resized in float (1: through 8-bit RGB)
T5_MIN_LENGTH = 512  # the reference pads T5-XXL to 512 tokens (ComfyUI's FLUX default is at least 256)
REBUILD_HINT = ("delete that file (or the whole cache folder) and encode the dataset again: the LumiX Training "
                "Dataset node or the command-line trainer re-encodes the files that are missing")
# encode_images([n, H, W, 3] in 0..1) -> raw VAE latents [n, C, H/8, W/8]
ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
# encode_text(caption) -> (context [L, D], pooled [V])
TextEncoder = Callable[[str], tuple[torch.Tensor, torch.Tensor]]


class CacheError(ValueError):
    """A cache file does not hold what it should; the message names it and says how to rebuild it."""


CACHE_FOLDER = ".lumix_cache"  # inside the dataset folder: where both the node and the CLI look by default
REFERENCE_TOKENIZER = {"t5xxl_min_length": T5_MIN_LENGTH}  # the command-line trainer's tokenizer options


def text_identity(tokens, layer=None, patches: str = "") -> str:
    """What changes a caption's embedding besides its text and the encoders' weights, for its cache
    key: the tokens the tokenizer made of it (so its options count, e.g. T5 padding), the CLIP layer
    used and the patches (LoRAs) on the text encoder. The node and the CLI both key text by this."""
    h = hashlib.sha256(f"layer={layer}|patches={patches}|".encode())
    h.update(repr(tokens).encode())
    return h.hexdigest()


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def latent_key(paths: list[str], resolution: int, flip: bool, encoder_id: str) -> str:
    h = hashlib.sha256(f"lumix-latents/{CACHE_VERSION}/{resolution}/{int(flip)}/{encoder_id}".encode())
    for path in paths:
        h.update(_file_digest(path))
    return h.hexdigest()[:32]


def text_key(caption: str, encoder_id: str, identity: str = "") -> str:
    h = hashlib.sha256(f"lumix-text/{CACHE_VERSION}/{encoder_id}/".encode())
    h.update(hashlib.sha256(identity.encode()).digest())  # hashed apart: no overlap with the caption
    h.update(caption.encode())
    return h.hexdigest()[:32]


def _write(path: str, tensors: dict) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp))


# ------------------------------------------------------------------------------------------- checks
def _shapes(path: str) -> dict[str, tuple[int, ...]] | None:
    """Key -> shape from the file's header (no tensor is read); None for an unreadable file."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # SafetensorError, OSError, a truncated or foreign file
        return None


def _latents_problem(shapes, keys, num_maps, size, channels) -> str | None:
    """Why a latent file's header does not fit (None: it fits). size (h, w) of the latent grid."""
    if shapes is None:
        return "is not a readable safetensors file"
    for key in keys:
        if key not in shapes:
            return f"has no '{key}' tensor (it has {', '.join(sorted(shapes)) or 'none'})"
        shape = shapes[key]
        if len(shape) != 4 or shape[0] != num_maps or tuple(shape[2:]) != tuple(size) or \
                (channels is not None and shape[1] != channels):
            want = f"[{num_maps}, {channels if channels is not None else 'C'}, {size[0]}, {size[1]}]"
            return f"holds '{key}' of shape {list(shape)}, expected {want} ({num_maps} maps, latents of the scene's size)"
    return None


def _text_problem(shapes, dims) -> str | None:
    if shapes is None:
        return "is not a readable safetensors file"
    for key, ndim in (("context", 2), ("pooled", 1)):
        if key not in shapes:
            return f"has no '{key}' tensor (it has {', '.join(sorted(shapes)) or 'none'})"
        if len(shapes[key]) != ndim or (dims is not None and shapes[key][-1] != dims[key]):
            want = f"width {dims[key]}" if dims is not None else f"{ndim} dimensions"
            return f"holds '{key}' of shape {list(shapes[key])}, expected {want}"
    return None


@dataclass
class CachedScene:
    scene_id: str
    latents: str   # safetensors with "latents" [M, C, h, w] (and "flipped" when flip is on)
    text: str      # safetensors with "context" and "pooled"
    latent_size: Optional[tuple[int, int]] = None   # (h, w) of the whole scene's latents
    caption: str = ""  # for people (validation grids); the embedding is in `text`


@dataclass
class EncodedDataset:
    """A SceneSource over cached files. `latent_transform` maps raw VAE latents into the model's
    latent space (ComfyUI: model.process_latent_in); identity by default."""
    scenes: list[CachedScene]
    empty_text: str
    resolution: int
    flip: bool
    num_maps: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    summary: str = ""
    latent_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    cache_dir: str = ""
    cache_label: str = ""          # how messages name the cache folder
    channels: Optional[int] = None  # latent channels of every file
    text_dims: Optional[dict] = None  # {"context": D, "pooled": V}

    def __len__(self) -> int:
        return len(self.scenes)

    def with_latent_transform(self, transform) -> "EncodedDataset":
        return EncodedDataset(self.scenes, self.empty_text, self.resolution, self.flip, self.num_maps,
                              self.skipped, self.summary, transform, self.cache_dir, self.cache_label,
                              self.channels, self.text_dims)

    def _name(self, path: str) -> str:
        """A cache file as messages name it: relative to the cache folder, under its label."""
        rel = os.path.relpath(path, self.cache_dir) if self.cache_dir else os.path.basename(path)
        return f"{self.cache_label or self.cache_dir}/{rel.replace(os.sep, '/')}"

    def _fail(self, path: str, scene_id: str | None, problem: str) -> CacheError:
        whose = f" (scene {scene_id})" if scene_id else " (the empty caption)"
        return CacheError(f"the dataset cache file {self._name(path)}{whose} {problem}; {REBUILD_HINT}")

    def _read(self, path: str, scene_id: str | None, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                present = set(f.keys())
                missing = [k for k in keys if k not in present]
                if missing:
                    raise self._fail(path, scene_id, f"has no '{missing[0]}' tensor (it has "
                                                     f"{', '.join(sorted(present)) or 'none'})")
                tensors = {k: f.get_tensor(k).clone() for k in keys}  # never a view of the mapped file
        except CacheError:
            raise
        except Exception as exc:  # SafetensorError, OSError (deleted, truncated, not safetensors)
            raise self._fail(path, scene_id, f"cannot be read ({type(exc).__name__})") from None
        for key, t in tensors.items():
            if not torch.isfinite(t).all():
                raise self._fail(path, scene_id, f"holds non-finite values (NaN/Inf) in '{key}'")
        return tensors

    def _latents(self, scene: CachedScene, key: str) -> torch.Tensor:
        latents = self._read(scene.latents, scene.scene_id, (key,))[key]
        size = scene.latent_size or tuple(latents.shape[-2:])
        problem = _latents_problem({key: tuple(latents.shape)}, (key,), self.num_maps, size, self.channels)
        if problem:
            raise self._fail(scene.latents, scene.scene_id, problem)
        return latents

    def _text(self, path: str, scene_id: str | None) -> dict[str, torch.Tensor]:
        text = self._read(path, scene_id, ("context", "pooled"))
        problem = _text_problem({k: tuple(v.shape) for k, v in text.items()}, self.text_dims)
        if problem:
            raise self._fail(path, scene_id, problem)
        return text

    def example(self, index: int, generator: torch.Generator, config: TrainConfig) -> TrainingExample:
        """Scene `index` with a random flip (if enabled), one random crop shared by all maps (on the
        16-pixel grid) and caption dropout; the random draws always happen in the same order."""
        if config.flip and not self.flip:
            raise ValueError("flip is on, but the dataset was encoded without flipped copies; encode it with flip on")
        if config.resolution != self.resolution:
            raise ValueError(f"the dataset was encoded for {self.resolution}-pixel crops, the training asks for "
                             f"{config.resolution}; encode the dataset at {config.resolution}")
        scene = self.scenes[index]
        flip_coin, y_coin, x_coin, drop_coin = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        key = "flipped" if config.flip and flip_coin < 0.5 else "latents"
        latents = self._latents(scene, key)
        crop = self.resolution // 8
        cells_y, cells_x = (latents.shape[-2] - crop) // 2 + 1, (latents.shape[-1] - crop) // 2 + 1
        top, left = 2 * int(y_coin * cells_y), 2 * int(x_coin * cells_x)
        latents = latents[..., top:top + crop, left:left + crop].float()
        if self.latent_transform is not None:
            latents = self.latent_transform(latents)
        dropped = drop_coin < config.caption_dropout
        text = self._text(self.empty_text, None) if dropped else self._text(scene.text, scene.scene_id)
        return TrainingExample(latents=latents, context=text["context"].float(), pooled=text["pooled"].float())


def _checked_output(what: str, scene_id: str, tensors: dict) -> dict:
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"the {what} returned non-finite values (NaN/Inf) in '{key}' for scene {scene_id}; "
                             "nothing was cached for it. Check the encoder (a float16 VAE can overflow: load it "
                             "in bf16 or fp32).")
    return tensors


def _most_common(values):
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def encode_dataset(scan: DatasetScan, encode_images: ImageEncoder, encode_text: TextEncoder, cache_dir: str,
                   resolution: int = 512, flip: bool = False, encoder_id: str = "",
                   progress: Optional[Callable[[int, int], None]] = None,
                   text_identity: Optional[Callable[[str], str]] = None,
                   cache_label: str | None = None, text_encoder_id: Optional[str] = None) -> EncodedDataset:
    """Encode (or find in the cache) every scene of `scan`. A scene whose files cannot be decoded is
    skipped and counted; a cached file that does not fit is encoded again. `progress(done, total)` is
    called after each scene; `text_identity(caption)` adds what else changes a text embedding to its
    key; `cache_label` names the cache folder in messages (default: its path). `encoder_id` keys the
    latents (the VAE) and `text_encoder_id` the embeddings (default: encoder_id), so that another VAE
    does not re-encode every caption."""
    if not scan.scenes:
        raise ValueError(f"no usable scene in {scan.label or scan.root}: nothing to encode")
    identity = text_identity or (lambda caption: "")
    text_id = encoder_id if text_encoder_id is None else text_encoder_id
    label = cache_label or cache_dir
    num_maps = len(scan.scenes[0].maps)
    keys = ("latents", "flipped") if flip else ("latents",)
    plan = []
    for scene in scan.scenes:
        w, h = resized_size(*scene.size, resolution)
        lat_path = os.path.join(cache_dir, "latents",
                                latent_key(list(scene.maps.values()), resolution, flip, encoder_id) + ".safetensors")
        txt_path = os.path.join(cache_dir, "text",
                                text_key(scene.caption, text_id, identity(scene.caption)) + ".safetensors")
        plan.append((scene, (h // 8, w // 8), lat_path, _shapes(lat_path), txt_path, _shapes(txt_path)))
    # widths every file must share (files are keyed by the encoder, so one value): the most common among
    # the cached files that are otherwise fine, or the first fresh encoding's
    channels = _most_common(s["latents"][1] for _, size, _, s, _, _ in plan
                            if s and not _latents_problem(s, keys, num_maps, size, None))
    dims = _most_common((s["context"][-1], s["pooled"][-1]) for *_, s in plan if s and not _text_problem(s, None))
    dims = {"context": dims[0], "pooled": dims[1]} if dims else None
    cached, skipped, rebuilt = [], list(scan.skipped), 0
    for done, (scene, size, lat_path, lat_shapes, txt_path, txt_shapes) in enumerate(plan, 1):
        if lat_shapes is None or _latents_problem(lat_shapes, keys, num_maps, size, channels):
            try:
                images = load_scene_images(scene, resolution)
            except Exception as exc:  # a file PIL can read the header of but not decode
                skipped.append((scene.scene_id, f"unreadable file: {type(exc).__name__}"))
                continue
            tensors = {"latents": encode_images(images).float().cpu()}
            if flip:
                tensors["flipped"] = encode_images(flip_scene_images(images)).float().cpu()
            problem = _latents_problem({k: tuple(v.shape) for k, v in tensors.items()}, keys, num_maps, size, channels)
            if problem:
                raise ValueError(f"the VAE's latents for scene {scene.scene_id} do not fit: {problem.split(' ', 1)[1]}; "
                                 "connect the FLUX VAE (8x downscaling)")
            rebuilt += os.path.isfile(lat_path)
            _write(lat_path, _checked_output("VAE", scene.scene_id, tensors))
            channels = tensors["latents"].shape[1]
        if txt_shapes is None or _text_problem(txt_shapes, dims):
            context, pooled = encode_text(scene.caption)
            rebuilt += os.path.isfile(txt_path)
            _write(txt_path, _checked_output("text encoder", scene.scene_id, {"context": context, "pooled": pooled}))
            dims = {"context": context.shape[-1], "pooled": pooled.shape[-1]}
        cached.append(CachedScene(scene.scene_id, lat_path, txt_path, size, scene.caption))
        if progress is not None:
            progress(done, len(scan.scenes))
    if not cached:  # before the empty caption is encoded: no text encoder loads for an unusable folder
        raise ValueError(f"no scene of {scan.label or scan.root} could be encoded: " +
                         "; ".join(f"{sid}: {why}" for sid, why in skipped[:5]))
    empty_path = os.path.join(cache_dir, "text", text_key("", text_id, identity("")) + ".safetensors")
    empty_shapes = _shapes(empty_path)
    if empty_shapes is None or _text_problem(empty_shapes, dims):
        context, pooled = encode_text("")
        rebuilt += os.path.isfile(empty_path)
        _write(empty_path, _checked_output("text encoder", "(empty caption)", {"context": context, "pooled": pooled}))
    reasons = DatasetScan(scan.root, scan.layout, [], skipped).skip_counts()
    counts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "none"
    summary = (f"{len(cached)} scene(s) used, {len(skipped)} skipped ({counts}) "
               f"[{scan.layout} layout, {scan.label or scan.root}]")
    if rebuilt:
        summary += f"; {rebuilt} damaged cache file(s) encoded again"
    return EncodedDataset(cached, empty_path, resolution, flip, num_maps, skipped, summary, None,
                          cache_dir, label, channels, dims)
