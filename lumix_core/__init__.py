"""LumiX math with no ComfyUI dependency: Tensor LoRA, query-broadcast blocks, checkpoints, maps.

Names are loaded on first use, so that the torch-free modules (maps, options) can be imported without
torch, e.g. by the headless client (`from lumix_core.options import ...`)."""
import importlib

_WHERE = {
    "broadcast_source_query": "blocks", "double_block_forward": "blocks", "single_block_forward": "blocks",
    **{name: "checkpoint" for name in ("ADAPTER_NAMES", "BLOCK_KINDS", "CheckpointError", "LumiXCheckpoint",
                                        "checkpoint_from_state_dict", "load_checkpoint", "save_checkpoint")},
    **{name: "maps" for name in ("MAP_COUNT", "MAP_NAMES", "MAPS", "SOURCE_MAP", "SOURCE_MAP_INDEX", "MapSpec",
                                  "check_grouped_batch", "map_index")},
    "TensorLoRA": "tensor_lora", "tensor_lora_parameter_count": "tensor_lora",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
