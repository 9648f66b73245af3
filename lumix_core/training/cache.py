"""Encoding a scanned dataset once: VAE latents and text embeddings cached on disk (safetensors).

Latent files are keyed by the bytes of the scene's map files, the resolution, the flip setting and
the encoder's identity; text files by the caption and the text encoder's identity. A changed image,
setting or encoder gives a new key, so a stale cache is never read. Files are written atomically,
so several processes may fill the same cache. While training, only the current scene's files are
read (the VAE and the text encoders need not stay in memory).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import TrainConfig
from .data import DatasetScan, flip_scene_images, load_scene_images
from .files import atomic_write
from .objective import TrainingExample

CACHE_VERSION = "1"
# encode_images([n, H, W, 3] in 0..1) -> raw VAE latents [n, C, H/8, W/8]
ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
# encode_text(caption) -> (context [L, D], pooled [V])
TextEncoder = Callable[[str], tuple[torch.Tensor, torch.Tensor]]


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


def text_key(caption: str, encoder_id: str) -> str:
    return hashlib.sha256(f"lumix-text/{CACHE_VERSION}/{encoder_id}/{caption}".encode()).hexdigest()[:32]


def _write(path: str, tensors: dict) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp))


def _read(path: str, keys: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in (keys or f.keys())}


@dataclass
class CachedScene:
    scene_id: str
    latents: str   # safetensors with "latents" [M, C, h, w] (and "flipped" when flip is on)
    text: str      # safetensors with "context" and "pooled"


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

    def __len__(self) -> int:
        return len(self.scenes)

    def with_latent_transform(self, transform) -> "EncodedDataset":
        return EncodedDataset(self.scenes, self.empty_text, self.resolution, self.flip, self.num_maps,
                              self.skipped, self.summary, transform)

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
        latents = _read(scene.latents, (key,))[key]
        crop = self.resolution // 8
        cells_y, cells_x = (latents.shape[-2] - crop) // 2 + 1, (latents.shape[-1] - crop) // 2 + 1
        top, left = 2 * int(y_coin * cells_y), 2 * int(x_coin * cells_x)
        latents = latents[..., top:top + crop, left:left + crop].float()
        if self.latent_transform is not None:
            latents = self.latent_transform(latents)
        text = _read(self.empty_text if drop_coin < config.caption_dropout else scene.text)
        return TrainingExample(latents=latents, context=text["context"].float(), pooled=text["pooled"].float())


def encode_dataset(scan: DatasetScan, encode_images: ImageEncoder, encode_text: TextEncoder, cache_dir: str,
                   resolution: int = 512, flip: bool = False, encoder_id: str = "",
                   progress: Optional[Callable[[int, int], None]] = None) -> EncodedDataset:
    """Encode (or find in the cache) every scene of `scan`. A scene whose files cannot be decoded is
    skipped and counted. `progress(done, total)` is called after each scene."""
    os.makedirs(cache_dir, exist_ok=True)
    cached, skipped = [], list(scan.skipped)
    empty_path = os.path.join(cache_dir, "text", text_key("", encoder_id) + ".safetensors")
    if not os.path.isfile(empty_path):
        context, pooled = encode_text("")
        _write(empty_path, {"context": context, "pooled": pooled})
    for done, scene in enumerate(scan.scenes, 1):
        paths = list(scene.maps.values())
        lat_path = os.path.join(cache_dir, "latents", latent_key(paths, resolution, flip, encoder_id) + ".safetensors")
        txt_path = os.path.join(cache_dir, "text", text_key(scene.caption, encoder_id) + ".safetensors")
        if not os.path.isfile(lat_path):
            try:
                images = load_scene_images(scene, resolution)
            except Exception as exc:  # a file PIL can read the header of but not decode
                skipped.append((scene.scene_id, f"unreadable file: {type(exc).__name__}: {exc}"))
                continue
            tensors = {"latents": encode_images(images).float().cpu()}
            if flip:
                tensors["flipped"] = encode_images(flip_scene_images(images)).float().cpu()
            _write(lat_path, tensors)
        if not os.path.isfile(txt_path):
            context, pooled = encode_text(scene.caption)
            _write(txt_path, {"context": context, "pooled": pooled})
        cached.append(CachedScene(scene.scene_id, lat_path, txt_path))
        if progress is not None:
            progress(done, len(scan.scenes))
    if not cached:
        raise ValueError(f"no scene of {scan.root} could be encoded: " +
                         "; ".join(f"{sid}: {why}" for sid, why in skipped[:5]))
    n_maps = len(scan.scenes[0].maps)
    reasons = DatasetScan(scan.root, scan.layout, [], skipped).skip_counts()
    counts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "none"
    summary = f"{len(cached)} scene(s) used, {len(skipped)} skipped ({counts}) [{scan.layout} layout, {scan.root}]"
    return EncodedDataset(cached, empty_path, resolution, flip, n_maps, skipped, summary)
