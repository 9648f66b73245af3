"""Where LumiX Training Dataset may read and write, as core ComfyUI's training loaders do: dataset
folders are subfolders of ComfyUI's input folder, or folders the user registers under the folder type
`lumix_datasets` (extra_model_paths.yaml); the cache goes inside the dataset folder or under ComfyUI's
output folder. Every name is resolved (links included) and must stay inside its root; messages name
folders only relative to their root (a server may be reachable by others)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import folder_paths

from ..lumix_core.training.cache import CACHE_FOLDER
from ..lumix_core.training.data import looks_like_dataset

DATASETS_FOLDER = "lumix_datasets"          # extra_model_paths.yaml:  lumix_datasets: /data/my_datasets
REGISTERED = f" [{DATASETS_FOLDER}]"        # suffix of the choices from registered folders
DEFAULT_FOLDER = "lumix_dataset"            # ComfyUI/input/lumix_dataset (the shipped workflow's)
DEFAULT_CACHE = CACHE_FOLDER  # shared with the command-line trainer
MAX_DEPTH = 3                                # folder levels listed below a root
MAX_CHOICES = 2000
WHERE = (f"pick a folder from the list: subfolders of ComfyUI/input/, or of a folder registered as "
         f"'{DATASETS_FOLDER}' in extra_model_paths.yaml (for datasets kept elsewhere)")


class FolderError(ValueError):
    """A folder name that is not allowed or not there; the message names it relative to its root only."""


@dataclass
class DatasetFolder:
    path: str     # absolute, resolved
    label: str    # what messages show: input/<name> or <name> [lumix_datasets]


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _escaping_prefix(root: str, parts: list[str]) -> str | None:
    """The first leading part of the name that resolves outside root (a link), as a relative name; the
    parts after it are never looked at, so no message tells what exists outside."""
    for i in range(1, len(parts) + 1):
        path = os.path.join(root, *parts[:i])
        if not os.path.lexists(path):
            return None
        if not _inside(path, root):
            return "/".join(parts[:i])
    return None


def _registered_roots() -> list[str]:
    if DATASETS_FOLDER not in folder_paths.folder_names_and_paths:
        return []
    return [p for p in folder_paths.get_folder_paths(DATASETS_FOLDER) if os.path.isdir(p)]


def _subfolders(root: str) -> list[str]:
    """Relative names of the real (not linked) folders under root, hidden ones left out; a folder that
    holds a dataset is listed but not entered (its map/scene folders are no datasets themselves)."""
    found: list[str] = []

    def walk(folder: str, rel: str, depth: int) -> None:
        try:
            entries = sorted((e for e in os.scandir(folder)
                              if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if len(found) >= MAX_CHOICES:
                return
            name = f"{rel}/{entry.name}" if rel else entry.name
            found.append(name)
            if depth < MAX_DEPTH and not looks_like_dataset(entry.path):
                walk(entry.path, name, depth + 1)

    walk(root, "", 1)
    return found


def dataset_choices() -> list[str]:
    """The combo's options: input/ subfolders (and the default name), then registered folders."""
    names = set(_subfolders(folder_paths.get_input_directory())) | {DEFAULT_FOLDER}
    registered = []
    for root in _registered_roots():
        if looks_like_dataset(root):
            registered.append(os.path.basename(os.path.normpath(root)) + REGISTERED)
        registered += [name + REGISTERED for name in _subfolders(root)]
    return sorted(names) + sorted(set(registered))


CACHE_WHERE = ("give a folder name under ComfyUI/output/ (e.g. lumix_cache/my_data), or leave it empty to cache "
               "inside the dataset folder")


def _relative_parts(name: str, what: str, where: str = WHERE) -> list[str]:
    """The parts of a plain relative folder name; absolute paths, '~', '..' and drive letters refused
    (without echoing the value)."""
    if "\x00" in name or os.path.isabs(name) or name.startswith(("~", "/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise FolderError(f"{what} takes a folder name, not a path: absolute paths and '~' are not accepted; {where}")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise FolderError(f"{what} may not contain '..' (it would leave its folder); {where}")
    if not parts:
        raise FolderError(f"{what} is empty; {where}")
    return parts


def resolve_dataset(name: str) -> DatasetFolder:
    """The dataset folder a combo value names, checked to exist inside its root."""
    name = (name or "").strip()
    if name.endswith(REGISTERED):
        rel = name[:-len(REGISTERED)].strip()
        parts = _relative_parts(rel, "folder")
        label = "/".join(parts) + REGISTERED
        for root in _registered_roots():
            candidates = [os.path.join(root, *parts)]
            if len(parts) == 1 and os.path.basename(os.path.normpath(root)) == parts[0]:
                candidates.append(root)
            escaping = _escaping_prefix(root, parts)
            if escaping is not None:
                raise FolderError(f"folder {escaping}{REGISTERED} leads outside its registered folder (a link?): it "
                                  f"is not read; {WHERE}")
            for path in candidates:
                if os.path.isdir(path):
                    return DatasetFolder(os.path.realpath(path), label)
        raise FolderError(f"folder {label} does not exist (no registered '{DATASETS_FOLDER}' folder holds it); {WHERE}")
    parts = _relative_parts(name, "folder")
    rel = "/".join(parts)
    root = folder_paths.get_input_directory()
    path = os.path.join(root, *parts)
    escaping = _escaping_prefix(root, parts)
    if escaping is not None:
        raise FolderError(f"folder input/{escaping} leads outside ComfyUI's input folder (a link?): it is not read. For "
                          f"a dataset kept elsewhere, register its folder as '{DATASETS_FOLDER}' in "
                          "extra_model_paths.yaml")
    if not os.path.isdir(path):
        raise FolderError(f"folder input/{rel} does not exist: create ComfyUI/input/{rel}/ and put the scenes there, "
                          f"or {WHERE}")
    return DatasetFolder(os.path.realpath(path), f"input/{rel}")


def resolve_cache(cache_folder: str, dataset: DatasetFolder) -> tuple[str, str]:
    """(path, label) of the cache: empty -> <dataset>/.lumix_cache; else a folder name under
    ComfyUI's output folder. Never outside those roots (links included)."""
    name = (cache_folder or "").strip()
    if not name:
        path = os.path.join(dataset.path, DEFAULT_CACHE)
        if os.path.lexists(path) and not _inside(path, dataset.path):
            raise FolderError(f"{dataset.label}/{DEFAULT_CACHE} leads outside the dataset folder (a link?); remove "
                              "it, or give cache_folder a folder name under ComfyUI/output/")
        return path, f"{dataset.label}/{DEFAULT_CACHE}"
    parts = _relative_parts(name, "cache_folder", CACHE_WHERE)
    root = folder_paths.get_output_directory()
    path = os.path.join(root, *parts)
    rel = "/".join(parts)
    if not _inside(path, root):
        raise FolderError(f"cache_folder output/{rel} leads outside ComfyUI's output folder (a link?); {CACHE_WHERE}")
    return path, f"output/{rel}"
