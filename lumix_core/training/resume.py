"""What a resumable training state must hold, checked against the model and the dataset BEFORE
anything is allocated from it: a state file is small (weights_only=True keeps it data), but the
shape it claims (rank, widths, map count) decides how much memory the resumed run allocates."""
from __future__ import annotations

import math

import torch

from ..checkpoint import ADAPTER_NAMES, BLOCK_KINDS, MAX_ALPHA, MAX_CHECKPOINT_RANK
from .config import TrainConfig

SHAPE_KEYS = ("num_maps", "rank", "hidden_size", "alpha")


class StateError(ValueError):
    """A training state that this run cannot resume; the message says what and what to do."""


def adapter_shapes(hidden_size: int, double_blocks: int, single_blocks: int, num_maps: int,
                   rank: int) -> dict[str, tuple[int, ...]]:
    """LumiXAdapters.state_dict()'s keys and shapes, in its order, without building it."""
    counts = {"double_blocks": double_blocks, "single_blocks": single_blocks}
    widths = {"kv_tt_lora": 2 * hidden_size, "proj_tt_lora": hidden_size}
    out = {}
    for kind in BLOCK_KINDS:
        for index in range(counts[kind]):
            for name in ADAPTER_NAMES:
                prefix = f"blocks.{kind}_{index}.{name}."
                out[prefix + "G1"] = (num_maps, num_maps, rank)
                out[prefix + "G2"] = (num_maps, hidden_size, rank, rank)
                out[prefix + "G3"] = (num_maps, widths[name], rank)
    return out


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise StateError(message)


