"""The Tensor-LoRA weight cache and the in-place block adds: same numbers, same gradients, invalidation."""
import math

import pytest
import torch

from lumix_core import TensorLoRA, broadcast_source_query, double_block_forward, single_block_forward
from tiny_flux import (DoubleBlock, LumiXHooks, SingleBlock, make_pe, randomize_, random_factors, rope_attention,
                       tensor_lora_reference)

M, D_IN, D_OUT, R = 5, 12, 24, 3


def adapter(dtype=torch.float32, seed=0, alpha=1.5):
    G1, G2, G3 = random_factors(M, D_IN, D_OUT, R, seed)
    return TensorLoRA.from_factors(G1, G2, G3, alpha=alpha, dtype=dtype)


def reference64(lora, x, strength=1.0):
    """The spec's sum in float64 from the module's current factors, independent of the cache."""
    G1, G2, G3 = (getattr(lora, n).detach().double() for n in ("G1", "G2", "G3"))
    return tensor_lora_reference(x.double(), G1, G2, G3, M, lora.alpha / math.sqrt(R) * strength)


def x_input(scenes=2, dtype=torch.float32, seed=1):
    return torch.randn(scenes * M, 7, D_IN, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_from_factors_keeps_the_given_tensors_as_the_one_copy():
    G1, G2, G3 = (t.float() for t in random_factors(M, D_IN, D_OUT, R, 0))
    lora = TensorLoRA.from_factors(G1, G2, G3, alpha=2.0)
    assert lora.G2.data_ptr() == G2.data_ptr() and lora.G3.data_ptr() == G3.data_ptr()
    assert not any(p.requires_grad for p in lora.parameters()) and lora.alpha == 2.0
    half = TensorLoRA.from_factors(G1, G2, G3, dtype=torch.bfloat16)
    assert half.G2.dtype == torch.bfloat16 and torch.equal(half.G2, G2.bfloat16())
    with pytest.raises(ValueError, match="G3 has shape"):
        TensorLoRA.from_factors(G1, G2, G3[:, :, :2])


def test_reuse_is_bit_identical_and_merges_once():
    lora, x = adapter(), x_input()
    with torch.no_grad():
        first = lora(x)
        cached = lora._weights_cache[1]
        again = lora(x)
        assert lora._weights_cache[1] is cached  # reused, not re-merged
        fresh = adapter()(x)  # a new module merges from scratch
    assert torch.equal(first, again) and torch.equal(first, fresh)
    torch.testing.assert_close(first.double(), reference64(lora, x), rtol=1e-5, atol=1e-5)


def test_strength_change_invalidates():
    lora, x = adapter(), x_input()
    with torch.no_grad():
        one = lora(x)
        half = lora(x, 0.5)
        lora.strength = -2.0
        minus_two = lora(x)
    torch.testing.assert_close(half.double(), reference64(lora, x, 0.5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(minus_two.double(), reference64(lora, x, -2.0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(one, half)


def test_in_place_factor_update_invalidates():
    lora, x = adapter(), x_input()
    with torch.no_grad():
        before = lora(x)
        for p in (lora.G1, lora.G2, lora.G3):  # what an optimiser step does
            p.mul_(1.25).add_(0.01)
        after = lora(x)
    torch.testing.assert_close(after.double(), reference64(lora, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_dtype_and_device_moves_drop_the_cache():
    lora, x = adapter(), x_input()
    with torch.no_grad():
        lora(x)
        assert lora._weights_cache is not None
        lora.to(torch.float64)
        assert lora._weights_cache is None
        out = lora(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference64(lora, x), rtol=1e-10, atol=1e-12)


def test_bf16_storage_merges_in_float32():
    lora, x = adapter(torch.bfloat16), x_input(dtype=torch.bfloat16)
    with torch.no_grad():
        out = lora(x)
        G1, G2 = lora.G1.float(), lora.G2.float()
        merged = torch.einsum("ijq,iurq->juir", G1, G2) * lora.scale()
        expected_w = merged.reshape(M, D_IN, M * R).bfloat16()
    assert torch.equal(lora._weights_cache[1], expected_w)  # one rounding, from the float32 merge
    assert out.dtype == torch.bfloat16
    ref = reference64(lora, x)
    assert (out.double() - ref).abs().max() <= 0.03 * ref.abs().max()


def test_gradients_match_float64_reference_and_bypass_the_cache():
    G = [t.clone().requires_grad_(True) for t in random_factors(M, D_IN, D_OUT, R, 3)]
    lora = TensorLoRA(M, D_IN, D_OUT, R, alpha=1.5, dtype=torch.float64)
    with torch.no_grad():
        for name, t in zip(("G1", "G2", "G3"), G):
            getattr(lora, name).copy_(t)
    x = x_input(dtype=torch.float64).requires_grad_(True)
    w = torch.randn(M * 2, 7, D_OUT, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        lora(x)  # a cached entry exists: training must not use it
    for step in range(2):
        got = torch.autograd.grad((lora(x) * w).sum(), (x, lora.G1, lora.G2, lora.G3))
        xr = x.detach().clone().requires_grad_(True)
        ref_out = tensor_lora_reference(xr, *G, M, lora.scale())
        ref = torch.autograd.grad((ref_out * w).sum(), (xr, *G))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        with torch.no_grad():  # an optimiser step, mirrored on the reference factors
            for p, q, g in zip((lora.G1, lora.G2, lora.G3), G, got[1:]):
                p.sub_(0.1 * g)
                q.sub_(0.1 * g)


def test_inference_mode_cache_is_not_reused_for_backward():
    lora = adapter()
    x = x_input()
    with torch.inference_mode():
        lora(x)
    xg = x.clone().requires_grad_(True)
    out = lora(xg)  # frozen factors, input needing grad: the inference-mode weights cannot be saved
    (grad,) = torch.autograd.grad(out.sum(), xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---- blocks: in-place adds and the broadcast view -------------------------------------------------

HIDDEN, HEADS, TXT, IMG = 16, 2, 3, 4


def block_case(seed=0):
    dbl = randomize_(DoubleBlock(HIDDEN, HEADS), 1).double()
    sgl = randomize_(SingleBlock(HIDDEN, HEADS), 2).double()
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(M, IMG, HIDDEN, generator=g, dtype=torch.float64)
    txt = torch.randn(M, TXT, HIDDEN, generator=g, dtype=torch.float64)
    vec = torch.randn(M, HIDDEN, generator=g, dtype=torch.float64)
    pe = make_pe(TXT + IMG, HIDDEN // HEADS, dtype=torch.float64)
    factors = [random_factors(M, HIDDEN, d, 2, s) for d, s in ((2 * HIDDEN, 5), (HIDDEN, 6), (2 * HIDDEN, 7), (HIDDEN, 8))]
    return dbl, sgl, img, txt, vec, pe, factors


def lora64(factors):
    lora = TensorLoRA(M, factors[1].shape[1], factors[2].shape[1], factors[0].shape[2], dtype=torch.float64)
    with torch.no_grad():
        for name, t in zip(("G1", "G2", "G3"), factors):
            getattr(lora, name).copy_(t)
    return lora


def test_block_gradients_with_in_place_adds_match_float64_reference():
    dbl, sgl, img, txt, vec, pe, factors = block_case()
    loras = [lora64(f) for f in factors]
    for lora in loras:
        lora.requires_grad_(True)
    img_g, txt_g = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    out_img, out_txt = double_block_forward(dbl, img_g, txt_g, vec, pe, rope_attention, maps_per_scene=M,
                                            kv_lora=loras[0], proj_lora=loras[1])
    x = torch.cat((out_txt, out_img), 1)
    out = single_block_forward(sgl, x, vec, pe, rope_attention, maps_per_scene=M, kv_lora=loras[2], proj_lora=loras[3])
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    params = [img_g, txt_g] + [p for lora in loras for p in (lora.G1, lora.G2, lora.G3)]
    got = torch.autograd.grad((out * weights).sum(), params)

    ref_factors = [[t.clone().requires_grad_(True) for t in f] for f in factors]
    img_r, txt_r = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    s = 1 / math.sqrt(2)
    r_img, r_txt = dbl(img_r, txt_r, vec, pe, hooks=LumiXHooks(M, 2, HEADS, ref_factors[0], ref_factors[1], s))
    r_out = sgl(torch.cat((r_txt, r_img), 1), vec, pe, hooks=LumiXHooks(M, 2, HEADS, ref_factors[2], ref_factors[3], s))
    ref = torch.autograd.grad((r_out * weights).sum(), [img_r, txt_r] + [t for f in ref_factors for t in f])
    torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-10)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert all(g.abs().sum() > 0 for g in got)


def test_in_place_and_recorded_paths_give_the_same_bits():
    dbl, sgl, img, txt, vec, pe, factors = block_case(seed=3)
    dbl, sgl = dbl.float(), sgl.float()
    loras = [lora64(f).float() for f in factors]
    img, txt, vec, pe = img.float(), txt.float(), vec.float(), pe.float()
    kw = dict(maps_per_scene=M, kv_lora=loras[0], proj_lora=loras[1])
    with torch.no_grad():
        fast = double_block_forward(dbl, img, txt, vec, pe, rope_attention, **kw)
        x = torch.cat((txt, img), 1)
        fast_s = single_block_forward(sgl, x, vec, pe, rope_attention, maps_per_scene=M, kv_lora=loras[2],
                                      proj_lora=loras[3])
    recorded = double_block_forward(dbl, img.clone().requires_grad_(True), txt, vec, pe, rope_attention, **kw)
    recorded_s = single_block_forward(sgl, x.clone().requires_grad_(True), vec, pe, rope_attention,
                                      maps_per_scene=M, kv_lora=loras[2], proj_lora=loras[3])
    assert torch.equal(fast[0], recorded[0].detach()) and torch.equal(fast[1], recorded[1].detach())
    assert torch.equal(fast_s, recorded_s.detach())


def test_query_broadcast_is_a_view_for_one_scene():
    q = torch.randn(M, 2, 6, 4)
    one = broadcast_source_query(q, M)
    assert one.data_ptr() == q[2].data_ptr() and one.stride(0) == 0
    assert all(torch.equal(one[i], q[2]) for i in range(M))
    two = broadcast_source_query(torch.cat((q, q + 1)), M)
    assert torch.equal(two[7], q[2] + 1) and torch.equal(two[0], q[2])


def test_a_training_forward_drops_weights_cached_by_an_inference_pass():
    """Validation under no_grad caches merged weights; the next training forward frees them (the
    optimiser is about to change the factors), and the numbers follow the changed factors."""
    lora = TensorLoRA(M, D_IN, D_OUT, R, alpha=1.5)
    with torch.no_grad():
        lora.G3.normal_(generator=torch.Generator().manual_seed(4))
    x = x_input()
    with torch.no_grad():
        lora(x)
    assert lora._weights_cache is not None
    merged = lora._weights_cache[1]
    lora(x).square().sum().backward()  # a training step's forward + backward
    assert lora._weights_cache is None and merged._version == 0
    with torch.no_grad():
        for p in lora.parameters():
            p -= 0.1 * p.grad  # the optimiser step
        got = lora(x)
    want = reference64(lora, x)
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()  # float32 against float64
