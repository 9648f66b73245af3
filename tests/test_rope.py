"""lumix_core.rope: FLUX's RoPE in plain torch ops (used while autograd records a training step)."""
import torch

from lumix_core.rope import apply_rope, apply_rope1


def rotation_matrices(angles):
    """pe laid out as FLUX builds it: [..., D/2, 2, 2] = [[cos, -sin], [sin, cos]] per pair."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angles.shape, 2, 2)


def test_rotates_every_pair_as_a_complex_multiplication():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)
    angles = torch.rand(1, 1, 7, 4, generator=g, dtype=torch.float64) * 6.3
    out = apply_rope1(x, rotation_matrices(angles))
    # independent: (x0 + i x1) * e^{i angle}, pairs adjacent in the head dimension
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(angles), angles)
    expected = torch.stack([z.real, z.imag], dim=-1).reshape(x.shape)
    assert torch.allclose(out, expected, atol=1e-12)


def test_keeps_the_input_dtype_and_rotates_q_and_k_alike():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 5, 4, generator=g).to(torch.bfloat16)
    k = torch.randn(1, 2, 5, 4, generator=g).to(torch.bfloat16)
    pe = rotation_matrices(torch.rand(1, 1, 5, 2, generator=g))
    rq, rk = apply_rope(q, k, pe)
    assert rq.dtype == rk.dtype == torch.bfloat16
    assert torch.equal(rk, apply_rope1(k, pe)) and torch.equal(rq, apply_rope1(q, pe))
    # a rotation keeps each pair's length
    lengths = q.float().reshape(1, 2, 5, 2, 2).norm(dim=-1)
    assert torch.allclose(rq.float().reshape(1, 2, 5, 2, 2).norm(dim=-1), lengths, rtol=2e-2)


def test_has_a_backward_that_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pe = rotation_matrices(torch.rand(1, 1, 3, 2, generator=g, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t: apply_rope1(t, pe), (x,))
