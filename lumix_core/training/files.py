"""Writing training outputs atomically (a temporary file in the same folder, then a rename), so a
crash or a killed rank never leaves a half-written file under its final name; the set of files a
run writes (RunFiles), checked before the first step and cleaned of a killed run's temporaries."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import torch

from ..checkpoint import save_checkpoint
from ..export import atomic_path
from .config import MAX_STEPS, TrainConfig

STATE_FORMAT = "lumix-training-state"
STATE_VERSION = 1
LOG_NAME, PLOT_NAME = "log.jsonl", "plot.png"
# export.atomic_path's temporaries: tempfile.mkstemp(prefix=".<final name>.", suffix=".part"), whose random
# middle is 8 characters of [a-z0-9_] (tempfile._RandomNameSequence).
_TEMP_RANDOM = r"[a-z0-9_]{8}"
_TEMP_EXTRA = len(".") + len(".") + 8 + len(".part")  # bytes a temporary name adds to its final name


def atomic_write(path: str, write) -> str:
    """Call write(tmp_path) through export.atomic_path (renamed to `path` when complete, removed on
    failure), the bytes synced to disk before the rename. Creates the folder. Returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        write(tmp)
        with open(tmp, "rb") as f:  # the bytes reach the disk before the final name does (power loss)
            os.fsync(f.fileno())
    return path


def temporary_name(final_name: str) -> str:
    """The longest temporary name atomic_write uses for `final_name` (the random part as 'x's)."""
    return f".{final_name}.{'x' * 8}.part"


# A run `x` writes x_ema, x_best and x_step000123 beside x: no run may be named so (its files would be
# taken for, pruned or overwritten as x's own).
RESERVED_ENDING = re.compile(r"_(?:ema|best|step\d+)$")


