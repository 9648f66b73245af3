"""LumiX Intrinsic Sampler: the size guard refuses before allocating (issue 10, item 5) and the largest
seed works with several scenes (item 7)."""
import time

import pytest
import torch

from comfy_host import HIDDEN, CountingVAE, TinyVAE, conditioning, load_extension, tiny_lumix_model  # first: skips without ComfyUI

import comfy.model_management  # noqa: E402
from lumix_core.memory_estimate import estimate_sampler_memory  # noqa: E402
from lumix_core.sampling import scene_noise  # noqa: E402

NODES = load_extension()
Sampler = NODES["LumiXSampler"]
SIZE = 32


@pytest.fixture(scope="module")
def lumix_model(tmp_path_factory):
    return tiny_lumix_model(tmp_path_factory.mktemp("lumix_size_guard"), "size_guard_lumix.safetensors")


def run(model, vae, seed=0, scenes=1, size=SIZE, cfg=1.0, **maps):
    return Sampler.execute(model, conditioning(1), conditioning(2), vae, seed, 2, cfg, "euler", "simple",
                           size, size, scenes, True, held_maps_size="width x height", **maps).result


def patch_free(monkeypatch, free):
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free)


def test_issue_case_is_refused_up_front(lumix_model, monkeypatch):
    patch_free(monkeypatch, 8 * 2**30)
    vae = CountingVAE()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"LumiX: 64 scene\(s\) of 4096x4096 \(320 maps\) need at least .* GiB"):
        run(lumix_model, vae, scenes=64, size=4096)
    assert time.perf_counter() - start < 5 and vae.calls == 0


def test_free_memory_patched_low_says_how_many_scenes_fit(lumix_model, monkeypatch):
    two = estimate_sampler_memory(SIZE, SIZE, 2, 1.0, hidden=HIDDEN, activation_bytes=4, text_tokens=4)
    patch_free(monkeypatch, two.host_bytes + two.device_minimum_bytes)  # the test runs the model on the CPU
    vae = CountingVAE()
    with pytest.raises(ValueError, match=r"Set scenes to 2 \(and run several times\)"):
        run(lumix_model, vae, scenes=5, color=torch.rand(5, SIZE, SIZE, 3))
    assert vae.calls == 0  # refused before the given maps were encoded
    images = run(lumix_model, vae, scenes=2)[:5]
    assert images[0].shape == (2, SIZE, SIZE, 3) and torch.isfinite(torch.stack(images)).all()


def test_largest_seed_with_two_scenes(lumix_model):
    *images, latent = run(lumix_model, TinyVAE(), seed=2**64 - 1, scenes=2)
    assert latent["samples"].shape[0] == 10 and torch.isfinite(latent["samples"]).all()
    # scene 2 wrapped to seed 0: the same as a one-scene run with seed 0
    *alone, alone_latent = run(lumix_model, TinyVAE(), seed=0, scenes=1)
    torch.testing.assert_close(latent["samples"][5:], alone_latent["samples"])
    assert torch.equal(scene_noise((16, 4, 4), 2**64 - 1, 2)[5:], scene_noise((16, 4, 4), 0, 1))
