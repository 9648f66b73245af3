"""Writing training outputs atomically (a temporary file in the same folder, then a rename), so a
crash or a killed rank never leaves a half-written file under its final name."""
from __future__ import annotations

import json
import os

import torch

from ..checkpoint import save_checkpoint
from ..export import atomic_path
from .config import TrainConfig

STATE_FORMAT = "lumix-training-state"
STATE_VERSION = 1


def atomic_write(path: str, write) -> str:
    """Call write(tmp_path) through export.atomic_path (renamed to `path` when complete, removed on
    failure), the bytes synced to disk before the rename. Creates the folder. Returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        write(tmp)
        with open(tmp, "rb") as f:  # the bytes reach the disk before the final name does (power loss)
            os.fsync(f.fileno())
    return path


def write_lora_checkpoint(path: str, adapters, config: TrainConfig, step: int, extra: dict | None = None) -> str:
    """The adapters in the released key layout (loads in the LumiX loader and the reference code),
    with metadata: format, map names, rank, alpha (by save_checkpoint), training config and step."""
    metadata = {"training_config": json.dumps(config.to_dict(), sort_keys=True), "step": str(step),
                "software": "LumiX-for-ComfyUI trainer"}
    metadata.update({k: str(v) for k, v in (extra or {}).items()})
    return atomic_write(path, lambda tmp: save_checkpoint(tmp, adapters.block_dict(), alpha=adapters.alpha,
                                                          extra_metadata=metadata))


def write_training_state(path: str, state: dict) -> str:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_training_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no training state at {path}: resume from a *.state.pt file the trainer wrote")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable LumiX training state ({exc}); pick a *.state.pt file the "
                         "trainer wrote, or start from a checkpoint (.safetensors) instead") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a LumiX training state (no '{STATE_FORMAT}' marker); a .safetensors "
                         "checkpoint is loaded with 'init from checkpoint', not resumed")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} is a training state of version {state.get('version')}, this trainer reads "
                         f"version {STATE_VERSION}")
    return state
