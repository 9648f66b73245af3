"""What identifies an encoder's weights in the dataset cache's keys, computed alike from a model in
memory (the LumiX Training Dataset node: the VAE and CLIP it is given) and from the model's file
(the command-line trainer, before it loads anything): so that both front doors find each other's
cache entries, and a different file under the same name never reuses old latents or embeddings.

The fingerprint samples weights: every tensor of 2 or more dimensions (named without the host's
wrapper prefixes; `.weight`s only where there are any), 4 values each at fixed positions, rounded to
bfloat16 (so a float32, float16 or bfloat16 copy of the same file agrees), with names and shapes: a
fine-tune of any layer changes it. A file is read a few rows per tensor, never whole. A file that is
not safetensors is hashed whole (correct, slower, and the node cannot match it).
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Mapping

import torch

SAMPLES = 4     # values read from each tensor
# wrappers a host puts around a file's own names (ComfyUI: VAE.first_stage_model, CLIP models' .transformer)
WRAPPER_PREFIXES = ("first_stage_model.", "cond_stage_model.", "transformer.")
# weights a host may create although a file lacks them (ComfyUI leaves CLIP-L's projection uninitialised)
NOT_FROM_FILE = ("text_projection.weight",)
FINGERPRINT_VERSION = "2"  # 2: every tensor, 4 values each


def canonical_name(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def chosen(shapes: Mapping[str, tuple]) -> list[str]:
    """The canonical names whose values make the fingerprint: every `.weight` of 2 or more dimensions
    (any tensor of 2 or more dimensions where there is no `.weight`), but those a host makes itself."""
    names = sorted(canonical_name(n) for n, s in shapes.items() if len(s) >= 2 and n.endswith(".weight"))
    names = [n for n in names if n not in NOT_FROM_FILE]
    return names or sorted(canonical_name(n) for n, s in shapes.items() if len(s) >= 2)


def sample_positions(numel: int) -> list[int]:
    return sorted({(numel - 1) * i // (SAMPLES - 1) for i in range(SAMPLES)}) if numel > 1 else [0]


def _fingerprint(shapes: Mapping[str, tuple], read: Callable[[str, list[int]], torch.Tensor]) -> str:
    by_canonical = {canonical_name(n): n for n in shapes}
    h = hashlib.sha256(f"lumix-weights/{FINGERPRINT_VERSION}".encode())
    names = chosen(shapes)
    if not names:
        return "no-weights"
    for name in names:
        original = by_canonical[name]
        shape = tuple(shapes[original])
        numel = 1
        for d in shape:
            numel *= int(d)
        values = read(original, sample_positions(numel)).reshape(-1).to(torch.float32).to(torch.bfloat16)
        h.update(f"{name}:{list(shape)}:".encode())
        h.update(values.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:20]


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """A model in memory: {name: tensor} (a state dict)."""
    shapes = {n: tuple(t.shape) for n, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}

    def read(name, positions):
        return tensors[name].detach().reshape(-1)[torch.tensor(positions)].cpu()
    return _fingerprint(shapes, read)


def fingerprint_file(path: str) -> str:
    """A safetensors file, reading only the rows that hold the sampled values; another file, hashed whole."""
    from safetensors import safe_open

    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except Exception:  # not safetensors (.pt, .bin): the bytes themselves
        h = hashlib.sha256(b"lumix-file/")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        return "file-" + h.hexdigest()[:20]
    with handle as f:
        shapes = {}
        for name in f.keys():
            piece = f.get_slice(name)
            if piece.get_dtype() in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"):
                shapes[name] = tuple(piece.get_shape())

        def read(name, positions):
            piece, shape = f.get_slice(name), shapes[name]
            row_len = 1
            for d in shape[1:]:
                row_len *= int(d)
            rows: dict[int, torch.Tensor] = {}
            out = []
            for p in positions:
                r = p // row_len
                if r not in rows:
                    rows[r] = piece[r:r + 1].reshape(-1)
                out.append(rows[r][p % row_len].to(torch.float32))
            return torch.stack(out)
        return _fingerprint(shapes, read)


def encoder_id(parts: Iterable[tuple[str, str]]) -> str:
    """The cache's encoder identity from (role, fingerprint) pairs (vae, clip_l, t5xxl), in role order."""
    return ";".join(f"{role}={fp}" for role, fp in sorted(parts))
