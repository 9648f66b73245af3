"""Test-only FLUX pieces written independently of lumix_core: plain blocks, RoPE attention and
slow, obviously correct LumiX references (term-by-term Tensor LoRA, per-group query broadcast)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(dim) * 0.1 + 1.0)

    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=-1, keepdim=True) + 1e-6) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.is_double = double
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        out = self.lin(F.silu(vec[:, None, :])).chunk(self.multiplier, dim=-1)
        first = SimpleNamespace(shift=out[0], scale=out[1], gate=out[2])
        second = SimpleNamespace(shift=out[3], scale=out[4], gate=out[5]) if self.is_double else None
        return first, second


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)


def rope_attention(q, k, v, pe, mask=None):
    """RoPE (pe: [B or 1, 1, L, D/2, 2, 2]) then scaled dot-product attention, heads merged."""
    if pe is not None:
        def rot(t):
            t2 = t.float().reshape(*t.shape[:-1], -1, 1, 2)
            return (pe[..., 0] * t2[..., 0] + pe[..., 1] * t2[..., 1]).reshape(t.shape).type_as(v)
        q, k = rot(q), rot(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def make_pe(tokens, head_dim, batch=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(batch, 1, tokens, head_dim // 2, generator=g, dtype=torch.float64) * 6.28
    c, s = torch.cos(angles), torch.sin(angles)
    return torch.stack([c, -s, s, c], dim=-1).reshape(batch, 1, tokens, head_dim // 2, 2, 2).to(dtype)


class DoubleBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio=2.0):
        super().__init__()
        mlp = int(hidden * mlp_ratio)
        self.num_heads, self.hidden_size = heads, hidden
        self.img_mod, self.txt_mod = Modulation(hidden, True), Modulation(hidden, True)
        self.img_norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.img_norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.txt_norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.img_attn, self.txt_attn = SelfAttention(hidden, heads), SelfAttention(hidden, heads)
        self.img_mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(approximate="tanh"), nn.Linear(mlp, hidden))
        self.txt_mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(approximate="tanh"), nn.Linear(mlp, hidden))

    def forward(self, img, txt, vec, pe, attention=rope_attention, hooks=None):
        """The plain FLUX double block (ComfyUI's op order). `hooks` lets the slow LumiX reference
        edit img q/k/v and the projection output: hooks.qkv(q, k, v, modulated), hooks.proj(out)."""
        im1, im2 = self.img_mod(vec)
        tm1, tm2 = self.txt_mod(vec)
        img_m = torch.addcmul(im1.shift, self.img_norm1(img), 1 + im1.scale)
        qkv = self.img_attn.qkv(img_m)
        iq, ik, iv = qkv.view(qkv.shape[0], qkv.shape[1], 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        iq, ik = self.img_attn.norm(iq, ik, iv)
        if hooks:
            iq, ik, iv = hooks.qkv(iq, ik, iv, img_m)
        txt_m = torch.addcmul(tm1.shift, self.txt_norm1(txt), 1 + tm1.scale)
        qkv = self.txt_attn.qkv(txt_m)
        tq, tk, tv = qkv.view(qkv.shape[0], qkv.shape[1], 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        tq, tk = self.txt_attn.norm(tq, tk, tv)
        attn = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe, None)
        t_attn, i_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        out = self.img_attn.proj(i_attn)
        if hooks:
            out = hooks.proj(out)
        img = img + out * im1.gate
        img = img + self.img_mlp(torch.addcmul(im2.shift, self.img_norm2(img), 1 + im2.scale)) * im2.gate
        txt = txt + self.txt_attn.proj(t_attn) * tm1.gate
        txt = txt + self.txt_mlp(torch.addcmul(tm2.shift, self.txt_norm2(txt), 1 + tm2.scale)) * tm2.gate
        return img, txt


class SingleBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio=2.0):
        super().__init__()
        self.num_heads, self.hidden_size = heads, hidden
        self.mlp_hidden_dim = int(hidden * mlp_ratio)
        self.linear1 = nn.Linear(hidden, 3 * hidden + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden_dim, hidden)
        self.norm = QKNorm(hidden // heads)
        self.pre_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden, False)

    def forward(self, x, vec, pe, attention=rope_attention, hooks=None):
        mod, _ = self.modulation(vec)
        xm = torch.addcmul(mod.shift, self.pre_norm(x), 1 + mod.scale)
        qkv, mlp = torch.split(self.linear1(xm), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.norm(q, k, v)
        if hooks:
            q, k, v = hooks.qkv(q, k, v, xm)
        out = self.linear2(torch.cat((attention(q, k, v, pe, None), self.mlp_act(mlp)), 2))
        if hooks:
            out = hooks.proj(out)
        return x + out * mod.gate


def randomize_(module: nn.Module, seed: int, std: float = 0.2) -> nn.Module:
    """Random weights everywhere (biases included) so every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)
    return module


