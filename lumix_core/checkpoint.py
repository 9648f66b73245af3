"""Reading, validating and writing LumiX Tensor-LoRA checkpoints (the released key layout).

    {prefix}double_blocks.{i}.processor.kv_tt_lora.G1|G2|G3
    {prefix}double_blocks.{i}.processor.proj_tt_lora.G1|G2|G3
    {prefix}single_blocks.{i}.processor.kv_tt_lora.G1|G2|G3
    {prefix}single_blocks.{i}.processor.proj_tt_lora.G1|G2|G3

M, R and the widths come from the shapes; alpha from the metadata (1.0 when absent).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .maps import CHECKPOINT_MAP_NAMES, MAP_COUNT
from .safetensors_header import HeaderError, read_header
from .tensor_lora import TensorLoRA

FORMAT_NAME = "lumix-tensor-lora"
FORMAT_VERSION = "1"
BLOCK_KINDS = ("double_blocks", "single_blocks")
ADAPTER_NAMES = ("kv_tt_lora", "proj_tt_lora")
FACTOR_NAMES = ("G1", "G2", "G3")

# What a loadable checkpoint may hold. Trained factors are of order 1 and alpha of order R; values far
# beyond these bounds overflow in bf16/fp16 and turn every output into NaN, so they are refused.
MAX_FACTOR_MAGNITUDE = 1e4
MAX_ALPHA = 1e4
MAX_CHECKPOINT_RANK = 64  # R; G2 alone is M*hidden*R*R values (R=64: 63M per adapter at FLUX width)
# dtypes kept as they are; float8 is widened to bfloat16 on load (exact: bf16 holds every fp8 value)
KEPT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
WIDENED_DTYPES = {getattr(torch, n): torch.bfloat16 for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
WIDENED_DTYPES[torch.float64] = torch.float32

_KEY = re.compile(
    r"^(?P<prefix>.*?)(?P<kind>double_blocks|single_blocks)\.(?P<index>\d+)\.processor\."
    r"(?P<adapter>kv_tt_lora|proj_tt_lora)\.(?P<factor>G[123])$"
)


class CheckpointError(ValueError):
    """A file that is not a usable LumiX checkpoint; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class AdapterFactors:
    G1: torch.Tensor
    G2: torch.Tensor
    G3: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.G2.shape[1]

    @property
    def out_features(self) -> int:
        return self.G3.shape[1]


BlockKey = tuple[str, int]  # ("double_blocks" | "single_blocks", index)


