import pytest
import torch

from lumix_core import (
    TensorLoRA, broadcast_source_query, double_block_forward, single_block_forward,
)
from tiny_flux import DoubleBlock, LumiXHooks, SingleBlock, make_pe, randomize_, random_factors, rope_attention

HIDDEN, HEADS, TXT, IMG, M = 32, 4, 3, 8, 5


def inputs(scenes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = scenes * M
    img = torch.randn(B, IMG, HIDDEN, generator=g, dtype=torch.float64).to(dtype)
    txt = torch.randn(B, TXT, HIDDEN, generator=g, dtype=torch.float64).to(dtype)
    vec = torch.randn(B, HIDDEN, generator=g, dtype=torch.float64).to(dtype)
    pe = make_pe(TXT + IMG, HIDDEN // HEADS, dtype=torch.float32 if dtype != torch.float64 else torch.float64)
    return img, txt, vec, pe


def lora_from(factors, alpha=None):
    G1, G2, G3 = factors
    lora = TensorLoRA(G1.shape[0], G2.shape[1], G3.shape[1], G1.shape[2], alpha=alpha, dtype=G1.dtype)
    with torch.no_grad():
        lora.G1.copy_(G1), lora.G2.copy_(G2), lora.G3.copy_(G3)
    return lora


def blocks(dtype=torch.float32):
    return (randomize_(DoubleBlock(HIDDEN, HEADS), 1).to(dtype), randomize_(SingleBlock(HIDDEN, HEADS), 2).to(dtype))


def test_plain_equality_bit_for_bit_float32():
    dbl, sgl = blocks()
    img, txt, vec, pe = inputs(2)
    with torch.no_grad():
        ref_img, ref_txt = dbl(img, txt, vec, pe)
        got_img, got_txt = double_block_forward(dbl, img, txt, vec, pe, rope_attention, maps_per_scene=M,
                                                query_broadcast=False)
        x = torch.cat((txt, img), 1)
        ref_x = sgl(x, vec, pe)
        got_x = single_block_forward(sgl, x, vec, pe, rope_attention, maps_per_scene=M, query_broadcast=False)
    assert torch.equal(got_img, ref_img) and torch.equal(got_txt, ref_txt)
    assert torch.equal(got_x, ref_x)


def test_plain_path_accepts_any_batch_when_lumix_is_off():
    dbl, _ = blocks()
    img, txt, vec, pe = inputs(1)
    with torch.no_grad():
        out, _ = double_block_forward(dbl, img[:3], txt[:3], vec[:3], pe, rope_attention, maps_per_scene=M,
                                      query_broadcast=False)
    assert out.shape == (3, IMG, HIDDEN)


@pytest.mark.parametrize("source", [2, 0, 4])
def test_full_lumix_matches_slow_reference_float64(source):
    dbl, sgl = blocks(torch.float64)
    img, txt, vec, pe = inputs(2, torch.float64)
    kv_d, proj_d = random_factors(M, HIDDEN, 2 * HIDDEN, 3, 10), random_factors(M, HIDDEN, HIDDEN, 3, 11)
    kv_s, proj_s = random_factors(M, HIDDEN, 2 * HIDDEN, 3, 12), random_factors(M, HIDDEN, HIDDEN, 3, 13)
    scale = 1.7 / 3 ** 0.5
    with torch.no_grad():
        ref_img, ref_txt = dbl(img, txt, vec, pe, hooks=LumiXHooks(M, source, HEADS, kv_d, proj_d, scale))
        got_img, got_txt = double_block_forward(
            dbl, img, txt, vec, pe, rope_attention, maps_per_scene=M, source_map=source,
            kv_lora=lora_from(kv_d, 1.7), proj_lora=lora_from(proj_d, 1.7))
        x = torch.cat((txt, img), 1)
        ref_x = sgl(x, vec, pe, hooks=LumiXHooks(M, source, HEADS, kv_s, proj_s, scale))
        got_x = single_block_forward(sgl, x, vec, pe, rope_attention, maps_per_scene=M, source_map=source,
                                     kv_lora=lora_from(kv_s, 1.7), proj_lora=lora_from(proj_s, 1.7))
    torch.testing.assert_close(got_img, ref_img, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_txt, ref_txt, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_x, ref_x, rtol=1e-10, atol=1e-10)
    # and LumiX really changed the result
    assert (got_img - dbl(img, txt, vec, pe)[0]).abs().max() > 1e-3


def test_only_one_adapter_each_way():
    dbl, sgl = blocks(torch.float64)
    img, txt, vec, pe = inputs(1, torch.float64)
    kv = random_factors(M, HIDDEN, 2 * HIDDEN, 2, 20)
    proj = random_factors(M, HIDDEN, HIDDEN, 2, 21)
    s = 1 / 2 ** 0.5
    with torch.no_grad():
        got, _ = double_block_forward(dbl, img, txt, vec, pe, rope_attention, maps_per_scene=M,
                                      query_broadcast=False, kv_lora=lora_from(kv))
        ref, _ = dbl(img, txt, vec, pe, hooks=LumiXHooks(M, 2, HEADS, kv, None, s, broadcast=False))
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
        x = torch.cat((txt, img), 1)
        got = single_block_forward(sgl, x, vec, pe, rope_attention, maps_per_scene=M, query_broadcast=False,
                                   proj_lora=lora_from(proj))
        ref = sgl(x, vec, pe, hooks=LumiXHooks(M, 2, HEADS, None, proj, s, broadcast=False))
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


class RecordingAttention:
    def __init__(self):
        self.queries = []

    def __call__(self, q, k, v, pe, mask):
        self.queries.append(q.clone())
        return rope_attention(q, k, v, pe, mask)


@pytest.mark.parametrize("kind", ["double", "single"])
def test_query_broadcast_query_depends_only_on_source_map(kind):
    dbl, sgl = blocks()
    img, txt, vec, pe = inputs(1)

    def run(img_in):
        rec = RecordingAttention()
        with torch.no_grad():
            if kind == "double":
                double_block_forward(dbl, img_in, txt, vec, pe, rec, maps_per_scene=M, source_map=2)
            else:
                single_block_forward(sgl, torch.cat((txt, img_in), 1), vec, pe, rec, maps_per_scene=M, source_map=2)
        return rec.queries[0]

    base = run(img)
    q_img = base[:, :, TXT:]  # image-token queries
    for i in range(M):
        assert torch.equal(q_img[i], q_img[2])
    changed = img.clone()
    # random edits (a constant shift would vanish in the block's LayerNorm)
    changed[0] += torch.randn(IMG, HIDDEN)  # albedo: not the source
    changed[4] += torch.randn(IMG, HIDDEN)  # normal: not the source
    assert torch.equal(run(changed)[:, :, TXT:], q_img)
    source_changed = img.clone()
    source_changed[2] += torch.randn(IMG, HIDDEN)
    assert not torch.allclose(run(source_changed)[:, :, TXT:], q_img)
    # double block: text queries stay per map (each map has its own vec here)
    if kind == "double":
        assert not torch.equal(base[0, :, :TXT], base[1, :, :TXT])
    else:
        assert torch.equal(base[0], base[2])


def test_groups_are_independent():
    dbl, sgl = blocks(torch.float64)
    img, txt, vec, pe = inputs(3, torch.float64)
    kv = lora_from(random_factors(M, HIDDEN, 2 * HIDDEN, 2, 30))
    proj = lora_from(random_factors(M, HIDDEN, HIDDEN, 2, 31))
    kw = dict(maps_per_scene=M, kv_lora=kv, proj_lora=proj)
    with torch.no_grad():
        whole = double_block_forward(dbl, img, txt, vec, pe, rope_attention, **kw)[0]
        parts = torch.cat([double_block_forward(dbl, img[s:s + M], txt[s:s + M], vec[s:s + M], pe, rope_attention,
                                                **kw)[0] for s in range(0, 3 * M, M)])
    torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)


def test_bad_grouping_and_source_errors():
    dbl, _ = blocks()
    img, txt, vec, pe = inputs(1)
    with pytest.raises(ValueError, match="not a multiple of 5"):
        double_block_forward(dbl, img[:4], txt[:4], vec[:4], pe, rope_attention, maps_per_scene=M)
    with pytest.raises(ValueError, match="outside 0..4"):
        broadcast_source_query(torch.zeros(5, 2), 5, 7)


def test_broadcast_source_query_shape_and_values():
    q = torch.arange(10 * 3, dtype=torch.float32).view(10, 3)
    out = broadcast_source_query(q, 5, 1)
    assert torch.equal(out[:5], q[1].expand(5, 3)) and torch.equal(out[5:], q[6].expand(5, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_to_float32(dtype):
    dbl32, _ = blocks()
    dbl = blocks(dtype)[0]
    img, txt, vec, pe = inputs(1)
    kv = lora_from(tuple(t.float() for t in random_factors(M, HIDDEN, 2 * HIDDEN, 2, 40)))
    with torch.no_grad():
        ref = double_block_forward(dbl32, img, txt, vec, pe, rope_attention, maps_per_scene=M, kv_lora=kv)[0]
        got = double_block_forward(dbl, img.to(dtype), txt.to(dtype), vec.to(dtype), pe, rope_attention,
                                   maps_per_scene=M, kv_lora=kv)[0]
    assert got.dtype == dtype
    assert (got.float() - ref).abs().max() / ref.abs().max() < 0.05


def test_lora_strength_scales_both_adapters():
    dbl, _ = blocks(torch.float64)
    img, txt, vec, pe = inputs(1, torch.float64)
    kv_f, proj_f = random_factors(M, HIDDEN, 2 * HIDDEN, 2, 50), random_factors(M, HIDDEN, HIDDEN, 2, 51)
    with torch.no_grad():
        got = double_block_forward(dbl, img, txt, vec, pe, rope_attention, maps_per_scene=M,
                                   kv_lora=lora_from(kv_f), proj_lora=lora_from(proj_f), lora_strength=0.3)[0]
        ref = dbl(img, txt, vec, pe, hooks=LumiXHooks(M, 2, HEADS, kv_f, proj_f, 0.3 / 2 ** 0.5))[0]
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
