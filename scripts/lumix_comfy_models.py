"""ComfyUI used as a library by the command-line trainer: find it, import it for a headless process,
and load FLUX, the text encoders and the VAE through its own loaders (comfy.sd, folder_paths).

Nothing here re-implements a loader: file names resolve through folder_paths, FLUX through
comfy.sd.load_diffusion_model (or, for the non-standard widths of test models that ComfyUI's
FLUX detection cannot read, ComfyUI's own Flux model config with an explicit unet_config),
encoders through comfy.sd.load_clip and comfy.sd.VAE.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "lumix_extension"  # the import name the checkout gets here (its folder name may not be one)


class ComfyUINotFound(RuntimeError):
    pass


def find_comfyui() -> Path:
    """COMFYUI_PATH, else the ComfyUI this checkout sits in (ComfyUI/custom_nodes/<checkout>)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if (path / "comfy").is_dir() and (path / "folder_paths.py").is_file():
            return path
        raise ComfyUINotFound(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/ and folder_paths.py "
                              "there); point it at the folder that holds ComfyUI's main.py")
    if REPO.parent.name == "custom_nodes" and (REPO.parent.parent / "comfy").is_dir():
        return REPO.parent.parent
    raise ComfyUINotFound("ComfyUI not found: set COMFYUI_PATH to your ComfyUI folder, or run this script "
                          "from the checkout in ComfyUI/custom_nodes/")


def import_comfyui(device_type: str) -> Path:
    """Put ComfyUI on sys.path, configured before comfy.model_management is first imported:
    the CPU when this rank runs on the CPU, and no parsing of this script's own arguments."""
    root = find_comfyui()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from comfy.cli_args import args  # parses no argv unless comfy.options enables it

    if device_type == "cpu":
        args.cpu = True
    return root


def import_extension():
    """This checkout as the package `lumix_extension` (nodes/ modules use relative imports), without
    running its ComfyUI entry point. The trainer imports lumix_core through it too, so that one copy
    of each module (and class) exists. Returns the package module."""
    import importlib.util
    import types

    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(REPO)]
        package.__file__ = str(REPO / "__init__.py")
        sys.modules[PACKAGE] = package
    assert importlib.util.find_spec(f"{PACKAGE}.lumix_core") is not None
    return sys.modules[PACKAGE]


def model_path(folder: str, value: str, setting: str) -> str:
    """A config value that is a path, or a file name in one of ComfyUI's model folders."""
    import folder_paths

    if value and os.path.isfile(value):
        return value
    found = folder_paths.get_full_path(folder, value) if value else None
    if found is None:
        searched = ", ".join(folder_paths.get_folder_paths(folder))
        raise FileNotFoundError(f"[model] {setting} = {value!r}: no such file, and no file of that name in "
                                f"ComfyUI's '{folder}' folders ({searched}); give a path or put it there")
    return found


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8_e4m3fn": "float8_e4m3fn",
           "fp8_e5m2": "float8_e5m2"}


def torch_dtype(name: str):
    import torch

    return None if name == "default" else getattr(torch, _DTYPES[name])


# FLUX.1's value of each FluxParams field that newer ComfyUI versions require and older ones lack
# (0.8 added txt_ids_dims; FLUX.2 sets it, FLUX.1 passes an empty list). Filled only where the host's
# FluxParams has the field, so one unet_config serves every version.
_FLUX1_FIELDS_ADDED_BY_NEWER_COMFYUI = {"txt_ids_dims": list}


def flux1_model_config(shape: dict):
    """ComfyUI's FLUX model config (comfy.supported_models.Flux) for a FLUX.1 transformer of an explicit
    shape (unet_config keys: hidden_size, num_heads, depth, ...), for widths that ComfyUI's detection
    from a state dict cannot read (test models). Works on every ComfyUI version this project supports."""
    import dataclasses

    import comfy.ldm.flux.model
    import comfy.supported_models

    fields = {f.name: f for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    unet_config = {"image_model": "flux", **shape}
    for name, make_default in _FLUX1_FIELDS_ADDED_BY_NEWER_COMFYUI.items():
        if name in fields and name not in unet_config:
            unet_config[name] = make_default()
    required = {name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(unet_config))
    if missing:
        raise ValueError(f"flux_config lacks {', '.join(missing)} (this ComfyUI's FLUX needs them); "
                         "add them to [model] flux_config")
    return comfy.supported_models.Flux(unet_config)


def prompt_executor(server):
    """ComfyUI's PromptExecutor set up as main.py sets it up for its default cache. Its cache settings
    changed between versions (0.3.x: cache_size; 0.8: a cache_args dict it reads while executing), so
    they are passed by the parameter the host's constructor has."""
    import inspect

    import execution
    from comfy.cli_args import args

    params = inspect.signature(execution.PromptExecutor).parameters
    if "cache_args" in params:
        return execution.PromptExecutor(server, cache_args={"lru": getattr(args, "cache_lru", 0),
                                                            "ram": getattr(args, "cache_ram", 0)})
    return execution.PromptExecutor(server)


def load_flux(path: str, weight_dtype: str = "default", flux_config: dict | None = None):
    """The FLUX transformer as a ComfyUI ModelPatcher, frozen."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    dtype = torch_dtype(weight_dtype)
    if not flux_config:
        options = {"dtype": dtype} if dtype is not None else {}
        patcher = comfy.sd.load_diffusion_model(path, model_options=options)
    else:
        state = comfy.utils.load_torch_file(path)
        config = flux1_model_config(flux_config)
        unet_dtype = dtype or comfy.utils.weight_dtype(state) or next(iter(state.values())).dtype
        config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, mm.get_torch_device(),
                                                                   config.supported_inference_dtypes))
        model = config.get_model(state, "")
        missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not fit [model] flux_config: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
    patcher.model.requires_grad_(False)
    return patcher


def load_text_encoders(clip_l: str, t5xxl: str):
    """CLIP-L + T5-XXL as ComfyUI's FLUX CLIP object (as DualCLIPLoader type flux)."""
    import comfy.sd
    import folder_paths

    paths = [model_path("text_encoders", clip_l, "clip_l"), model_path("text_encoders", t5xxl, "t5xxl")]
    return comfy.sd.load_clip(ckpt_paths=paths, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                              clip_type=comfy.sd.CLIPType.FLUX)


def flux_tokenizer():
    """FLUX's tokenizer (CLIP-L + T5-XXL vocabularies ship with ComfyUI; no weights), as load_clip builds it."""
    import folder_paths
    from comfy.text_encoders.flux import FluxTokenizer

    return FluxTokenizer(embedding_directory=folder_paths.get_folder_paths("embeddings"))


def load_vae(vae: str):
    import comfy.sd
    import comfy.utils

    path = model_path("vae", vae, "vae")
    state, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    return comfy.sd.VAE(sd=state, metadata=metadata)
