"""Shared test set-up. Where a real ComfyUI is available (COMFYUI_PATH, or this checkout inside
ComfyUI/custom_nodes/), it is put on sys.path and told to run on the CPU when there is no GPU,
before anything imports comfy.model_management."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_comfyui():
    """(path or None, reason): where ComfyUI is, or why the host tests cannot run."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if (path / "comfy").is_dir() and (path / "nodes.py").is_file():
            return path, ""
        return None, f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/ and nodes.py there)"
    if REPO.parent.name == "custom_nodes" and (REPO.parent.parent / "comfy").is_dir():
        return REPO.parent.parent, ""
    return None, ("no ComfyUI: set COMFYUI_PATH to a ComfyUI checkout (or clone this extension into "
                  "ComfyUI/custom_nodes/) to run the host tests")


COMFYUI, NO_COMFYUI_REASON = find_comfyui()
if COMFYUI is not None and str(COMFYUI) not in sys.path:
    sys.path.insert(0, str(COMFYUI))
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
