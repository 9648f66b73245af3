"""Host-free training fixtures: a tiny FLUX-shaped denoiser built from tests/tiny_flux.py's plain
blocks driven by lumix_core's LumiX block forwards (the same functions ComfyUI's patch calls), an
in-memory scene source, and synthetic dataset folders in both layouts."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from lumix_core import double_block_forward, single_block_forward
from lumix_core.maps import MAPS
from lumix_core.training import TrainingExample
from tiny_flux import DoubleBlock, SingleBlock, randomize_, rope_attention

HIDDEN, HEADS, DOUBLE, SINGLE, CONTEXT, VEC, CH = 32, 2, 2, 2, 16, 8, 4


def timestep_features(t, dim=HIDDEN):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TinyDenoiser(nn.Module):
    """x [B, CH, h, w] -> v, tokens = 2x2 patches; t and guidance enter through `vec` per sample.
    Records the timesteps of every call in `seen_t` (a spy for tests)."""

    def __init__(self, seed=0):
        super().__init__()
        self.img_in = nn.Linear(CH * 4, HIDDEN)
        self.txt_in = nn.Linear(CONTEXT, HIDDEN)
        self.time_in = nn.Linear(HIDDEN, HIDDEN)
        self.guidance_in = nn.Linear(HIDDEN, HIDDEN)
        self.vector_in = nn.Linear(VEC, HIDDEN)
        self.double_blocks = nn.ModuleList([DoubleBlock(HIDDEN, HEADS) for _ in range(DOUBLE)])
        self.single_blocks = nn.ModuleList([SingleBlock(HIDDEN, HEADS) for _ in range(SINGLE)])
        self.out = nn.Linear(HIDDEN, CH * 4)
        randomize_(self, seed)
        self.requires_grad_(False)
        self.adapters = None
        self.seen_t = []

    def forward(self, x, t, context, y, guidance, checkpointing=False):
        self.seen_t.append(t.detach().clone())
        B, C, h, w = x.shape
        img = x.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // 2) * (w // 2), C * 4)
        img, txt = self.img_in(img), self.txt_in(context)
        vec = self.time_in(timestep_features(t)) + self.guidance_in(timestep_features(guidance)) + self.vector_in(y)
        blocks = self.adapters.block_dict() if self.adapters is not None else {}

        def lora(kind, i):
            b = blocks.get((kind, i), {})
            return dict(kv_lora=b.get("kv_tt_lora"), proj_lora=b.get("proj_tt_lora"))

        def run(fn, *args):
            if checkpointing and torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
            return fn(*args)

        for i, block in enumerate(self.double_blocks):
            img, txt = run(lambda a, b, i=i, block=block: double_block_forward(
                block, a, b, vec, None, rope_attention, maps_per_scene=5, **lora("double_blocks", i)), img, txt)
        joint = torch.cat((txt, img), 1)
        for i, block in enumerate(self.single_blocks):
            joint = run(lambda a, i=i, block=block: single_block_forward(
                block, a, vec, None, rope_attention, maps_per_scene=5, **lora("single_blocks", i)), joint)
        out = self.out(joint[:, txt.shape[1]:])
        return out.view(B, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, h, w)


class MemoryScenes:
    """A SceneSource of fixed random scenes (no crop, no flip; caption dropout honoured)."""
    num_maps = 5

    def __init__(self, count=4, size=4, seed=0, tokens=3):
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(count, 1, CH, size, size, generator=g)
        # the maps of a scene are related (a shared base plus a per-map offset): something to learn
        self.latents = base + 0.5 * torch.randn(count, 5, CH, size, size, generator=g)
        self.context = torch.randn(count, tokens, CONTEXT, generator=g)
        self.pooled = torch.randn(count, VEC, generator=g)
        self.requests = []

    def __len__(self):
        return len(self.latents)

    def example(self, index, generator, config):
        self.requests.append(index)
        drop = torch.rand((), generator=generator).item() < config.caption_dropout
        ctx = torch.zeros_like(self.context[index]) if drop else self.context[index]
        return TrainingExample(self.latents[index].clone(), ctx, self.pooled[index])


def write_png(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def scene_pixels(seed, width=40, height=32):
    rng = np.random.default_rng(seed)
    return {spec.name: rng.integers(0, 256, (height, width, 3)) for spec in MAPS}


def make_reference_dataset(root, ids, caption_kind="json", width=40, height=32):
    for n, scene_id in enumerate(ids):
        for spec in MAPS:
            write_png(os.path.join(root, spec.checkpoint_name, f"{scene_id}_{spec.checkpoint_name}.png"),
                      scene_pixels(n, width, height)[spec.name])
        cap = os.path.join(root, "captions_blip2")
        os.makedirs(cap, exist_ok=True)
        if caption_kind == "json":
            with open(os.path.join(cap, f"{scene_id}_color.json"), "w") as f:
                json.dump({"caption": f"a room number {n}"}, f)
        else:
            with open(os.path.join(cap, f"{scene_id}_color.txt"), "w") as f:
                f.write(f"a room number {n}")


def make_scene_folder(root, name, seed=0, prompt="a kitchen", width=40, height=32, maps=None):
    folder = os.path.join(root, name)
    pixels = scene_pixels(seed, width, height)
    for spec in MAPS:
        if maps is None or spec.name in maps:
            write_png(os.path.join(folder, f"{spec.name}.png"), pixels[spec.name])
    if prompt is not None:
        with open(os.path.join(folder, "lumix.json"), "w") as f:
            json.dump({"format": "lumix-maps", "generation": {"prompt": prompt}}, f)
    return folder


def make_rooms(root, count, width=32, height=32):
    """Scene folders scene_0 .. scene_<count-1> under root, each its own seed, captioned "room <i>"."""
    for i in range(count):
        make_scene_folder(root, f"scene_{i}", seed=i, prompt=f"room {i}", width=width, height=height)