def check_training_state(state: dict, *, hidden_size: int, double_blocks: int, single_blocks: int,
                         num_maps: int, source: str = "the training state") -> dict:
    """Raise StateError unless `state` (read_training_state's) fits this model and dataset exactly:
    its config is valid, its shape (rank within the loader's range, map count, width) is this
    model's, every adapter tensor and optimiser tensor has the size that shape gives. Returns the
    shape {num_maps, rank, hidden_size, alpha} to build the adapters from."""
    fix = "resume with the model, dataset and settings that state was saved with, or start a new run"
    for key, kind in (("step", int), ("adapters", dict), ("optimizer", dict), ("config", dict), ("data", dict),
                      ("rng", dict), ("shape", dict)):
        _need(isinstance(state.get(key), kind) and not isinstance(state.get(key), bool),
              f"{source} is incomplete or damaged: its '{key}' entry is missing or not a {kind.__name__}; "
              "pick a *.state.pt the trainer wrote, or start a new run")
    shape = state["shape"]
    _need(set(shape) == set(SHAPE_KEYS), f"{source} has a malformed shape entry {sorted(shape)}; expected "
                                         f"{list(SHAPE_KEYS)}")
    for key in ("num_maps", "rank", "hidden_size"):
        _need(isinstance(shape[key], int) and not isinstance(shape[key], bool) and shape[key] >= 1,
              f"{source} claims {key} = {shape[key]!r}, which is not a positive whole number; the file is damaged")
    _need(shape["rank"] <= MAX_CHECKPOINT_RANK,
          f"{source} claims rank {shape['rank']}; the trainer and loader support ranks 1 to {MAX_CHECKPOINT_RANK}. "
          "The file is damaged or not from this trainer; start a new run")
    alpha = shape["alpha"]
    _need(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)
          and 0 < alpha <= MAX_ALPHA, f"{source} claims alpha {alpha!r}, outside (0, {MAX_ALPHA:g}]; the file is damaged")
    _need(shape["hidden_size"] == hidden_size,
          f"{source} is for a model of width {shape['hidden_size']}, this model's is {hidden_size}; {fix}")
    _need(shape["num_maps"] == num_maps,
          f"{source} mixes {shape['num_maps']} maps per scene, the dataset has {num_maps}; {fix}")
    try:
        config = TrainConfig.from_dict(dict(state["config"]))
    except (TypeError, ValueError) as error:
        raise StateError(f"{source} holds invalid training settings ({error}); the file is damaged") from None
    _need((config.rank, config.alpha) == (shape["rank"], float(alpha)),
          f"{source} is inconsistent: its settings say rank {config.rank}, alpha {config.alpha}, its shape says "
          f"rank {shape['rank']}, alpha {alpha}; the file is damaged")
    _need(0 <= state["step"] <= config.steps,
          f"{source} claims step {state['step']}, outside 0..{config.steps}; the file is damaged")
    data = state["data"]
    _need(isinstance(data.get("num_scenes"), int) and data.get("next_step") == state["step"],
          f"{source} has a malformed data entry; the file is damaged")
    _need(isinstance(state["rng"].get("torch"), torch.Tensor) and state["rng"]["torch"].dtype == torch.uint8,
          f"{source} has no valid random-number state; the file is damaged")

    expected = adapter_shapes(hidden_size, double_blocks, single_blocks, num_maps, shape["rank"])
    tensors = state["adapters"]
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise StateError(f"{source} does not cover this model's blocks ({double_blocks} double, {single_blocks} "
                         f"single): " + (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}") + f"; {fix}")
    for key, size in expected.items():
        t = tensors[key]
        _need(isinstance(t, torch.Tensor) and tuple(t.shape) == size and t.is_floating_point(),
              f"{source}: {key} has shape {tuple(getattr(t, 'shape', ()))}, this model needs {size}; {fix}")
        _need(bool(torch.isfinite(t).all()), f"{source}: {key} holds NaN or infinite values; the run diverged before "
                                             "it was saved. Resume from an earlier run or start a new one")
    _check_optimizer(state["optimizer"], list(expected.values()), source)
    _check_ema(state.get("ema"), expected, source, fix)
    _check_best(state.get("best"), source)
    return dict(shape)


def _check_ema(ema, expected: dict, source: str, fix: str) -> None:
    """The optional EMA of the adapters (absent in states written before EMA existed, or with it off)."""
    if ema is None:
        return
    _need(isinstance(ema, dict) and isinstance(ema.get("tensors"), dict) and isinstance(ema.get("updates"), int)
          and not isinstance(ema.get("updates"), bool) and ema["updates"] >= 0,
          f"{source} has a malformed EMA entry; the file is damaged")
    tensors = ema["tensors"]
    _need(set(tensors) == set(expected), f"{source}: its EMA does not cover this model's adapters; {fix}")
    for key, size in expected.items():
        t = tensors[key]
        _need(isinstance(t, torch.Tensor) and tuple(t.shape) == size and t.dtype == torch.float32,
              f"{source}: EMA tensor {key} has shape {tuple(getattr(t, 'shape', ()))}, this model needs {size}; {fix}")
        _need(bool(torch.isfinite(t).all()), f"{source}: EMA tensor {key} holds NaN or infinite values; the file is "
                                             "damaged")


def _check_best(best, source: str) -> None:
    """The optional best validation value so far ({"metric", "value", "step"})."""
    if best is None:
        return
    _need(isinstance(best, dict) and isinstance(best.get("metric"), str)
          and isinstance(best.get("value"), float) and math.isfinite(best["value"])
          and isinstance(best.get("step"), int) and not isinstance(best.get("step"), bool),
          f"{source} has a malformed best-checkpoint entry; the file is damaged")


def _check_optimizer(optimizer: dict, shapes: list[tuple[int, ...]], source: str) -> None:
    """One parameter group over every adapter tensor, in order; no optimiser tensor larger than its
    parameter (AdamW keeps parameter-shaped moments, Prodigy also flat slices of them)."""
    groups, per_param = optimizer.get("param_groups"), optimizer.get("state")
    _need(isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
          and groups[0].get("params") == list(range(len(shapes))) and isinstance(per_param, dict),
          f"{source}: its optimiser state does not match this model's {len(shapes)} adapter tensors; the file is "
          "damaged or from another model")
    for index, entry in per_param.items():
        _need(isinstance(index, int) and 0 <= index < len(shapes) and isinstance(entry, dict),
              f"{source}: its optimiser state names parameter {index!r}, which this model does not have")
        numel = math.prod(shapes[index])
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                _need(value.numel() <= numel and (value.dim() <= 1 or tuple(value.shape) == shapes[index]),
                      f"{source}: optimiser tensor {name} of parameter {index} has shape {tuple(value.shape)}, "
                      f"the parameter {shapes[index]}; the file is damaged")
