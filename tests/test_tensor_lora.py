import math

import pytest
import torch

from lumix_core import TensorLoRA, tensor_lora_parameter_count
from tiny_flux import tensor_lora_reference


def make_lora(M, d_in, d_out, R, seed, alpha=None, dtype=torch.float64):
    lora = TensorLoRA(M, d_in, d_out, R, alpha=alpha, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (lora.G1, lora.G2, lora.G3):
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    return lora


def test_parameter_names_and_shapes():
    lora = TensorLoRA(5, 12, 24, 3)
    assert dict((n, tuple(p.shape)) for n, p in lora.named_parameters()) == {
        "G1": (5, 5, 3), "G2": (5, 12, 3, 3), "G3": (5, 24, 3)}
    assert lora.strength == 1.0 and lora.alpha == 1.0


@pytest.mark.parametrize("M,R,k", [(5, 8, 1), (5, 4, 2), (3, 2, 3), (1, 1, 2), (2, 5, 1)])
def test_matches_term_by_term_sum_float64(M, R, k):
    d_in, d_out, L = 7, 10, 6
    lora = make_lora(M, d_in, d_out, R, seed=M * 10 + R, alpha=2.5)
    lora.strength = 0.7
    x = torch.randn(k * M, L, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    expected = tensor_lora_reference(x, lora.G1.detach(), lora.G2.detach(), lora.G3.detach(), M,
                                     2.5 / math.sqrt(R) * 0.7)
    got = lora(x)
    assert got.shape == (k * M, L, d_out) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_k_groups_equal_k_separate_calls():
    M = 5
    lora = make_lora(M, 8, 16, 4, seed=3)
    x = torch.randn(3 * M, 9, 8, dtype=torch.float64)
    together = lora(x)
    apart = torch.cat([lora(x[g * M:(g + 1) * M]) for g in range(3)])
    torch.testing.assert_close(together, apart, rtol=1e-12, atol=1e-12)


def test_maps_mix_only_within_a_group():
    M = 5
    lora = make_lora(M, 8, 8, 2, seed=4)
    x = torch.randn(2 * M, 3, 8, dtype=torch.float64)
    before = lora(x)
    x2 = x.clone()
    x2[M + 1] += 1.0  # a map of the second scene
    after = lora(x2)
    assert torch.equal(before[:M], after[:M])
    assert (after[M:] - before[M:]).abs().amax(dim=(1, 2)).min() > 0  # every map of scene 2 moved


def test_zero_g3_and_zero_strength_give_zero_delta():
    lora = make_lora(5, 6, 12, 3, seed=5)
    x = torch.randn(5, 4, 6, dtype=torch.float64)
    assert lora(x).abs().max() > 0
    lora.strength = 0.0
    assert torch.equal(lora(x), torch.zeros(5, 4, 12, dtype=torch.float64))
    lora.strength = 1.0
    with torch.no_grad():
        lora.G3.zero_()
    assert torch.equal(lora(x), torch.zeros(5, 4, 12, dtype=torch.float64))


def test_fresh_adapter_is_a_no_op_but_trainable():
    lora = TensorLoRA(5, 6, 6, 2)
    x = torch.randn(5, 3, 6)
    assert torch.equal(lora(x), torch.zeros_like(x))
    lora(x).sum().backward()
    assert lora.G3.grad is not None and lora.G3.grad.abs().max() > 0


def test_wrong_batch_names_maps_and_batch():
    lora = TensorLoRA(5, 6, 6, 2)
    with pytest.raises(ValueError, match=r"7 entries.*multiple of 5"):
        lora(torch.randn(7, 3, 6))
    with pytest.raises(ValueError, match=r"\[batch, tokens, 6\]"):
        lora(torch.randn(5, 3, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_output_in_input_dtype_close_to_float64(dtype):
    lora64 = make_lora(5, 16, 32, 4, seed=6)
    lora = TensorLoRA(5, 16, 32, 4)  # float32 factors, low-precision input: the node case
    lora.load_state_dict({k: v.float() for k, v in lora64.state_dict().items()})
    x = torch.randn(5, 8, 16, dtype=torch.float64)
    got = lora(x.to(dtype))
    assert got.dtype == dtype
    expected = lora64(x)
    tol = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    assert ((got.double() - expected).abs().max() / expected.abs().max()) < tol


def test_parameter_counts_match_the_paper():
    per_block = lambda R: (tensor_lora_parameter_count(5, 3072, 6144, R)
                           + tensor_lora_parameter_count(5, 3072, 3072, R))
    assert per_block(8) == 2_335_120
    assert per_block(4) == 676_040
    # SPEC.md gives 4,978,080 for R=12; G1+G2+G3 at that rank sum to 4,977,240 (the formula that
    # reproduces R=4 and R=8 exactly). Both round to the paper's 4.98M, which is what is checked.
    assert round(per_block(12) / 1e6, 2) == 4.98
    assert round(per_block(8) * 57 / 1e6, 1) == 133.1
    lora = TensorLoRA(5, 30, 60, 8)
    assert sum(p.numel() for p in lora.parameters()) == tensor_lora_parameter_count(5, 30, 60, 8)


def test_never_allocates_the_pairwise_map_tensor(monkeypatch):
    """No tensor with M*M*L*d_out elements (the reference's intermediate) is created."""
    M, L, d_in, d_out = 5, 64, 32, 96
    lora = TensorLoRA(M, d_in, d_out, 4)
    x = torch.randn(M, L, d_in)
    sizes = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel())
            return out

    with Spy():
        lora(x)
    assert sizes and max(sizes) <= M * L * d_out
    assert M * M * L * d_out not in sizes


def test_strength_argument_overrides_the_attribute_for_one_call():
    lora = make_lora(5, 6, 6, 2, seed=8)
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    full = lora(x)
    torch.testing.assert_close(lora(x, -0.5), -0.5 * full, rtol=1e-12, atol=1e-12)
    assert lora.strength == 1.0 and torch.equal(lora(x), full)
