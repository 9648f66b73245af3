"""One FLUX double-stream and one single-stream block with LumiX applied.

The functions drive the block's own sub-modules (the attribute names the reference FLUX code and
ComfyUI share) in the same order and with the same operations as ComfyUI's plain forward, so that
with no adapters and query broadcast off the result is bit-identical to it. LumiX adds three things:

* Tensor-LoRA K/V deltas, computed from the modulated input and added to the normed K and to V;
* query broadcast: inside each group of M maps, the query of the source map replaces every query;
* a Tensor-LoRA delta on the attention (double) or linear2 (single) output, before the gate.

`lora_strength` (None: each adapter's own `strength`) scales both adapters for this call.
`attention(q, k, v, pe, mask)` is supplied by the caller ([B, H, L, D] in, [B, L, H*D] out, RoPE
applied inside) so that the host's attention backends and masks keep working.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .maps import SOURCE_MAP_INDEX, check_grouped_batch
from .tensor_lora import TensorLoRA

AttentionFn = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]], Tensor]


def broadcast_source_query(q: Tensor, maps_per_scene: int, source_map: int = SOURCE_MAP_INDEX) -> Tensor:
    """Replace the query of every map in each group by the query of the source map.

    q: [k*M, ...] with map index fastest. For one scene the result is a view of q (batch stride
    0, nothing copied); from two scenes on one batch stride cannot express it, so it is a copy.
    """
    if not 0 <= source_map < maps_per_scene:
        raise ValueError(f"source map index {source_map} is outside 0..{maps_per_scene - 1}")
    scenes = check_grouped_batch(q.shape[0], maps_per_scene)
    grouped = q.view(scenes, maps_per_scene, *q.shape[1:])
    return grouped[:, source_map:source_map + 1].expand_as(grouped).reshape(q.shape)


def _modulate(x: Tensor, mod) -> Tensor:
    # Same fused op as ComfyUI's apply_mod, hence the same bits.
    return torch.addcmul(mod.shift, x, 1 + mod.scale)


def _split_heads(t: Tensor, num_heads: int) -> Tensor:
    """[B, L, H*D] -> [B, H, L, D]."""
    return t.view(t.shape[0], t.shape[1], num_heads, -1).transpose(1, 2)


def _recording(*tensors: Tensor) -> bool:
    """Whether autograd records ops on these tensors (then nothing is updated in place)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _add(t: Tensor, delta: Tensor) -> Tensor:
    """t + delta, in place where autograd does not record it (same bits, one tensor less).

    Out of place while recording: v is a view of the qkv projection, whose q and k parts the
    QK-norm saved for backward, and an in-place add would invalidate them.
    """
    delta = delta.to(t.dtype)
    if _recording(t, delta):
        return t + delta
    return t.add_(delta)


def _add_kv_delta(k: Tensor, v: Tensor, kv_lora: TensorLoRA, modulated: Tensor, num_heads: int, strength):
    delta_k, delta_v = kv_lora(modulated, strength).chunk(2, dim=-1)
    return _add(k, _split_heads(delta_k, num_heads)), _add(v, _split_heads(delta_v, num_heads))


def _check_grouping(batch: int, maps_per_scene: int, query_broadcast: bool, *adapters) -> None:
    if query_broadcast or any(a is not None for a in adapters):
        check_grouped_batch(batch, maps_per_scene)


