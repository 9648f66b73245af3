"""The command-line trainer's config file (TOML): where the models and data are, where outputs go,
how to run; the training settings themselves are TrainConfig's, under [train], unchanged.

Every setting, its meaning and its default is listed in SETTINGS below; configs/lumix_paper.toml
shows them all with the paper's values. Relative paths are relative to the config file's folder;
model files may also be plain file names that ComfyUI's folder_paths resolves (models/...).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .cache import CACHE_FOLDER
from .config import TrainConfig
from .files import RunFiles

# section -> {setting: (default, meaning)}. [train] holds TrainConfig's fields (see config.py).
SETTINGS: dict[str, dict[str, tuple[object, str]]] = {
    "model": {
        "flux": (None, "FLUX.1-dev transformer: a .safetensors path, or a file name in ComfyUI's "
                       "models/diffusion_models (required)"),
        "weight_dtype": ("default", "storage dtype of the frozen FLUX weights: default (the file's), bf16, fp16, "
                                    "fp32, fp8_e4m3fn, fp8_e5m2 (fp8 halves the memory; the base is frozen). The "
                                    "forward/backward runs in ComfyUI's compute dtype for it (bf16 for fp8 on "
                                    "most GPUs); the adapters stay in float32"),
        "clip_l": ("clip_l.safetensors", "CLIP-L text encoder (path, or a name in models/text_encoders); loaded "
                                         "only when the cache lacks a caption's embedding"),
        "t5xxl": ("t5xxl_fp16.safetensors", "T5-XXL text encoder (path or name in models/text_encoders); "
                                            "loaded only when needed, as clip_l"),
        "vae": ("ae.safetensors", "FLUX VAE (path or name in models/vae); loaded only when the cache lacks a "
                                  "scene's latents"),
        "init_checkpoint": ("", "optional LumiX checkpoint (.safetensors) to fine-tune instead of starting from "
                                "scratch (G3 = 0); its rank, alpha and map count win over [train]"),
        "flux_config": ({}, "optional FLUX shape (ComfyUI unet_config keys: hidden_size, num_heads, depth, ...) "
                            "for a transformer with non-standard widths, which ComfyUI's detection (FLUX.1 "
                            "widths only) cannot read; leave empty for FLUX.1-dev"),
    },
    "data": {
        "root": (None, "dataset folder, in the reference layout (<root>/<map>/<id>_<map>.png + captions*/) or "
                       "scene folders (<scene>/<map>.png + lumix.json) (required)"),
        "cache_dir": ("", "where VAE latents and text embeddings are cached (default: <root>/.lumix_cache, where "
                          "the LumiX Training Dataset node caches the same folder: each finds the other's "
                          "entries); built once by rank 0, then read by every rank"),
    },
    "output": {
        "dir": ("lumix_training", "folder for checkpoints (<name>_stepNNNNNN.safetensors, <name>.safetensors), "
                                  "the resumable <name>.state.pt, the log and validation images"),
        "name": ("lumix_lora", "file name stem of every output"),
    },
    "validation": {
        "scenes": (2, "validation samples the first N captions of the dataset (with [train] validate_every)"),
        "size": (256, "validation image side in pixels (a multiple of 16)"),
        "steps": (12, "sampling steps per validation sample"),
    },
    "run": {
        "device": ("auto", "auto (one GPU per process when there are GPUs, else the CPU), cuda or cpu"),
        "timeout_s": (600.0, "seconds a rank waits for the others in a collective before the job ends "
                             "(a dead or hung peer)"),
        "progress_every": (10, "steps between progress lines on rank 0's console"),
    },
}
REQUIRED = {("model", "flux"), ("data", "root")}


class RunConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the setting and the fix."""


@dataclass
class RunConfig:
    train: TrainConfig
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    source: str = ""

    @property
    def output_dir(self) -> Path:
        return Path(self.output["dir"])

    @property
    def cache_dir(self) -> Path:
        return Path(self.data["cache_dir"]) if self.data["cache_dir"] else Path(self.data["root"]) / CACHE_FOLDER

    def state_path(self) -> Path:
        return Path(self.files().state)

    def files(self) -> RunFiles:
        """Every file the run writes (all in [output] dir)."""
        return RunFiles(str(self.output_dir), self.output["name"])