@dataclass
class LumiXCheckpoint:
    num_maps: int
    rank: int
    hidden_size: int
    alpha: float
    # {(kind, index): {"kv_tt_lora": AdapterFactors, "proj_tt_lora": AdapterFactors}}
    adapters: dict[BlockKey, dict[str, AdapterFactors]]
    prefix: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def covered(self, kind: str) -> list[int]:
        return sorted(i for k, i in self.adapters if k == kind)

    def parameter_count(self) -> int:
        return sum(t.numel() for block in self.adapters.values() for f in block.values()
                   for t in (f.G1, f.G2, f.G3))

    def summary(self) -> str:
        return (f"LumiX Tensor LoRA: {self.num_maps} maps, rank {self.rank}, alpha {self.alpha:g}, "
                f"width {self.hidden_size}, {len(self.covered('double_blocks'))} double + "
                f"{len(self.covered('single_blocks'))} single blocks, "
                f"{self.parameter_count() / 1e6:.2f}M parameters")

    def tensor_loras(self, dtype=None, device=None, consume: bool = False) -> dict[BlockKey, dict[str, TensorLoRA]]:
        """The one factory of adapters from a checkpoint, keyed like `adapters`: frozen TensorLoRA
        modules holding a private copy of each factor in `dtype` (default: the file's) on `device`
        (default: where the factors are). Always a copy: safetensors hands out tensors mapped from
        the file, which would change (or fault) under a running model if the file were overwritten.

        consume: replace each factor of this checkpoint by the module's own tensors as soon as that
        adapter is built, so the file's copy and the module's coexist for one adapter at most (the
        loader); the checkpoint then describes the modules. The trainer makes trainable parameters
        of these (LumiXAdapters.from_checkpoint)."""
        modules: dict = {}
        for block, factors in self.adapters.items():
            for name in list(factors):
                f = factors[name]
                g1, g2, g3 = (t.to(device=device or t.device, dtype=dtype or t.dtype, copy=True) for t in (f.G1, f.G2, f.G3))
                module = TensorLoRA.from_factors(g1, g2, g3, alpha=self.alpha)
                if consume:
                    factors[name] = AdapterFactors(module.G1, module.G2, module.G3)
                modules.setdefault(block, {})[name] = module
        return modules

    def validate_for_model(self, hidden_size: int, double_blocks: int, single_blocks: int) -> None:
        """Refuse a checkpoint that does not fit a model of these sizes, naming the first bad key.

        The LumiX nodes sample MAP_COUNT maps per scene (albedo, irradiance, color, depth, normal), so a
        checkpoint trained for another map count cannot be used by them: refused here, at load.
        """
        if self.num_maps != MAP_COUNT:
            kind, index = sorted(self.adapters)[0]
            raise CheckpointError(
                f"this checkpoint mixes {self.num_maps} maps per scene (first key: {self.prefix}{kind}.{index}."
                f"processor.kv_tt_lora.G1, shape [{self.num_maps}, {self.num_maps}, {self.rank}]), but the LumiX "
                f"sampler makes {MAP_COUNT} maps per scene (albedo, irradiance, color, depth, normal). Pick a "
                f"{MAP_COUNT}-map checkpoint in the loader's lumix_name (the released lumix.safetensors has "
                f"{MAP_COUNT}), or train one with {MAP_COUNT} maps.")
        if self.hidden_size != hidden_size:
            kind, index = sorted(self.adapters)[0]
            raise CheckpointError(
                f"this LumiX checkpoint is for a model of width {self.hidden_size}, but the model "
                f"has width {hidden_size} (first key that does not fit: "
                f"{self.prefix}{kind}.{index}.processor.kv_tt_lora.G2). LumiX needs FLUX.1-dev "
                f"(width 3072); load that model, or a checkpoint trained for this one.")
        counts = {"double_blocks": double_blocks, "single_blocks": single_blocks}
        for kind, index in sorted(self.adapters):
            if index >= counts[kind]:
                raise CheckpointError(
                    f"the checkpoint has {kind}.{index} but the model has only {counts[kind]} "
                    f"{kind.replace('_', ' ')} (first key that does not fit: "
                    f"{self.prefix}{kind}.{index}.processor.kv_tt_lora.G1). Use the FLUX model "
                    f"the checkpoint was trained for.")


def _read_header(path: str) -> dict:
    """The safetensors header, every entry checked before safetensors' own parser sees it."""
    try:
        return read_header(path)[0]
    except HeaderError as exc:
        raise CheckpointError(str(exc)) from None


def _group_keys(keys) -> tuple[str, dict]:
    prefixes: set[str] = set()
    grouped: dict[BlockKey, dict[str, dict[str, str]]] = {}
    for key in keys:
        m = _KEY.match(key)
        if not m:
            continue
        prefixes.add(m["prefix"])
        block = (m["kind"], int(m["index"]))
        grouped.setdefault(block, {}).setdefault(m["adapter"], {})[m["factor"]] = key
    if len(prefixes) > 1:
        raise CheckpointError(f"the checkpoint mixes key prefixes {sorted(prefixes)}; a LumiX checkpoint "
                              "uses one prefix (or none) for all keys.")
    return (prefixes.pop() if prefixes else ""), grouped


