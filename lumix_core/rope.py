"""FLUX's rotary position embedding in plain torch ops, for passes that autograd records.

A host may apply RoPE with a kernel that has no backward (ComfyUI 0.8 calls comfy-kitchen's
`apply_rope` op, which registers none), so a training step cannot go through it. This is the same
rotation as ComfyUI's own pure-torch fallback: every adjacent pair (x[2k], x[2k+1]) of a head is
multiplied by the 2x2 matrix pe[..., k, :, :] that ComfyUI's `rope` builds.
"""
from __future__ import annotations

from torch import Tensor


def apply_rope1(x: Tensor, pe: Tensor) -> Tensor:
    """x: [B, H, L, D]; pe: [B or 1, 1, L, D/2, 2, 2] (float32). Returns x rotated, in x's dtype."""
    pairs = x.to(dtype=pe.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def apply_rope(q: Tensor, k: Tensor, pe: Tensor) -> tuple[Tensor, Tensor]:
    return apply_rope1(q, pe), apply_rope1(k, pe)
