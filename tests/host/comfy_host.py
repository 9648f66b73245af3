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
    CONTEXT, DOUBLE, HEADS, HIDDEN, SINGLE, VEC, CountingVAE, TinyCLIP, TinyVAE, comfy_attention, conditioning, model_inputs,
    randomize_, run_model, tiny_flux)

COMFYUI_VERSION = comfyui_version.__version__


def load_extension():
    """Load this checkout through ComfyUI's own custom-node loader (once per session)."""
    if "LumiXTensorLoRALoader" not in comfy_nodes.NODE_CLASS_MAPPINGS:
        ok = asyncio.run(comfy_nodes.load_custom_node(str(REPO)))
        assert ok, "ComfyUI failed to load the LumiX extension (see the log above)"
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.fixture
def output_dir(tmp_path):
    """ComfyUI's output directory set to the test's own folder (restored after); a test module uses it
    by importing it."""
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(before)


@pytest.fixture
def lumix_dir(tmp_path, monkeypatch):
    """An empty models/lumix folder for the test, in place of ComfyUI's registered ones (restored after)."""
    folder = tmp_path / "models_lumix"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lumix", ([str(folder)], {".safetensors"}))
    return folder


def with_hidden(node_cls, hidden: dict):
    """A clone of a V3 node class carrying hidden inputs, as ComfyUI's executor prepares one before
    execute. ComfyUI 0.3.x passes the hidden dict itself; 0.8 passes V3 data that holds it under
    'hidden_inputs' (told apart by the method's parameter name)."""
    import inspect

    if "v3_data" in inspect.signature(node_cls.PREPARE_CLASS_CLONE).parameters:
        return node_cls.PREPARE_CLASS_CLONE({"hidden_inputs": hidden})
    return node_cls.PREPARE_CLASS_CLONE(hidden)


def extension_module():
    return sys.modules[str(REPO).replace(".", "_x_")]




def run_dataset_node(input_root, folder, vae, clip, resolution=32, flip=False, cache_folder=""):
    """The LumiX Training Dataset node on <input_root>/<folder>, with input_root as ComfyUI's input folder
    for the call (the node reads only there) and inference mode on, as ComfyUI runs nodes."""
    import torch
    node = load_extension()["LumiXTrainingDataset"]
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(input_root))
    try:
        with torch.inference_mode():
            return node.execute(folder, vae, clip, resolution, flip, cache_folder)
    finally:
        folder_paths.set_input_directory(before)


def tiny_lumix_checkpoint(folder, name):
    """A tiny checkpoint in the released layout for the tiny FLUX, in a folder registered as 'lumix'."""
    from safetensors.torch import save_file
    from tiny_flux import official_state_dict

    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, scale=0.5), str(folder / name))
    folder_paths.add_model_folder_path("lumix", str(folder))
    return name


def tiny_lumix_model(folder, name, seed=1):
    """The tiny FLUX patched by the LumiX Tensor LoRA Loader with a tiny checkpoint."""
    load_extension()
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["LumiXTensorLoRALoader"]
    return loader.execute(tiny_flux(seed=seed), tiny_lumix_checkpoint(folder, name), 1.0, True).result[0]
