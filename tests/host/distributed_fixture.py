"""Files for the command-line trainer's host tests: a tiny FLUX saved as safetensors in ComfyUI's FLUX
key layout, a dataset in the reference layout, its cache pre-built with tiny stand-ins for the VAE and
the text encoders (which the trainer then never loads), and a TOML config pointing at all of it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import save_file

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


def build_shared(folder: Path, scenes: int = 4, resolution: int = 32) -> dict:
    """The model file, the dataset and its cache, shared by every run of a test module."""
    from lumix_core.training import encode_dataset, scan_dataset
    from lumix_core.training.cache import reference_text_identity
    from lumix_core.training.run_config import parse_run_config

    flux = folder / "tiny_flux.safetensors"
    state = tiny_flux(seed=5).model.diffusion_model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(flux))
    data = folder / "data"
    make_reference_dataset(str(data), [f"ai_{i:03d}" for i in range(scenes)], width=40, height=32)
    model = {"flux": str(flux), "flux_config": FLUX_CONFIG, "vae": "missing_vae.safetensors",
             "clip_l": "missing_clip_l.safetensors", "t5xxl": "missing_t5.safetensors"}
    cache = folder / "cache"
    cfg = parse_run_config({"model": model, "data": {"root": str(data), "cache_dir": str(cache)}})
    clip = TinyCLIP()

    def encode_text(caption):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(caption))
        return cond[0][0][0], cond[0][1]["pooled_output"][0]

    encode_dataset(scan_dataset(str(data)), TinyVAE().encode, encode_text, str(cache), resolution, False,
                   encoder_id=cfg.encoder_id(), text_identity=reference_text_identity)  # as the trainer keys text
    return {"model": model, "data": {"root": str(data), "cache_dir": str(cache)}, "resolution": resolution}


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
