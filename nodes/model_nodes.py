"""The two nodes that turn a FLUX MODEL into a LumiX model."""
from __future__ import annotations

import logging
import os
import threading

import folder_paths
from comfy_api.v0_0_2 import io

from ..lumix_core import MAP_NAMES, SOURCE_MAP, map_index
from ..lumix_core.checkpoint_sniff import LumiXFileCache
from ..lumix_core.finite_check import check_finite_settings
from . import categories
from .adapter_memory import ADAPTER_DTYPES, resolve_adapter_dtype
from .checkpoint_cache import CheckpointCache
from .flux_model import NotFluxError, block_counts, flux_diffusion_model
from .patch import apply_lumix, lumix_settings

_LOG = logging.getLogger("LumiX")
LUMIX_FOLDER = "lumix"
CHECKPOINT_EXTENSIONS = {".safetensors", ".sft"}


def register_model_folder() -> None:
    """ComfyUI/models/lumix/ (created when missing, so users see where the checkpoint goes), plus any
    'lumix:' entry of extra_model_paths.yaml."""
    folder = os.path.join(folder_paths.models_dir, LUMIX_FOLDER)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:  # a read-only install still works with models/loras or extra paths
        _LOG.warning("LumiX: could not create %s (%s); put lumix.safetensors in models/loras instead.", folder, exc)
    folder_paths.add_model_folder_path(LUMIX_FOLDER, folder)
    paths, extensions = folder_paths.folder_names_and_paths[LUMIX_FOLDER]
    folder_paths.folder_names_and_paths[LUMIX_FOLDER] = (paths, set(extensions) | CHECKPOINT_EXTENSIONS)


# Which files of models/loras are LumiX checkpoints: header reads, remembered per (size, mtime). ComfyUI
# builds the schema (and so this list) from the server thread and the worker thread: one at a time.
_LORA_FILES = LumiXFileCache()
_LORA_FILES_LOCK = threading.Lock()


def checkpoint_choices() -> list[str]:
    """Every file of models/lumix, and the files of models/loras whose header holds LumiX keys."""
    names = set(folder_paths.get_filename_list(LUMIX_FOLDER))
    seen = set()
    with _LORA_FILES_LOCK:
        for name in folder_paths.get_filename_list("loras"):
            if name in names or os.path.splitext(name)[1].lower() not in CHECKPOINT_EXTENSIONS:
                continue
            path = folder_paths.get_full_path("loras", name)
            if path is not None:
                seen.add(path)
                if _LORA_FILES.is_lumix(path):
                    names.add(name)
        _LORA_FILES.forget_missing(seen)
    return sorted(names)


def checkpoint_path(name: str) -> str:
    path = folder_paths.get_full_path(LUMIX_FOLDER, name) or folder_paths.get_full_path("loras", name)
    if path is None:
        raise FileNotFoundError(f"LumiX checkpoint {name!r} is not in ComfyUI/models/lumix/ nor models/loras/: "
                                "put lumix.safetensors there and refresh the page.")
    return path


_CACHE = CheckpointCache()


def _user_error(exc: Exception) -> ValueError:
    return ValueError(f"LumiX: {exc}")


