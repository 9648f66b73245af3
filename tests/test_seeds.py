"""Scene seeds wrap modulo 2^64 so every allowed seed works with many scenes (issue 10, item 7)."""
import torch

from lumix_core.sampling import scene_noise, scene_seed

SHAPE = (4, 2, 2)


def draw(seed):
    return torch.randn([1, *SHAPE], generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def test_largest_seed_with_two_scenes_wraps_to_zero():
    noise = scene_noise(SHAPE, 2**64 - 1, 2, maps_per_scene=5)
    assert noise.shape == (10, *SHAPE)
    torch.testing.assert_close(noise[0], draw(2**64 - 1)[0], rtol=0, atol=0)
    torch.testing.assert_close(noise[5], draw(0)[0], rtol=0, atol=0)  # (2^64 - 1 + 1) mod 2^64
    assert not torch.equal(noise[0], noise[5])


def test_many_scenes_near_the_top_of_the_range():
    noise = scene_noise(SHAPE, 2**64 - 3, 6, maps_per_scene=1, shared=False)
    for s, seed in enumerate([2**64 - 3, 2**64 - 2, 2**64 - 1, 0, 1, 2]):
        assert torch.equal(noise[s], draw(seed)[0])


def test_small_seeds_are_unchanged():
    """Existing outputs stay reproducible: below 2^64 the scene seed is still seed + s."""
    for seed in (0, 1, 12345, 2**32, 2**63):
        for s in range(3):
            assert scene_seed(seed, s) == seed + s
    noise = scene_noise(SHAPE, 41, 3, maps_per_scene=5)
    for s in range(3):
        for m in range(5):
            assert torch.equal(noise[5 * s + m], draw(41 + s)[0])
