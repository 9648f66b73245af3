"""The loader's cache: the adapters of the last LumiX checkpoint loaded, one copy, checked first.

* One copy: the file's tensors are copied into the adapters' parameters in the chosen dtype one
  adapter at a time, each file tensor dropped as soon as it is copied (so the two coexist for one
  adapter at most); the cached checkpoint's factors are those same parameters. Copied, never kept as
  read: safetensors maps tensors from the file, and a file overwritten in place would change them
  under a running model (or crash it on a page that is gone).
* Nothing of a refused file: a checkpoint is checked against the model before anything of it is
  cached, and the error carries no reference to its tensors.
* A replaced file is noticed even when its mtime was preserved (cp -p, rsync -t): the key holds the
  inode and ctime as well, and a content fingerprint (the header, which names every shape, dtype,
  offset and the metadata, plus evenly spaced samples of the tensor data).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import struct

import torch

from ..lumix_core import LumiXCheckpoint, load_checkpoint
from ..lumix_core.safetensors_header import MAX_HEADER_BYTES
from .adapter_memory import adapter_model

_SAMPLES, _SAMPLE_BYTES = 16, 4096


def content_fingerprint(path: str) -> str:
    """A digest of a safetensors file's header and of samples of its data; reads ~70 KB."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        head = f.read(8)
        digest.update(head)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        digest.update(f.read(min(header_len, size, MAX_HEADER_BYTES)))
        start = 8 + min(header_len, size)
        span = max(size - start - _SAMPLE_BYTES, 0)
        for i in range(_SAMPLES):
            f.seek(start + span * i // max(_SAMPLES - 1, 1))
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def file_identity(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            content_fingerprint(path))


@dataclasses.dataclass(frozen=True)
class LoadedAdapters:
    checkpoint: LumiXCheckpoint  # shapes and metadata; its factors are the adapters' parameters
    adapters: dict  # {(kind, index): {name: TensorLoRA}}
    model: object  # the ModelPatcher ComfyUI loads and offloads (nodes/adapter_memory.py)
    dtype: torch.dtype


def build_loaded_adapters(checkpoint: LumiXCheckpoint, dtype: torch.dtype, load_device, offload_device) -> LoadedAdapters:
    """The checkpoint's adapters in `dtype` (LumiXCheckpoint.tensor_loras, consuming the file's
    tensors as it goes: afterwards one copy exists), held by an adapter ModelPatcher."""
    adapters = checkpoint.tensor_loras(dtype, consume=True)
    return LoadedAdapters(checkpoint, adapters, adapter_model(adapters, load_device, offload_device), dtype)


class CheckpointCache:
    """The last checkpoint loaded, so changing strength does not re-read 500 MB from disk."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, path: str, dtype: torch.dtype, load_device, offload_device, check) -> LoadedAdapters:
        """The adapters of `path` in `dtype`; `check(checkpoint)` raises for a file that does not fit."""
        key = (file_identity(path), dtype, str(load_device), str(offload_device))
        if key == self.key:
            check(self.value.checkpoint)
            return self.value
        checkpoint = load_checkpoint(path)
        check(checkpoint)  # a refused file raises here, before anything of it is kept
        value = build_loaded_adapters(checkpoint, dtype, load_device, offload_device)
        self.key, self.value = key, value
        return value

    def clear(self) -> None:
        self.key, self.value = None, None