class LumiXQueryBroadcast(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXQueryBroadcast",
            display_name="LumiX Query-Broadcast Attention",
            category=categories.MODEL,
            description="Makes every map of a scene attend with the query of one source map, as LumiX was "
                        "trained. The LumiX Tensor LoRA Loader already turns this on; use this node to change "
                        "the source map or group size, or to try query broadcast without the adapters.",
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1-dev model (Load Diffusion Model), or one already patched by LumiX."),
                io.Combo.Input("source_map", options=list(MAP_NAMES), default=SOURCE_MAP,
                               tooltip="The map whose query every map of the scene shares. LumiX was trained with color."),
                io.Int.Input("maps_per_scene", default=len(MAP_NAMES), min=1, max=16,
                             tooltip="Maps per scene in every batch (map index fastest). 5 for the released checkpoint."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy; the input model is left as it was.")],
        )

    @classmethod
    def execute(cls, model, source_map, maps_per_scene) -> io.NodeOutput:
        index = map_index(source_map)
        if index >= maps_per_scene:
            raise ValueError(f"LumiX: source map {source_map} (index {index}) does not exist with "
                             f"{maps_per_scene} maps per scene; raise maps_per_scene or pick another source.")
        current = lumix_settings(model)
        if current is not None and current.adapter_maps not in (None, maps_per_scene):
            raise ValueError(f"LumiX: the loaded Tensor LoRA mixes {current.adapter_maps} maps per scene; "
                             f"set maps_per_scene to {current.adapter_maps}.")
        try:
            patched = apply_lumix(model, query_broadcast=True, source_map=index, maps_per_scene=maps_per_scene)
        except NotFluxError as exc:
            raise _user_error(exc) from None
        return io.NodeOutput(patched)


class LumiXTensorLoRALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXTensorLoRALoader",
            display_name="LumiX Tensor LoRA Loader",
            category=categories.MODEL,
            description="Loads the LumiX Tensor LoRA (lumix.safetensors) onto a FLUX.1-dev model. With "
                        "query_broadcast on (the default) this one node is all the released checkpoint needs.",
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1-dev model (Load Diffusion Model)."),
                io.Combo.Input("lumix_name", options=checkpoint_choices(),
                               tooltip="A LumiX checkpoint: every file of ComfyUI/models/lumix/, and the files of "
                                       "models/loras/ that hold LumiX Tensor LoRA keys (other LoRAs are not listed)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Scales both adapters of every block. 1.0 is the paper's model; 0 turns them off."),
                io.Boolean.Input("query_broadcast", default=True,
                                 tooltip="Share the color map's query across the maps of a scene, as LumiX was "
                                         "trained. Leave on for the released checkpoint."),
                io.Combo.Input("adapter_dtype", options=list(ADAPTER_DTYPES), default="auto", optional=True,
                               tooltip="The dtype the adapters are kept in (one copy, loaded and offloaded by "
                                       "ComfyUI with the model). auto: float32 for a float32 model, else bfloat16, "
                                       "as the reference runs them (half the memory of float32). The merged "
                                       "weight is formed in float32 either way."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy; the input model is left as it was.")],
        )

    @classmethod
    def execute(cls, model, lumix_name, strength, query_broadcast, adapter_dtype="auto") -> io.NodeOutput:
        check_finite_settings("LumiX Tensor LoRA Loader", strength=strength)
        error = None
        try:
            diffusion_model = flux_diffusion_model(model)
            dtype = resolve_adapter_dtype(adapter_dtype, model)

            def check(checkpoint):
                checkpoint.validate_for_model(diffusion_model.hidden_size, *block_counts(diffusion_model))

            loaded = _CACHE.get(checkpoint_path(lumix_name), dtype, model.load_device, model.offload_device, check)
        except (ValueError, FileNotFoundError) as exc:  # NotFluxError, CheckpointError included
            error = str(exc)  # only the message: the traceback would keep a refused file's tensors alive
        if error is not None:
            raise ValueError(f"LumiX: {error}")
        checkpoint = loaded.checkpoint
        current = lumix_settings(model)
        if current is not None and current.query_broadcast and current.maps_per_scene != checkpoint.num_maps:
            raise ValueError(
                f"LumiX: {lumix_name} was trained for {checkpoint.num_maps} maps per scene, but the "
                f"Query-Broadcast node before it set {current.maps_per_scene}; set it to {checkpoint.num_maps}.")
        changes = dict(adapters=loaded.adapters, adapter_model=loaded.model, strength=float(strength),
                       checkpoint_name=lumix_name,
                       maps_per_scene=checkpoint.num_maps)
        if query_broadcast:
            changes["query_broadcast"] = True
        elif current is None or not current.query_broadcast:
            changes["query_broadcast"] = False
        return io.NodeOutput(apply_lumix(model, **changes))
