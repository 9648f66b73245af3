"""Files for the command-line trainer's host tests: a tiny FLUX saved as safetensors in ComfyUI's FLUX
key layout, a dataset in the reference layout, its cache pre-built with tiny stand-ins for the VAE and
the text encoders (which the trainer then never loads), and a TOML config pointing at all of it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

from conftest import REPO
from tiny_comfy import CONTEXT, DOUBLE, HEADS, HIDDEN, SINGLE, VEC, TinyCLIP, TinyVAE, tiny_flux
from training_fixtures import make_reference_dataset

TRAIN_SCRIPT = REPO / "scripts" / "lumix_train.py"
HEAD_DIM = HIDDEN // HEADS
FLUX_CONFIG = {"in_channels": 16, "out_channels": 16, "vec_in_dim": VEC, "context_in_dim": CONTEXT,
               "hidden_size": HIDDEN, "mlp_ratio": 2.0, "num_heads": HEADS, "depth": DOUBLE,
               "depth_single_blocks": SINGLE, "axes_dim": [HEAD_DIM // 4, 3 * HEAD_DIM // 8, 3 * HEAD_DIM // 8],
               "theta": 10000, "qkv_bias": True, "guidance_embed": True, "patch_size": 2}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_toml(path: Path, sections: dict) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


ENCODER_SHAPES = {  # tiny encoder files in the real files' key layouts (only fingerprinted, never loaded)
    "vae": {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_out.weight": (3, 8, 3, 3), "encoder.norm_out.weight": (8,)},
    "clip_l": {"text_model.embeddings.token_embedding.weight": (64, 8), "text_model.encoder.layers.0.mlp.fc1.weight": (16, 8),
               "text_projection.weight": (8, 8)},
    "t5xxl": {"shared.weight": (64, 8), "encoder.block.0.layer.1.DenseReluDense.wo.weight": (8, 16)},
}


def write_encoder_files(folder: Path, seed: int = 0) -> dict:
    files = {}
    g = torch.Generator().manual_seed(seed)
    for role, shapes in ENCODER_SHAPES.items():
        files[role] = folder / f"tiny_{role}_{seed}.safetensors"
        save_file({k: torch.randn(s, generator=g).to(torch.float16) for k, s in shapes.items()}, str(files[role]))
    return {role: str(path) for role, path in files.items()}


def _holder(tensors: dict, prefix: str = "") -> torch.nn.Module:
    """A module whose state dict is `tensors` under `prefix` (as ComfyUI wraps a file's names)."""
    module = torch.nn.Module()
    for name, t in tensors.items():
        parent = module
        parts = (prefix + name).split(".")
        for part in parts[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.register_parameter(parts[-1], torch.nn.Parameter(t, requires_grad=False))
    return module


class FileBackedVAE(TinyVAE):
    """TinyVAE's encoding, with the weights of a VAE file as ComfyUI holds them (first_stage_model)."""

    def __init__(self, path: str):
        super().__init__()
        self.encode_calls = 0
        self.first_stage_model = _holder(load_file(path))

    def encode(self, images):
        self.encode_calls += 1
        return super().encode(images)


class FileBackedCLIP:
    """ComfyUI's CLIP.tokenize over the real FLUX tokenizer (T5 padded to 512 as T5TokenizerOptions does),
    with the two text encoder files' weights as ComfyUI holds them (cond_stage_model.clip_l/.t5xxl.transformer);
    its embeddings are a deterministic function of the tokens."""

    def __init__(self, clip_l: str, t5xxl: str):
        import comfy.sd
        from comfy.text_encoders.flux import FluxTokenizer

        self.tokenizer, self.tokenizer_options, self.layer_idx, self.encode_calls = FluxTokenizer(), {}, None, 0
        self.tokenize = comfy.sd.CLIP.tokenize.__get__(self)
        self.set_tokenizer_option = comfy.sd.CLIP.set_tokenizer_option.__get__(self)
        self.set_tokenizer_option("t5xxl_min_length", 512)
        self.cond_stage_model = torch.nn.Module()
        self.cond_stage_model.add_module("clip_l", _holder(load_file(clip_l), "transformer."))
        self.cond_stage_model.add_module("t5xxl", _holder(load_file(t5xxl), "transformer."))

    def encode_from_tokens_scheduled(self, tokens):
        self.encode_calls += 1
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(repr(tokens).encode()).digest()[:4], "little"))
        return [[torch.randn(1, 6, CONTEXT, generator=g), {"pooled_output": torch.randn(1, VEC, generator=g)}]]


def cli_cache_identity(model: dict):
    """(latent encoder id, text encoder id, text_identity) exactly as scripts/lumix_training_run.py computes them."""
    import lumix_comfy_models
    lumix_comfy_models.import_extension()
    from lumix_training_run import cache_identity
    return cache_identity(SimpleNamespace(model=model))


def build_shared(folder: Path, scenes: int = 4, resolution: int = 32) -> dict:
    """The model file, the dataset and its cache (in the default place, <root>/.lumix_cache), shared by
    every run of a test module; the cache keyed as the command-line trainer keys it."""
    from lumix_core.training import encode_dataset, scan_dataset
    from lumix_core.training.cache import CACHE_FOLDER

    flux = folder / "tiny_flux.safetensors"
    state = tiny_flux(seed=5).model.diffusion_model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(flux))
    data = folder / "data"
    make_reference_dataset(str(data), [f"ai_{i:03d}" for i in range(scenes)], width=40, height=32)
    model = {"flux": str(flux), "flux_config": FLUX_CONFIG, **write_encoder_files(folder)}
    clip = TinyCLIP()

    def encode_text(caption):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(caption))
        return cond[0][0][0], cond[0][1]["pooled_output"][0]

    image_id, text_id, identity = cli_cache_identity(model)
    encode_dataset(scan_dataset(str(data)), TinyVAE().encode, encode_text, str(data / CACHE_FOLDER), resolution, False,
                   encoder_id=image_id, text_encoder_id=text_id, text_identity=identity)
    return {"model": model, "data": {"root": str(data)}, "resolution": resolution}


def write_config(folder: Path, shared: dict, out: Path, **train) -> Path:
    # AdamW divides each gradient element by its own magnitude, so the float32 rounding that differs
    # between one batch of 2 and two all-reduced halves shows in a few near-zero elements as about
    # 1e-3 * learning_rate; at 1e-4 that stays below the 1e-6 the tests ask of 1 vs 2 processes.
    settings = {"steps": 4, "batch_size": 2, "optimizer": "adamw", "learning_rate": 1e-4, "resolution": shared["resolution"],
                "save_every": 2, "log_every": 1, "seed": 3, "max_grad_norm": 0.0, **train}
    return write_toml(folder / f"{out.name}.toml", {
        "model": shared["model"], "data": shared["data"], "train": settings,
        "output": {"dir": str(out), "name": "tiny"}, "run": {"device": "cpu", "timeout_s": 60.0, "progress_every": 1}})


def run_trainer(config: Path, *args, nproc: int = 0, launcher_args=(), env=None, timeout: int = 240):
    """The trainer as a user runs it: `python scripts/lumix_train.py` (nproc 0) or under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    launcher = [] if not nproc else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
                                     *launcher_args]
    cmd = [sys.executable, *launcher, str(TRAIN_SCRIPT), str(config), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(config.parent))