def double_block_forward(
    block,
    img: Tensor,
    txt: Tensor,
    vec: Tensor,
    pe: Optional[Tensor],
    attention: AttentionFn,
    *,
    maps_per_scene: int,
    source_map: int = SOURCE_MAP_INDEX,
    query_broadcast: bool = True,
    kv_lora: Optional[TensorLoRA] = None,
    proj_lora: Optional[TensorLoRA] = None,
    attn_mask: Optional[Tensor] = None,
    lora_strength: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """FLUX double-stream block; returns (img, txt). Only the image stream is touched by LumiX."""
    _check_grouping(img.shape[0], maps_per_scene, query_broadcast, kv_lora, proj_lora)
    heads = block.num_heads
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)

    # Intermediates are dropped as soon as they are used (as ComfyUI 0.8's own blocks do), so the
    # patched block's peak memory stays that of the plain one.
    img_modulated = _modulate(block.img_norm1(img), img_mod1)
    img_qkv = block.img_attn.qkv(img_modulated)
    img_q, img_k, img_v = img_qkv.view(img_qkv.shape[0], img_qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    del img_qkv
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    if kv_lora is not None:
        img_k, img_v = _add_kv_delta(img_k, img_v, kv_lora, img_modulated, heads, lora_strength)
    del img_modulated
    if query_broadcast:
        img_q = broadcast_source_query(img_q, maps_per_scene, source_map)

    txt_modulated = _modulate(block.txt_norm1(txt), txt_mod1)
    txt_qkv = block.txt_attn.qkv(txt_modulated)
    del txt_modulated
    txt_q, txt_k, txt_v = txt_qkv.view(txt_qkv.shape[0], txt_qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    del txt_qkv
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    q = torch.cat((txt_q, img_q), dim=2)
    del txt_q, img_q
    k = torch.cat((txt_k, img_k), dim=2)
    del txt_k, img_k
    v = torch.cat((txt_v, img_v), dim=2)
    del txt_v, img_v
    attn = attention(q, k, v, pe, attn_mask)
    del q, k, v
    txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
    del attn

    img_out = block.img_attn.proj(img_attn)
    del img_attn
    if proj_lora is not None:
        img_out = _add(img_out, proj_lora(img_out, lora_strength))
    # The first residual add makes a new tensor (the block's input stays as the caller gave it, for
    # wrappers that keep it); the second adds into that one where autograd does not record.
    img = img + img_out * img_mod1.gate
    del img_out
    img = _add(img, block.img_mlp(_modulate(block.img_norm2(img), img_mod2)) * img_mod2.gate)

    txt = txt + block.txt_attn.proj(txt_attn) * txt_mod1.gate
    del txt_attn
    txt = _add(txt, block.txt_mlp(_modulate(block.txt_norm2(txt), txt_mod2)) * txt_mod2.gate)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def single_block_forward(
    block,
    x: Tensor,
    vec: Tensor,
    pe: Optional[Tensor],
    attention: AttentionFn,
    *,
    maps_per_scene: int,
    source_map: int = SOURCE_MAP_INDEX,
    query_broadcast: bool = True,
    kv_lora: Optional[TensorLoRA] = None,
    proj_lora: Optional[TensorLoRA] = None,
    attn_mask: Optional[Tensor] = None,
    lora_strength: Optional[float] = None,
) -> Tensor:
    """FLUX single-stream block over the joint [text, image] sequence; every token takes part."""
    _check_grouping(x.shape[0], maps_per_scene, query_broadcast, kv_lora, proj_lora)
    heads = block.num_heads
    mod, _ = block.modulation(vec)
    modulated = _modulate(block.pre_norm(x), mod)
    qkv, mlp = torch.split(block.linear1(modulated), [3 * block.hidden_size, block.mlp_hidden_dim], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    del qkv
    q, k = block.norm(q, k, v)
    if kv_lora is not None:
        k, v = _add_kv_delta(k, v, kv_lora, modulated, heads, lora_strength)
    del modulated
    if query_broadcast:
        q = broadcast_source_query(q, maps_per_scene, source_map)

    attn = attention(q, k, v, pe, attn_mask)
    del q, k, v
    mlp = block.mlp_act(mlp)  # rebinding frees linear1's output (q, k and v are gone) before the cat
    output = block.linear2(torch.cat((attn, mlp), 2))
    del attn, mlp
    if proj_lora is not None:
        output = _add(output, proj_lora(output, lora_strength))
    x = x + output * mod.gate  # a new tensor: the block's input stays as the caller gave it
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x
