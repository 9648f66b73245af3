"""The LumiX ComfyExtension: every node this package offers."""
from __future__ import annotations

from typing_extensions import override

from comfy_api.v0_0_2 import ComfyExtension, io

from .host_version import log_untested_host
from .model_nodes import LumiXQueryBroadcast, LumiXTensorLoRALoader, register_model_folder
from .map_tool_nodes import LumiXConsistency, LumiXDepthColormap, LumiXNormalFlip, LumiXRelight, LumiXSaveMaps
from .composable_nodes import LumiXEmptyLatent, LumiXHoldMaps, LumiXNoise, LumiXReferenceSigmas, LumiXSplitMaps
from .sampler_node import LumiXSampler
from .threed_nodes import LumiXDepthToMesh, LumiXRenderPassesToMaps
from .training_nodes import LumiXTrainer, LumiXTrainingDataset


class LumiXExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LumiXQueryBroadcast, LumiXTensorLoRALoader, LumiXSampler, LumiXConsistency, LumiXRelight,
                LumiXSaveMaps, LumiXDepthColormap, LumiXNormalFlip,
                LumiXEmptyLatent, LumiXNoise, LumiXReferenceSigmas, LumiXHoldMaps, LumiXSplitMaps,
                LumiXTrainingDataset, LumiXTrainer, LumiXRenderPassesToMaps,
                LumiXDepthToMesh]


async def comfy_entrypoint() -> LumiXExtension:
    register_model_folder()
    log_untested_host()
    return LumiXExtension()
