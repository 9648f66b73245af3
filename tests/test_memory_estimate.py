"""The sampler's size guard (issue 10, item 5): the estimate against a count written here, and the
refusal with what would fit."""
import pytest

from lumix_core.memory_estimate import SamplerMemoryError, check_sampler_memory, estimate_sampler_memory

GIB = 2 ** 30


def count_by_hand(width, height, scenes, cfg, hidden=3072, act_bytes=2, text=512, channels=16):
    """An independent count, term by term, in the units of the module's docstring."""
    maps = 5 * scenes
    one_latent = channels * (height / 8) * (width / 8) * 4.0
    one_image = height * width * 3 * 4.0
    host = maps * (4 * one_latent + 2 * one_image)
    tokens = height * width / 256 + text
    per_call = maps * tokens * hidden * 25 * act_bytes
    state = maps * 4 * one_latent
    return host, state + (2 if cfg != 1 else 1) * per_call, state + per_call


@pytest.mark.parametrize("width,height,scenes,cfg", [(512, 512, 1, 3.0), (1536, 1152, 2, 1.0), (64, 32, 7, 2.5),
                                                     (4096, 4096, 64, 3.0)])
def test_estimate_matches_an_independent_count(width, height, scenes, cfg):
    memory = estimate_sampler_memory(width, height, scenes, cfg)
    host, peak, minimum = count_by_hand(width, height, scenes, cfg)
    assert (memory.host_bytes, memory.device_bytes, memory.device_minimum_bytes) == (host, peak, minimum)


def test_reference_size_is_a_few_gib_and_the_issue_case_is_huge():
    small = estimate_sampler_memory(512, 512, 1, 3.0)
    assert 1 * GIB < small.device_bytes < 4 * GIB and small.host_bytes < 0.1 * GIB
    huge = estimate_sampler_memory(4096, 4096, 64, 3.0)
    assert huge.host_bytes > 100 * GIB


def test_fp32_activations_double_and_cfg_one_halves_the_model_term():
    bf16, fp32 = (estimate_sampler_memory(512, 512, 1, 1.0, activation_bytes=b) for b in (2, 4))
    state = 4 * 5 * 16 * 64 * 64 * 4
    assert fp32.device_bytes - state == 2 * (bf16.device_bytes - state)
    cfg3 = estimate_sampler_memory(512, 512, 1, 3.0)
    assert cfg3.device_bytes - state == 2 * (bf16.device_bytes - state)
    assert cfg3.device_minimum_bytes == bf16.device_bytes


def test_fits_passes_and_returns_the_estimate():
    memory = check_sampler_memory(512, 512, 1, 3.0, device_free=80 * GIB, host_free=64 * GIB, shared=False)
    assert memory == estimate_sampler_memory(512, 512, 1, 3.0)


def test_too_many_scenes_says_how_many_fit():
    one = estimate_sampler_memory(512, 512, 1, 3.0)
    three = estimate_sampler_memory(512, 512, 3, 3.0)
    free = three.host_bytes + three.device_minimum_bytes  # exactly three scenes on a CPU
    check_sampler_memory(512, 512, 3, 3.0, device_free=free, host_free=free, shared=True)
    with pytest.raises(SamplerMemoryError, match=r"LumiX: 8 scene\(s\) of 512x512 \(40 maps\) need at least .*"
                                                 r"Set scenes to 3 \(and run several times\)"):
        check_sampler_memory(512, 512, 8, 3.0, device_free=free, host_free=free, shared=True)
    assert one.device_minimum_bytes < free


def test_gpu_limit_names_both_pools():
    with pytest.raises(SamplerMemoryError, match=r"on the GPU and .* of system memory, but only 1\.0 GiB and 64\.0 GiB"):
        check_sampler_memory(1024, 1024, 4, 3.0, device_free=1 * GIB, host_free=64 * GIB, shared=False)


def test_one_scene_too_large_says_which_size_fits():
    with pytest.raises(SamplerMemoryError, match=r"Even one scene does not fit: set width x height to (\d+)x(\d+)") as err:
        check_sampler_memory(4096, 2048, 1, 1.0, device_free=2 * GIB, host_free=2 * GIB, shared=True)
    w, h = (int(v) for v in err.value.args[0].split("set width x height to ")[1].split(" ")[0].split("x"))
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 2) < 0.1
    fit = estimate_sampler_memory(w, h, 1, 1.0)
    assert fit.host_bytes + fit.device_minimum_bytes <= 2 * GIB
    bigger = estimate_sampler_memory(w + 32, h + 16, 1, 1.0)
    assert bigger.host_bytes + bigger.device_minimum_bytes > 2 * GIB


def test_nothing_fits():
    with pytest.raises(SamplerMemoryError, match="Not even one 16x16 scene fits"):
        check_sampler_memory(512, 512, 1, 1.0, device_free=1000, host_free=1000, shared=True)