def tensor_lora_reference(x, G1, G2, G3, num_maps, scale):
    """The spec's sum written term by term, one group at a time: slow and obviously right."""
    B, L, _ = x.shape
    out = torch.zeros(B, L, G3.shape[1], dtype=x.dtype)
    for g in range(B // num_maps):
        for i in range(num_maps):
            acc = torch.zeros(L, G3.shape[1], dtype=x.dtype)
            for j in range(num_maps):
                xj = x[g * num_maps + j]
                for r in range(G2.shape[2]):
                    for q in range(G2.shape[3]):
                        # x_j[l,u] G2[i,u,r,q] summed over u, times G1[i,j,q], outer G3[i,:,r]
                        acc += torch.outer(xj @ G2[i, :, r, q], G3[i, :, r]) * G1[i, j, q]
            out[g * num_maps + i] = scale * acc
    return out


class LumiXHooks:
    """The slow reference of LumiX inside a block: term-by-term adapters, per-group query loop."""

    def __init__(self, num_maps, source, heads, kv=None, proj=None, scale=1.0, broadcast=True):
        self.M, self.src, self.heads = num_maps, source, heads
        self.kv, self.proj_f, self.scale, self.broadcast = kv, proj, scale, broadcast

    def qkv(self, q, k, v, modulated):
        if self.kv is not None:
            delta = tensor_lora_reference(modulated, *self.kv, self.M, self.scale)
            hid = delta.shape[-1] // 2
            dk = delta[..., :hid].reshape(delta.shape[0], delta.shape[1], self.heads, -1).permute(0, 2, 1, 3)
            dv = delta[..., hid:].reshape(delta.shape[0], delta.shape[1], self.heads, -1).permute(0, 2, 1, 3)
            k, v = k + dk, v + dv
        if self.broadcast:
            q = q.clone()
            for g in range(q.shape[0] // self.M):
                for i in range(self.M):
                    q[g * self.M + i] = q[g * self.M + self.src]
        return q, k, v

    def proj(self, out):
        if self.proj_f is None:
            return out
        return out + tensor_lora_reference(out, *self.proj_f, self.M, self.scale)


def random_factors(M, d_in, d_out, R, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, M, R, generator=g, dtype=dtype),
            torch.randn(M, d_in, R, R, generator=g, dtype=dtype) / math.sqrt(d_in),
            torch.randn(M, d_out, R, generator=g, dtype=dtype) * 0.5)


def official_state_dict(hidden=16, M=5, R=3, double=2, single=3, prefix="", seed=0, scale=1.0):
    """Tensors in the released key layout, written here independently of lumix_core."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for kind, n in (("double_blocks", double), ("single_blocks", single)):
        for i in range(n):
            for adapter, d_out in (("kv_tt_lora", 2 * hidden), ("proj_tt_lora", hidden)):
                stem = f"{prefix}{kind}.{i}.processor.{adapter}"
                sd[f"{stem}.G1"] = torch.randn(M, M, R, generator=g) * scale
                sd[f"{stem}.G2"] = torch.randn(M, hidden, R, R, generator=g) * scale
                sd[f"{stem}.G3"] = torch.randn(M, d_out, R, generator=g) * scale
    return sd