_PATH_SETTINGS = {("data", "root"), ("data", "cache_dir"), ("output", "dir")}
_MODEL_FILES = ("flux", "clip_l", "t5xxl", "vae", "init_checkpoint")


def _resolve(value: str, base: Path) -> str:
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def resolve_model_file(value: str, base: Path) -> str:
    """A model setting: an existing path (relative to the config's folder) stays a path; anything
    else is left as a name for ComfyUI's folder_paths to find."""
    if not value:
        return value
    candidate = Path(value).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    return str(candidate.resolve()) if candidate.exists() else value


def parse_run_config(data: dict, source: str = "<config>", base: Path | None = None) -> RunConfig:
    base = Path(base) if base is not None else Path.cwd()
    unknown_sections = sorted(set(data) - set(SETTINGS) - {"train"})
    if unknown_sections:
        raise RunConfigError(f"{source}: unknown section(s) {unknown_sections}; the sections are "
                             f"{sorted(set(SETTINGS) | {'train'})}")
    sections = {}
    for section, known in SETTINGS.items():
        given = data.get(section, {})
        if not isinstance(given, dict):
            raise RunConfigError(f"{source}: [{section}] must be a table of settings")
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise RunConfigError(f"{source}: unknown setting(s) {unknown} in [{section}]; known: {sorted(known)}")
        values = {name: given.get(name, default) for name, (default, _) in known.items()}
        for name, (default, _) in known.items():
            if (section, name) in REQUIRED and not values[name]:
                raise RunConfigError(f"{source}: [{section}] {name} is required: {known[name][1]}")
            if default is not None and values[name] is not None and not _fits_type(values[name], default):
                kind = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string",
                        dict: "a table"}[type(default)]
                raise RunConfigError(f"{source}: [{section}] {name} must be {kind}, got {values[name]!r}")
            if isinstance(default, float):
                values[name] = float(values[name])
            if (section, name) in _PATH_SETTINGS:
                values[name] = _resolve(values[name], base)
            elif section == "model" and name in _MODEL_FILES:
                values[name] = resolve_model_file(values[name], base)
        sections[section] = values
    if sections["run"]["device"] not in ("auto", "cuda", "cpu"):
        raise RunConfigError(f"{source}: [run] device must be auto, cuda or cpu, got {sections['run']['device']!r}")
    if sections["model"]["weight_dtype"] not in WEIGHT_DTYPES:
        raise RunConfigError(f"{source}: [model] weight_dtype must be one of {sorted(WEIGHT_DTYPES)}, "
                             f"got {sections['model']['weight_dtype']!r}")
    v = sections["validation"]
    if v["scenes"] < 1 or v["steps"] < 1 or v["size"] < 16 or v["size"] % 16:
        raise RunConfigError(f"{source}: [validation] scenes and steps must be at least 1 and size a positive "
                             f"multiple of 16, got {v}")
    if sections["run"]["timeout_s"] <= 0 or sections["run"]["progress_every"] < 1:
        raise RunConfigError(f"{source}: [run] timeout_s must be positive and progress_every at least 1")
    if not isinstance(data.get("train", {}), dict):
        raise RunConfigError(f"{source}: [train] must be a table of settings")
    try:
        train = TrainConfig.from_dict(dict(data.get("train", {})))
    except (TypeError, ValueError) as error:
        raise RunConfigError(f"{source}: [train] {error}") from None
    cfg = RunConfig(train=train, source=source, **sections)
    try:  # the name ('' would write hidden files, '../x' outside dir), and every file name's length
        cfg.files().check(train.steps)
    except ValueError as error:
        raise RunConfigError(f"{source}: [output] {error}") from None
    return cfg


def _fits_type(value, default) -> bool:
    """TOML types: a bool is not a number, an int is a float, a float must be finite."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, type(default))


WEIGHT_DTYPES = {"default", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2"}


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise RunConfigError(f"no config file at {path}; start from configs/lumix_paper.toml")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise RunConfigError("reading TOML configs needs Python 3.11 or newer (the tomllib module)") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RunConfigError(f"{path} is not valid TOML: {error}") from None
    return parse_run_config(data, str(path), path.resolve().parent)
