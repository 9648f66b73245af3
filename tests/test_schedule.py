"""The reference's schedule and photo sizing, against the formulas written out here (float64)."""
import math

import pytest
import torch

from lumix_core.schedule import reference_mu, reference_sigmas, size_for_photo


def independent_sigmas(width, height, steps):
    """The reference's get_schedule, re-derived: image_seq_len = (W//8)*(H//8)//256, linear mu,
    time shift e^mu / (e^mu + (1/t - 1))."""
    seq = (width // 8) * (height // 8) // 256
    mu = 0.5 + (seq - 256) * (1.15 - 0.5) / (4096 - 256)
    out = []
    for i in range(steps + 1):
        t = 1.0 - i / steps
        out.append(0.0 if t == 0 else math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0)))
    return out


def test_mu_at_512_is_the_references():
    assert reference_mu(512, 512) == pytest.approx(0.459375, abs=1e-15)
    assert reference_mu(1536, 1152) == pytest.approx(0.5 + 0.65 * (108 - 256) / 3840, abs=1e-15)


@pytest.mark.parametrize("width,height", [(512, 512), (1536, 1152), (1152, 1536), (64, 64), (768, 512), (2048, 2048)])
@pytest.mark.parametrize("steps", [1, 7, 28, 30, 50, 333])
def test_sigmas_match_the_formula_for_every_step_count(width, height, steps):
    sigmas = reference_sigmas(width, height, steps)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,)
    expected = torch.tensor(independent_sigmas(width, height, steps), dtype=torch.float64)
    torch.testing.assert_close(sigmas, expected, rtol=1e-13, atol=1e-15)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[:-1] > sigmas[1:]).all())


def test_step_32_of_50_at_512_is_not_comfyuis():
    # The measurement: the reference's 0.4710 against ModelSamplingFlux's 0.5137 at 512x512.
    assert reference_sigmas(512, 512, 50)[32].item() == pytest.approx(0.4710, abs=1e-4)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        reference_sigmas(512, 512, 0)
    with pytest.raises(ValueError, match="must be positive"):
        reference_sigmas(0, 512, 10)
    with pytest.raises(ValueError, match="must be positive"):
        size_for_photo(0, 10)


@pytest.mark.parametrize("photo,expected", [((4000, 3000), (1536, 1152)), ((3000, 4000), (1152, 1536)),
                                            ((640, 480), (1536, 1152)), ((1000, 1000), (1328, 1328))])
def test_size_for_photo_keeps_aspect_within_the_budget(photo, expected):
    w, h = size_for_photo(*photo)
    assert (w, h) == expected
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 1536 * 1152
    assert abs(w / h - photo[0] / photo[1]) < 16 / min(w, h)


def test_size_for_photo_small_budget_and_extreme_aspect():
    assert size_for_photo(80, 64, 64, 64) == (64, 48)  # sqrt(4096*1.25)=71.6 -> 64, 57.2 -> 48
    assert size_for_photo(10000, 10, 64, 64) == (2016, 16)  # never below one 16-pixel cell
