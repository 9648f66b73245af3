"""LumiX math with no ComfyUI dependency: Tensor LoRA, query-broadcast blocks, checkpoints, maps."""
from .blocks import broadcast_source_query, double_block_forward, single_block_forward
from .checkpoint import (
    ADAPTER_NAMES,
    BLOCK_KINDS,
    CheckpointError,
    LumiXCheckpoint,
    checkpoint_from_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from .maps import (
    MAP_COUNT,
    MAP_NAMES,
    MAPS,
    SOURCE_MAP,
    SOURCE_MAP_INDEX,
    MapSpec,
    check_grouped_batch,
    map_index,
)
from .tensor_lora import TensorLoRA, tensor_lora_parameter_count

__all__ = [
    "ADAPTER_NAMES", "BLOCK_KINDS", "CheckpointError", "LumiXCheckpoint", "MAP_COUNT", "MAP_NAMES",
    "MAPS", "MapSpec", "SOURCE_MAP", "SOURCE_MAP_INDEX", "TensorLoRA", "broadcast_source_query",
    "check_grouped_batch", "checkpoint_from_state_dict", "double_block_forward", "load_checkpoint",
    "map_index", "save_checkpoint", "single_block_forward", "tensor_lora_parameter_count",
]