def check_output_name(name) -> str:
    """A run's output name: a plain, visible file name stem. Returns it; ValueError says what is wrong."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"the output name {name!r} is empty: give a file name such as 'my_lumix'")
    bad = sorted({repr(c) for c in name if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"the output name {name!r} holds control characters ({', '.join(bad)}): newlines, NUL and "
                         "other control characters cannot be part of a file name; use a plain name")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"the output name {name!r} must be a plain file name, not a path (no '/', '\\' or '..'); "
                         "the folder is set separately")
    if name.startswith("."):
        raise ValueError(f"the output name {name!r} starts with '.': its files would be hidden; drop the dot")
    if name != name.strip():
        raise ValueError(f"the output name {name!r} starts or ends with spaces: remove them")
    if RESERVED_ENDING.search(name):
        raise ValueError(f"the output name {name!r} ends like the extra files a run writes beside its checkpoint "
                         "(_ema, _best, _step<number>), so another run's files would take its names: choose a name "
                         "without that ending")
    return name


def _existing_ancestor(folder: str) -> str:
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def _limit(folder: str, key: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, key))
    except (OSError, ValueError, AttributeError):
        return default


def check_folder(folder: str, what: str = "output folder") -> None:
    """`folder` is a folder, or can become one: no part of it is an existing file."""
    folder = os.path.abspath(folder)
    probe = folder
    while True:
        if os.path.exists(probe) and not os.path.isdir(probe):
            raise ValueError(f"the {what} {folder} cannot be created: {probe} is a file, not a folder; choose "
                             "another folder or move that file")
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent


_STEP_DIGITS = r"(\d{6,7})"  # step{N:06d}, up to MAX_STEPS


@dataclass(frozen=True)
class RunFiles:
    """Every file one training run writes: in `folder` the step checkpoints <name>_stepNNNNNN.safetensors
    and their EMA twins <name>_stepNNNNNN_ema.safetensors, the best checkpoint <name>_best.safetensors,
    the resumable <name>.state.pt, log.jsonl and plot.png; the final checkpoint at `final` (by default
    <folder>/<name>.safetensors) and its EMA twin <name>_ema.safetensors in the final checkpoint's folder."""
    folder: str
    name: str
    final_path: str = ""

    def __post_init__(self):
        check_output_name(self.name)
        if not self.final_path:
            object.__setattr__(self, "final_path", os.path.join(self.folder, f"{self.name}.safetensors"))

    @property
    def state(self) -> str:
        return os.path.join(self.folder, f"{self.name}.state.pt")

    @property
    def log(self) -> str:
        return os.path.join(self.folder, LOG_NAME)

    @property
    def plot(self) -> str:
        return os.path.join(self.folder, PLOT_NAME)

    @property
    def final_ema(self) -> str:
        return os.path.join(os.path.dirname(self.final_path), f"{self.name}_ema.safetensors")

    @property
    def best(self) -> str:
        return os.path.join(self.folder, f"{self.name}_best.safetensors")

    def step_checkpoint(self, step: int) -> str:
        return os.path.join(self.folder, f"{self.name}_step{step:06d}.safetensors")

    def step_ema(self, step: int) -> str:
        return os.path.join(self.folder, f"{self.name}_step{step:06d}_ema.safetensors")

    def paths(self, steps: int = MAX_STEPS) -> list[str]:
        """Every path the run may write, with the longest step checkpoint names of a run of `steps`."""
        return [self.final_path, self.final_ema, self.state, self.log, self.plot, self.best,
                self.step_checkpoint(steps), self.step_ema(steps)]

    def check(self, steps: int = MAX_STEPS) -> None:
        """Before the first step: every folder can be created, and every name the run writes, its
        temporary names included, fits the file system's limits (a run must not train for hours and
        then fail at its first save)."""
        too_long = []  # (bytes, name, limit): the longest is reported
        for path in self.paths(steps):
            folder, final = os.path.split(path)
            check_folder(folder)
            existing = _existing_ancestor(folder)
            name_max, path_max = _limit(existing, "PC_NAME_MAX", 255), _limit(existing, "PC_PATH_MAX", 4096)
            new_folders = [p for p in os.path.relpath(folder, existing).split(os.sep) if p != "."]
            for part in [temporary_name(final)] + new_folders:
                if len(os.fsencode(part)) > name_max:
                    too_long.append((len(os.fsencode(part)), part, name_max))
            full = os.path.join(os.path.abspath(folder), temporary_name(final))
            if len(os.fsencode(full)) >= path_max:
                raise ValueError(f"the path {full!r} the run writes is longer than this file system allows "
                                 f"({path_max} bytes); choose a shorter name or folder")
        if too_long:
            size, part, name_max = max(too_long)
            raise ValueError(f"the output name {self.name!r} is too long: the run writes {part!r} ({size} bytes), "
                             f"over this file system's {name_max}-byte limit for a file name; use a name of at most "
                             f"{self.longest_name_allowed(name_max, steps)} bytes")

    def longest_name_allowed(self, name_max: int = 255, steps: int = MAX_STEPS) -> int:
        longest_suffix = max(len(os.fsencode(os.path.basename(p))) - len(os.fsencode(self.name))
                             for p in self.paths(steps) if os.path.basename(p).startswith(self.name))
        return max(0, name_max - longest_suffix - _TEMP_EXTRA)

    def existing(self) -> list[str]:
        """This run's checkpoints and state already on disk (a previous run of the same name)."""
        found = [p for p in (self.final_path, self.final_ema, self.state, self.best) if os.path.exists(p)]
        steps = self.step_checkpoints()
        return found + [p for step in sorted(steps) for p in steps[step]]

    def step_of(self, file_name: str) -> tuple[int, bool] | None:
        """(step, is_ema) when `file_name` is one of this run's step checkpoints (or its EMA twin), else None."""
        m = re.fullmatch(re.escape(f"{self.name}_step") + _STEP_DIGITS + r"(_ema)?\.safetensors", file_name)
        return (int(m.group(1)), m.group(2) is not None) if m else None

    def is_step_checkpoint(self, file_name: str) -> bool:
        """A raw step checkpoint of this run (not its EMA twin, not the best or final file)."""
        found = self.step_of(file_name)
        return found is not None and not found[1]

    def step_checkpoints(self) -> dict[int, list[str]]:
        """step -> [raw, EMA twin] paths of this run's step checkpoints on disk (those that exist)."""
        out: dict[int, list[str]] = {}
        if not os.path.isdir(self.folder):
            return out
        for entry in sorted(os.listdir(self.folder)):
            found = self.step_of(entry)
            path = os.path.join(self.folder, entry)
            if found is not None and os.path.isfile(path):
                out.setdefault(found[0], []).append(path)
        return {step: sorted(paths, key=lambda p: p.endswith("_ema.safetensors")) for step, paths in out.items()}

    def prune_step_checkpoints(self, keep: int, up_to: int, after: int = 0) -> list[str]:
        """Delete this run's step checkpoints (with their EMA twins) of steps in (`after`, `up_to`] except
        the newest `keep` of them; keep = 0 keeps all. Later steps (an abandoned branch of a resumed run),
        steps up to `after` (written before the run chose to prune), the final and best checkpoints and the
        state are never touched. Returns what was removed."""
        if keep <= 0:
            return []
        steps = sorted(s for s in self.step_checkpoints().items() if after < s[0] <= up_to)
        removed = []
        for _, paths in steps[:-keep]:
            for path in paths:
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:  # removed meanwhile (another session of the run)
                    pass
        return removed

    def remove_stale_temporaries(self) -> list[str]:
        """Remove the temporaries a killed run of this name left (.<final name>.XXXXXXXX.part, exactly
        atomic_write's pattern for this run's own file names, nothing else). Returns what was removed."""
        removed = []
        for folder, finals in self._finals_by_folder().items():
            if not os.path.isdir(folder):
                continue
            alternatives = "|".join(finals)
            pattern = re.compile(r"\.(?:" + alternatives + r")\." + _TEMP_RANDOM + r"\.part")
            for entry in os.listdir(folder):
                path = os.path.join(folder, entry)
                if pattern.fullmatch(entry) and os.path.isfile(path) and not os.path.islink(path):
                    os.unlink(path)
                    removed.append(path)
        return sorted(removed)

    def _finals_by_folder(self) -> dict[str, list[str]]:
        """folder -> regexes of the final file names this run writes there."""
        out: dict[str, list[str]] = {}
        for path in (self.final_path, self.final_ema, self.state, self.log, self.plot, self.best):
            folder, final = os.path.split(path)
            out.setdefault(folder, []).append(re.escape(final))
        out.setdefault(self.folder, []).append(re.escape(f"{self.name}_step") + r"\d{6,7}(?:_ema)?\.safetensors")
        return out


def write_lora_checkpoint(path: str, adapters, config: TrainConfig, step: int, extra: dict | None = None) -> str:
    """The adapters in the released key layout (loads in the LumiX loader and the reference code),
    with metadata: format, map names, rank, alpha (by save_checkpoint), training config and step."""
    metadata = {"training_config": json.dumps(config.to_dict(), sort_keys=True), "step": str(step),
                "software": "LumiX-for-ComfyUI trainer"}
    metadata.update({k: str(v) for k, v in (extra or {}).items()})
    return atomic_write(path, lambda tmp: save_checkpoint(tmp, adapters.block_dict(), alpha=adapters.alpha,
                                                          extra_metadata=metadata))


def write_training_state(path: str, state: dict) -> str:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_training_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no training state at {path}: resume from a *.state.pt file the trainer wrote")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable LumiX training state ({exc}); pick a *.state.pt file the "
                         "trainer wrote, or start from a checkpoint (.safetensors) instead") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a LumiX training state (no '{STATE_FORMAT}' marker); a .safetensors "
                         "checkpoint is loaded with 'init from checkpoint', not resumed")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} is a training state of version {state.get('version')}, this trainer reads "
                         f"version {STATE_VERSION}")
    return state