def load_checkpoint(path: str) -> LumiXCheckpoint:
    """Read and check a LumiX checkpoint; raises CheckpointError naming the problem."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no LumiX checkpoint at {path}: put lumix.safetensors in ComfyUI/models/lumix/.")
    header = _read_header(path)
    metadata = header.get("__metadata__") or {}
    prefix, grouped = _group_keys(k for k in header if k != "__metadata__")
    if not grouped:
        sample = ", ".join(sorted(k for k in header if k != "__metadata__")[:3]) or "none"
        raise CheckpointError(
            f"{os.path.basename(path)} holds no LumiX keys (expected e.g. "
            f"double_blocks.0.processor.kv_tt_lora.G1; found {sample}). This looks like another kind "
            "of model or LoRA: load it with its own loader, and pick lumix.safetensors here.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors = {key: f.get_tensor(key) for block in grouped.values()
                       for adapter in block.values() for key in adapter.values()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} could not be read as safetensors ({exc}); fetch the file again.") from None
    return _assemble(tensors, grouped, prefix, metadata)


def checkpoint_from_state_dict(state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> LumiXCheckpoint:
    """The same checks as load_checkpoint, for tensors already in memory."""
    prefix, grouped = _group_keys(state_dict)
    if not grouped:
        raise CheckpointError("no LumiX keys (…processor.kv_tt_lora.G1 and the like) in the given tensors.")
    return _assemble(state_dict, grouped, prefix, metadata or {})


def _assemble(tensors, grouped, prefix, metadata) -> LumiXCheckpoint:
    reference: tuple[str, int, int] | None = None  # (key, M, R) of the first adapter seen
    hidden = None
    adapters: dict[BlockKey, dict[str, AdapterFactors]] = {}
    for block in sorted(grouped):
        kind, index = block
        for adapter, factors in sorted(grouped[block].items()):
            stem = f"{prefix}{kind}.{index}.processor.{adapter}"
            missing = [g for g in FACTOR_NAMES if g not in factors]
            if missing:
                raise CheckpointError(f"{stem} lacks {', '.join(missing)}: every adapter needs G1, G2 and G3. "
                                      "The file is incomplete or was written by another tool.")
            g1, g2, g3 = (tensors[factors[g]] for g in FACTOR_NAMES)
            if g1.ndim != 3 or g2.ndim != 4 or g3.ndim != 3:
                raise CheckpointError(
                    f"{stem} has factor shapes G1 {tuple(g1.shape)}, G2 {tuple(g2.shape)}, G3 {tuple(g3.shape)}; "
                    "expected G1 [M,M,R], G2 [M,d_in,R,R], G3 [M,d_out,R].")
            M, R = g1.shape[0], g1.shape[2]
            if (g1.shape[1] != M or g2.shape[0] != M or g3.shape[0] != M
                    or g2.shape[2] != R or g2.shape[3] != R or g3.shape[2] != R):
                raise CheckpointError(
                    f"{stem} has inconsistent shapes G1 {tuple(g1.shape)}, G2 {tuple(g2.shape)}, "
                    f"G3 {tuple(g3.shape)}; expected G1 [M,M,R], G2 [M,d_in,R,R], G3 [M,d_out,R].")
            if min(M, R, g2.shape[1]) == 0:
                raise CheckpointError(
                    f"{stem} is empty (G1 {tuple(g1.shape)}, G2 {tuple(g2.shape)}: {M} maps, rank {R}, width "
                    f"{g2.shape[1]}); a LumiX adapter needs at least one map, rank 1 and a width. The file is "
                    "damaged or was written by another tool.")
            if R > MAX_CHECKPOINT_RANK:
                raise CheckpointError(f"{stem} has rank {R}; this loader supports ranks 1 to {MAX_CHECKPOINT_RANK} "
                                      "(the released checkpoint has 8). Pick a checkpoint of lower rank in the "
                                      "loader's lumix_name.")
            if reference is None:
                reference = (stem, M, R)
            elif (M, R) != reference[1:]:
                raise CheckpointError(
                    f"{stem} has {M} maps and rank {R}, but {reference[0]} has {reference[1]} maps and "
                    f"rank {reference[2]}: one checkpoint must use one map count and rank throughout.")
            d_in, d_out = g2.shape[1], g3.shape[1]
            width = d_in if hidden is None else hidden
            expected = (width, 2 * width if adapter == "kv_tt_lora" else width)
            if (d_in, d_out) != expected:
                raise CheckpointError(
                    f"{stem} maps width {d_in} to {d_out}; expected {expected[0]} to {expected[1]} "
                    "(kv_tt_lora: hidden to 2*hidden, proj_tt_lora: hidden to hidden, one hidden width "
                    "in every block).")
            hidden = width
            g1, g2, g3 = (_checked_factor(f"{stem}.{name}", t) for name, t in zip(FACTOR_NAMES, (g1, g2, g3)))
            adapters.setdefault(block, {})[adapter] = AdapterFactors(g1, g2, g3)
    alpha = _checked_alpha(metadata.get("alpha", 1.0))
    if "num_maps" in metadata and str(metadata["num_maps"]) != str(reference[1]):
        raise CheckpointError(f"the metadata says {metadata['num_maps']} maps but the tensors have {reference[1]}: "
                              "the file is inconsistent; re-save it or use another checkpoint.")
    if "rank" in metadata and str(metadata["rank"]) != str(reference[2]):
        raise CheckpointError(f"the metadata says rank {metadata['rank']} but the tensors have rank {reference[2]}.")
    return LumiXCheckpoint(num_maps=reference[1], rank=reference[2], hidden_size=hidden, alpha=alpha,
                           adapters=adapters, prefix=prefix, metadata=dict(metadata))


def _checked_factor(key: str, t: torch.Tensor) -> torch.Tensor:
    """A factor in a dtype the adapters compute with, finite and of sane magnitude."""
    if t.dtype in WIDENED_DTYPES:
        t = t.to(WIDENED_DTYPES[t.dtype])
    elif t.dtype not in KEPT_DTYPES:
        raise CheckpointError(f"{key} has dtype {t.dtype}; LumiX factors are float32, float16 or bfloat16 "
                              "(float8 and float64 are converted on load). Re-save the checkpoint in one of those.")
    if not torch.isfinite(t).all():
        raise CheckpointError(f"{key} contains NaN or Inf values: the file is damaged "
                              "or came from a diverged training run.")
    peak = float(t.abs().max()) if t.numel() else 0.0
    if peak > MAX_FACTOR_MAGNITUDE:
        raise CheckpointError(f"{key} holds values up to {peak:.3g}; LumiX factors stay far below "
                              f"{MAX_FACTOR_MAGNITUDE:g}, and such values overflow to NaN in half precision. The file "
                              "is damaged or came from a diverged training run: use another checkpoint.")
    return t


def _checked_alpha(raw) -> float:
    """alpha from the metadata: finite, positive and at most MAX_ALPHA (it scales every adapter)."""
    try:
        alpha = float(raw)
    except (TypeError, ValueError):
        alpha = None
    if alpha is None or not math.isfinite(alpha) or not 0.0 < alpha <= MAX_ALPHA:
        problem = "is not a number" if alpha is None else "is out of range"
        raise CheckpointError(
            f"the checkpoint's metadata alpha={raw!r} {problem}: alpha scales every adapter by "
            f"alpha/sqrt(R) and must be a number in (0, {MAX_ALPHA:g}] (1.0 when absent). Fix or remove the "
            "'alpha' metadata entry (save_checkpoint(..., alpha=1.0) rewrites it), or use another checkpoint.")
    return alpha


def checkpoint_key(kind: str, index: int, adapter: str, factor: str, prefix: str = "") -> str:
    return f"{prefix}{kind}.{index}.processor.{adapter}.{factor}"


def save_checkpoint(path: str, adapters: dict[BlockKey, dict[str, TensorLoRA]], alpha: float | None = None,
                    extra_metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write adapters in the released key layout (no prefix), with format metadata.

    adapters: {(kind, index): {"kv_tt_lora": TensorLoRA, "proj_tt_lora": TensorLoRA}}.
    """
    tensors: dict[str, torch.Tensor] = {}
    ranks, maps, alphas = set(), set(), set()
    for (kind, index), block in adapters.items():
        for name, module in block.items():
            if kind not in BLOCK_KINDS or name not in ADAPTER_NAMES:
                raise ValueError(f"cannot save adapter {kind}.{index}.{name}: unknown block kind or adapter name")
            ranks.add(module.rank)
            maps.add(module.num_maps)
            alphas.add(module.alpha)
            for factor in FACTOR_NAMES:
                t = getattr(module, factor).detach().to("cpu")
                tensors[checkpoint_key(kind, index, name, factor)] = (t.to(dtype) if dtype else t).contiguous()
    if len(ranks) != 1 or len(maps) != 1:
        raise ValueError(f"all adapters of one checkpoint need one rank and map count, got ranks {ranks}, maps {maps}")
    if alpha is None:
        if len(alphas) != 1:
            raise ValueError(f"adapters disagree on alpha ({alphas}); pass alpha explicitly")
        alpha = alphas.pop()
    num_maps = maps.pop()
    names = list(CHECKPOINT_MAP_NAMES) if num_maps == len(CHECKPOINT_MAP_NAMES) else [f"map{i}" for i in range(num_maps)]
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "map_names": json.dumps(names),
                "num_maps": str(num_maps), "rank": str(ranks.pop()), "alpha": repr(float(alpha))}
    metadata.update(extra_metadata or {})
    save_file(tensors, path, metadata=metadata)
