"""Tensor LoRA: one low-rank adapter per projection that mixes information across the M maps.

delta_i = s * w * sum_j sum_r sum_q sum_u x_j[l,u] G2[i,u,r,q] G1[i,j,q] G3[i,o,r]

G1 is merged into G2 first (W[j,u,i,r] = sum_q G1[i,j,q] G2[i,u,r,q]), so the forward is one
[L, M*d_in] x [M*d_in, M*R] contraction and one [M, L, R] x [M, R, d_out] product. Nothing of
size [M, M, L, d_out] (what the reference contraction order builds) is ever allocated.

The merged weight (and G3 in the compute dtype) is cached per (device, dtype, scale) and per
version of the factors, so inference merges once instead of once per call. The cache is bypassed
where autograd must see the factors (grad enabled and a factor requiring grad: training, which
also drops any cached weights, since the optimiser is about to change the factors) and under
torch.compile (the merge is then part of the compiled graph), and dropped whenever the module
is moved or cast (`_apply`), so an offload frees it together with the factors.
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
        self._weights_cache = None  # (key, merged input weight, up weight)
        self.reset_parameters()

    @classmethod
    def from_factors(cls, G1: torch.Tensor, G2: torch.Tensor, G3: torch.Tensor, alpha: float | None = None,
                     dtype: torch.dtype | None = None) -> "TensorLoRA":
        """A frozen adapter holding the given factors themselves (no copy where `dtype` is theirs).

        The loader uses this so that a checkpoint's tensors become the adapter's one copy.
        """
        if G1.ndim != 3 or G2.ndim != 4 or G3.ndim != 3:
            raise ValueError(f"factor shapes G1 {tuple(G1.shape)}, G2 {tuple(G2.shape)}, G3 {tuple(G3.shape)}: "
                             "expected G1 [M,M,R], G2 [M,d_in,R,R], G3 [M,d_out,R]")
        module = cls(G2.shape[0], G2.shape[1], G3.shape[1], G1.shape[2], alpha=alpha, device="meta")
        for name, tensor in (("G1", G1), ("G2", G2), ("G3", G3)):
            tensor = tensor.detach().to(dtype or tensor.dtype)
            if tuple(tensor.shape) != tuple(getattr(module, name).shape):
                raise ValueError(f"factor {name} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(getattr(module, name).shape)} from the other factors")
            setattr(module, name, nn.Parameter(tensor, requires_grad=False))
        return module

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

    def merged_input_weight(self, dtype: torch.dtype, strength: float | None = None,
                            device: torch.device | str | None = None) -> torch.Tensor:
        """[M_in, d_in, M_out * R]: G1 folded into G2, with the scale, in `dtype` (on `device`).

        Merged in float32 (or float64) whatever the storage and compute dtypes, so that bf16/fp16
        inference rounds once instead of twice.
        """
        acc = torch.float64 if self.G2.dtype == torch.float64 else torch.float32
        device = self.G2.device if device is None else device
        w = torch.einsum("ijq,iurq->juir", self.G1.to(device=device, dtype=acc),
                         self.G2.to(device=device, dtype=acc)) * self.scale(strength)
        return w.reshape(self.num_maps, self.in_features, self.num_maps * self.rank).to(dtype)

    def cached_weights_bytes(self, dtype: torch.dtype) -> int:
        """Upper bound of what the inference cache holds in `dtype`: merged weight plus G3."""
        M, R = self.num_maps, self.rank
        return (M * self.in_features * M * R + M * R * self.out_features) * torch.empty((), dtype=dtype).element_size()

    def _weights(self, dtype: torch.dtype, device: torch.device, strength: float | None):
        """(merged input weight, up weight [M_out, R, d_out]) for a forward in `dtype` on `device`."""
        factors = (self.G1, self.G2, self.G3)

        def compute():
            up = self.G3.to(device=device, dtype=dtype).transpose(1, 2)
            return self.merged_input_weight(dtype, strength, device), up

        if torch.compiler.is_compiling():
            return compute()
        if torch.is_grad_enabled() and any(p.requires_grad for p in factors):
            # Training: the factors are about to change (the optimiser step after this backward), so
            # weights cached by an inference pass in between (validation under no_grad) go now.
            self._weights_cache = None
            return compute()
        # _version moves on every in-place update (an optimiser step); inference tensors have none,
        # and cannot be updated outside inference mode. Weights made in inference mode cannot be
        # saved for backward, hence the mode in the key.
        key = (device, dtype, self.scale(strength), torch.is_inference_mode_enabled(),
               tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in factors))
        cache = self._weights_cache
        if cache is None or cache[0] != key:
            self._weights_cache = None  # release the stale weights before making new ones
            cache = self._weights_cache = (key, *compute())
        return cache[1], cache[2]

    def _apply(self, fn, recurse=True):
        # Every move or cast (module.to, .cuda, .half, ComfyUI's load/offload) drops the cache,
        # so no copy outlives the factors on a device they left.
        self._weights_cache = None
        return super()._apply(fn, recurse)

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
        weight, up = self._weights(x.dtype, x.device, strength)
        # [k, M_in, L, d_in] @ [M_in, d_in, M_out*R] then a sum over the input map: the same
        # contraction as [L, M*d_in] x [M*d_in, M*R] without copying x into that layout.
        hidden = torch.matmul(x.view(scenes, M, tokens, self.in_features), weight).sum(dim=1)
        hidden = hidden.view(scenes, tokens, M, R).transpose(1, 2)  # [k, M_out, L, R]
        return torch.matmul(hidden, up).reshape(batch, tokens, self.out_features)

    def extra_repr(self) -> str:
        return (f"num_maps={self.num_maps}, in_features={self.in_features}, "
                f"out_features={self.out_features}, rank={self.rank}, alpha={self.alpha}")


def tensor_lora_parameter_count(num_maps: int, in_features: int, out_features: int, rank: int) -> int:
    M, R = num_maps, rank
    return M * M * R + M * in_features * R * R + M * out_features * R
