import pytest

from lumix_core import MAP_COUNT, MAP_NAMES, MAPS, SOURCE_MAP_INDEX, check_grouped_batch, map_index
from lumix_core.maps import CHECKPOINT_MAP_NAMES


def test_order_and_names_follow_the_spec():
    assert MAP_NAMES == ("albedo", "irradiance", "color", "depth", "normal")
    assert CHECKPOINT_MAP_NAMES == ("diffuse_reflectance", "diffuse_illumination", "color", "depth", "normal")
    assert [m.index for m in MAPS] == list(range(5)) and MAP_COUNT == 5
    assert SOURCE_MAP_INDEX == 2


@pytest.mark.parametrize("name,index", [("albedo", 0), ("diffuse_reflectance", 0), ("irradiance", 1),
                                        ("diffuse_illumination", 1), ("color", 2), ("depth", 3), ("normal", 4)])
def test_map_index_accepts_both_names(name, index):
    assert map_index(name) == index


def test_unknown_map_lists_the_choices():
    with pytest.raises(ValueError, match="albedo, irradiance, color, depth, normal"):
        map_index("roughness")


def test_grouped_batch():
    assert check_grouped_batch(10, 5) == 2
    with pytest.raises(ValueError, match="12 entries, which is not a multiple of 5.*LumiX Intrinsic Sampler"):
        check_grouped_batch(12, 5)
    with pytest.raises(ValueError, match="at least 1"):
        check_grouped_batch(4, 0)


def test_sampled_batch_errors_count_the_users_latents():
    import pytest
    from lumix_core.maps import check_sampled_batch
    assert check_sampled_batch(20, 2, 5) == 2 and check_sampled_batch(5, 1, 5) == 1 and check_sampled_batch(10, 0, 5) == 2
    with pytest.raises(ValueError, match="batch has 4 latents, which is not a multiple of 5") as err:
        check_sampled_batch(8, 2, 5)  # KSampler, batch 4, CFG: the model sees 8
    assert "8" not in str(err.value)
    with pytest.raises(ValueError, match="batch has 7 latents"):
        check_sampled_batch(7, 1, 5)
