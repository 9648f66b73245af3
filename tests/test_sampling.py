import pytest
import torch

from lumix_core.sampling import hold_maps, held_map_mask, interleave_maps, scene_noise, split_maps


def test_shared_noise_is_one_draw_per_scene_repeated():
    noise = scene_noise((4, 3, 3), seed=7, scenes=2)
    assert noise.shape == (10, 4, 3, 3)
    for s in range(2):
        for i in range(5):
            assert torch.equal(noise[s * 5 + i], noise[s * 5])
    assert not torch.equal(noise[0], noise[5])
    assert torch.equal(noise[0], torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(7))[0])


def test_scene_s_equals_a_one_scene_run_with_seed_plus_s():
    for shared in (True, False):
        two = scene_noise((2, 4, 4), seed=100, scenes=2, shared=shared)
        assert torch.equal(two[:5], scene_noise((2, 4, 4), seed=100, scenes=1, shared=shared))
        assert torch.equal(two[5:], scene_noise((2, 4, 4), seed=101, scenes=1, shared=shared))


def test_unshared_noise_differs_per_map():
    noise = scene_noise((2, 4, 4), seed=3, scenes=1, shared=False)
    assert all(not torch.equal(noise[0], noise[i]) for i in range(1, 5))


def test_held_mask_repeats_per_scene():
    mask = held_map_mask([False, False, True, False, False], 2)
    assert mask.tolist() == [False, False, True, False, False] * 2


def test_hold_maps_replaces_held_rows_for_every_condition():
    B = 10
    held = held_map_mask([False, False, True, False, True], 2)
    x = torch.randn(2 * B, 3, 2, 2)  # cond + uncond
    sigma = torch.rand(2 * B) + 0.1
    clean = torch.randn(B, 3, 2, 2)
    x_before, sigma_before = x.clone(), sigma.clone()
    x2, s2 = hold_maps(x, sigma, held, clean)
    for row in range(2 * B):
        if held[row % B]:
            assert torch.equal(x2[row], clean[row % B]) and s2[row] == 0
        else:
            assert torch.equal(x2[row], x[row]) and s2[row] == sigma[row]
    assert torch.equal(x, x_before) and torch.equal(sigma, sigma_before)  # inputs left as they were


def test_hold_maps_refuses_a_foreign_batch():
    with pytest.raises(ValueError, match="called with 7 latents, not a multiple of the 5"):
        hold_maps(torch.zeros(7, 1), torch.zeros(7), held_map_mask([True] + [False] * 4, 1), torch.zeros(5, 1))


def test_split_and_interleave_are_inverse():
    batch = torch.arange(10).view(10, 1).float()
    maps = split_maps(batch)
    assert list(maps) == ["albedo", "irradiance", "color", "depth", "normal"]
    assert maps["color"].flatten().tolist() == [2.0, 7.0]
    assert torch.equal(interleave_maps(list(maps.values())), batch)
    with pytest.raises(ValueError, match="not a multiple of 5"):
        split_maps(torch.zeros(4, 1))


def test_tile_scene_puts_the_five_maps_of_a_scene_side_by_side():
    from lumix_core.sampling import tile_scene
    batch = torch.randn(10, 3, 2, 4)
    tiled = tile_scene(batch, scene=1)
    assert tiled.shape == (1, 3, 2, 20)
    for i in range(5):
        assert torch.equal(tiled[0, :, :, 4 * i:4 * (i + 1)], batch[5 + i])
    assert torch.equal(tile_scene(batch[:3]), batch[:1])  # not a whole scene: the first latent, as ComfyUI
    with pytest.raises(ValueError, match="not a multiple of 5"):
        tile_scene(torch.zeros(7, 1, 1, 1))
