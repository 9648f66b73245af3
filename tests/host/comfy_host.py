"""Host-test helpers: skip the importing module without ComfyUI; otherwise load this extension the
way ComfyUI does and build tiny random FLUX models inside ComfyUI's own classes."""
import asyncio
import sys

import pytest

from conftest import COMFYUI, NO_COMFYUI_REASON, REPO

if COMFYUI is None:
    pytest.skip(NO_COMFYUI_REASON, allow_module_level=True)

import comfyui_version  # noqa: E402
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402  (ComfyUI's nodes.py, first on sys.path)
from tiny_comfy import (  # noqa: E402,F401  (re-exported for the host tests)
    CONTEXT, DOUBLE, HEADS, HIDDEN, SINGLE, VEC, TinyCLIP, TinyVAE, comfy_attention, conditioning, model_inputs,
    randomize_, run_model, tiny_flux)

COMFYUI_VERSION = comfyui_version.__version__


def load_extension():
    """Load this checkout through ComfyUI's own custom-node loader (once per session)."""
    if "LumiXTensorLoRALoader" not in comfy_nodes.NODE_CLASS_MAPPINGS:
        ok = asyncio.run(comfy_nodes.load_custom_node(str(REPO)))
        assert ok, "ComfyUI failed to load the LumiX extension (see the log above)"
    return comfy_nodes.NODE_CLASS_MAPPINGS


def extension_module():
    return sys.modules[str(REPO).replace(".", "_x_")]


