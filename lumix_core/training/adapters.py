"""All trainable Tensor-LoRA adapters of one FLUX model gathered in ONE nn.Module.

One module so that an optimiser, DDP (`DistributedDataParallel(adapters)`) and state dicts see
exactly the trainable parameters and nothing of the frozen base. The adapters are used inside the
FLUX blocks, not by this module's forward; `forward(compute, *args)` merely runs `compute` so that a
DDP wrapper around this module sees the whole training forward pass (and hooks the adapters'
gradients for all-reduce).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..checkpoint import ADAPTER_NAMES, BLOCK_KINDS, AdapterFactors, LumiXCheckpoint
from ..maps import MAP_COUNT
from ..tensor_lora import TensorLoRA
from .order import derived_seed

BlockKey = tuple[str, int]


def _module_name(kind: str, index: int) -> str:
    return f"{kind}_{index}"  # ModuleDict keys cannot hold dots


class LumiXAdapters(nn.Module):
    """kv_tt_lora and proj_tt_lora for every double and single block, float32 by default."""

    def __init__(self, hidden_size: int, double_blocks: int, single_blocks: int, num_maps: int = MAP_COUNT,
                 rank: int = 8, alpha: float = 1.0, dtype: torch.dtype = torch.float32, device=None,
                 seed: int = 0):
        super().__init__()
        if hidden_size < 1 or double_blocks < 0 or single_blocks < 0 or double_blocks + single_blocks == 0:
            raise ValueError(f"LumiXAdapters needs a positive width and at least one block, got width "
                             f"{hidden_size}, {double_blocks} double and {single_blocks} single blocks")
        self.hidden_size, self.num_maps, self.rank, self.alpha = hidden_size, num_maps, rank, float(alpha)
        self.counts = {"double_blocks": double_blocks, "single_blocks": single_blocks}
        self.blocks = nn.ModuleDict()
        for kind in BLOCK_KINDS:
            for index in range(self.counts[kind]):
                self.blocks[_module_name(kind, index)] = nn.ModuleDict({
                    "kv_tt_lora": TensorLoRA(num_maps, hidden_size, 2 * hidden_size, rank, alpha, dtype, device),
                    "proj_tt_lora": TensorLoRA(num_maps, hidden_size, hidden_size, rank, alpha, dtype, device),
                })
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int = 0) -> None:
        """TensorLoRA's initialisation (G3 = 0: a no-op; G1, G2 normal) drawn from `seed`, not from
        the global RNG, so that a run is reproducible whatever ran before it."""
        with torch.no_grad():
            for n, (name, block) in enumerate(self.blocks.items()):
                for k, module in enumerate(block.values()):
                    g = torch.Generator().manual_seed(derived_seed(seed, n, k))
                    for factor, std in (("G1", 1.0 / math.sqrt(module.num_maps * module.rank)),
                                        ("G2", 1.0 / math.sqrt(module.in_features))):
                        p = getattr(module, factor)
                        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)
                    module.G3.zero_()

    @classmethod
    def from_checkpoint(cls, checkpoint: LumiXCheckpoint, double_blocks: int, single_blocks: int,
                        dtype: torch.dtype = torch.float32, device=None) -> "LumiXAdapters":
        """Start from an existing LumiX checkpoint (fine-tuning). Blocks the file lacks start from
        scratch (G3 = 0, a no-op)."""
        checkpoint.validate_for_model(checkpoint.hidden_size, double_blocks, single_blocks)
        adapters = cls(checkpoint.hidden_size, double_blocks, single_blocks, checkpoint.num_maps,
                       checkpoint.rank, checkpoint.alpha, dtype, device)
        for (kind, index), modules in checkpoint.tensor_loras(dtype, device).items():
            for name, module in modules.items():
                adapters.blocks[_module_name(kind, index)][name] = module.requires_grad_(True)
        return adapters

    def adapter(self, kind: str, index: int, name: str) -> TensorLoRA:
        return self.blocks[_module_name(kind, index)][name]

    def block_dict(self) -> dict[BlockKey, dict[str, TensorLoRA]]:
        """{(kind, index): {"kv_tt_lora": module, "proj_tt_lora": module}}: the layout LumiXSettings
        and save_checkpoint take. The modules are these trainable ones (shared, not copied)."""
        return {(kind, index): {name: self.adapter(kind, index, name) for name in ADAPTER_NAMES}
                for kind in BLOCK_KINDS for index in range(self.counts[kind])}

    def as_checkpoint(self, device="cpu") -> LumiXCheckpoint:
        """The factors as a LumiXCheckpoint (detached, on `device`; views where already there), with
        rank and alpha: what the loader builds its adapters from (nodes/checkpoint_cache.py)."""
        adapters = {key: {name: AdapterFactors(*(getattr(m, g).detach().to(device) for g in ("G1", "G2", "G3")))
                          for name, m in block.items()}
                    for key, block in self.block_dict().items()}
        return LumiXCheckpoint(num_maps=self.num_maps, rank=self.rank, hidden_size=self.hidden_size,
                               alpha=self.alpha, adapters=adapters,
                               metadata={"rank": str(self.rank), "alpha": repr(self.alpha)})

    def forward(self, compute, *args, **kwargs):
        """Run `compute(*args, **kwargs)`: the training forward pass, seen by a DDP wrapper."""
        return compute(*args, **kwargs)
