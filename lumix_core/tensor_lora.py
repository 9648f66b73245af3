"""Tensor LoRA: one low-rank adapter per projection that mixes information across the M maps.

delta_i = s * w * sum_j sum_r sum_q sum_u x_j[l,u] G2[i,u,r,q] G1[i,j,q] G3[i,o,r]

G1 is merged into G2 first (W[j,u,i,r] = sum_q G1[i,j,q] G2[i,u,r,q]), so the forward is one
[L, M*d_in] x [M*d_in, M*R] contraction and one [M, L, R] x [M, R, d_out] product. Nothing of
size [M, M, L, d_out] (what the reference contraction order builds) is ever allocated.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .maps import check_grouped_batch


class TensorLoRA(nn.Module):
    def __init__(
        self,
        num_maps: int,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        for label, value in (("num_maps", num_maps), ("in_features", in_features),
                             ("out_features", out_features), ("rank", rank)):
            if int(value) < 1:
                raise ValueError(f"TensorLoRA {label} must be a positive integer, got {value}")
        self.num_maps = int(num_maps)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.rank = int(rank)
        self.alpha = 1.0 if alpha is None else float(alpha)
        self.strength = 1.0
        kw = {"dtype": dtype, "device": device}
        M, R = self.num_maps, self.rank
        self.G1 = nn.Parameter(torch.empty(M, M, R, **kw))
        self.G2 = nn.Parameter(torch.empty(M, in_features, R, R, **kw))
        self.G3 = nn.Parameter(torch.empty(M, out_features, R, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # G3 = 0 makes a fresh adapter a no-op, like the zero "up" factor of ordinary LoRA,
        # while G1 and G2 keep gradients flowing from the first training step.
        with torch.no_grad():
            nn.init.normal_(self.G1, std=1.0 / math.sqrt(self.num_maps * self.rank))
            nn.init.normal_(self.G2, std=1.0 / math.sqrt(self.in_features))
            nn.init.zeros_(self.G3)

    def scale(self, strength: float | None = None) -> float:
        """alpha / sqrt(R) times the strength (the module's own unless one is given)."""
        return self.alpha / math.sqrt(self.rank) * (self.strength if strength is None else strength)

    def merged_input_weight(self, dtype: torch.dtype, strength: float | None = None) -> torch.Tensor:
        """[M_in, d_in, M_out * R]: G1 folded into G2, with the scale, in `dtype`.

        Merged in float32 (or float64) whatever the compute dtype, so that bf16/fp16 inference
        rounds once instead of twice.
        """
        acc = torch.float64 if self.G2.dtype == torch.float64 else torch.float32
        w = torch.einsum("ijq,iurq->juir", self.G1.to(acc), self.G2.to(acc)) * self.scale(strength)
        return w.reshape(self.num_maps, self.in_features, self.num_maps * self.rank).to(dtype)

    def forward(self, x: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        """Delta for x [k*M, L, d_in] -> [k*M, L, d_out] in x's dtype and device.

        `strength` overrides the module's own for this call, so that model copies sharing one
        loaded adapter can each use their own strength.
        """
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"TensorLoRA expects [batch, tokens, {self.in_features}] input, got {tuple(x.shape)}"
            )
        batch, tokens, _ = x.shape
        M, R = self.num_maps, self.rank
        scenes = check_grouped_batch(batch, M, "Tensor LoRA input batch")
        weight = self.merged_input_weight(x.dtype, strength).to(x.device)
        # [k, M_in, L, d_in] @ [M_in, d_in, M_out*R] then a sum over the input map: the same
        # contraction as [L, M*d_in] x [M*d_in, M*R] without copying x into that layout.
        hidden = torch.matmul(x.view(scenes, M, tokens, self.in_features), weight).sum(dim=1)
        hidden = hidden.view(scenes, tokens, M, R).transpose(1, 2)  # [k, M_out, L, R]
        up = self.G3.to(device=x.device, dtype=x.dtype).transpose(1, 2)  # [M_out, R, d_out]
        return torch.matmul(hidden, up).reshape(batch, tokens, self.out_features)

    def extra_repr(self) -> str:
        return (f"num_maps={self.num_maps}, in_features={self.in_features}, "
                f"out_features={self.out_features}, rank={self.rank}, alpha={self.alpha}")


def tensor_lora_parameter_count(num_maps: int, in_features: int, out_features: int, rank: int) -> int:
    M, R = num_maps, rank
    return M * M * R + M * in_features * R * R + M * out_features * R
