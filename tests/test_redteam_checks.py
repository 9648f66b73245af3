"""Gaps found by re-running issue 10 as a hostile user against the merged nodes (host-free parts):
tool-node map checks, NaN/Inf in computed batches, Save Maps' value range, the Empty Latent's guard."""
import math

import pytest
import torch

from lumix_core.export import saveable_map
from lumix_core.finite_check import MODEL_ADVICE, NonFiniteError, check_finite_maps
from lumix_core.given_maps import GivenMapError, check_tool_map
from lumix_core.memory_estimate import SamplerMemoryError, check_latent_memory

GIB = 2 ** 30


def image(n=1, h=8, w=8, c=3, seed=0):
    return torch.rand(n, h, w, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_tool_map_refuses_non_finite_naming_node_map_and_scene(bad):
    x = image(n=3)
    x[2, 1, 1, 0] = bad
    with pytest.raises(GivenMapError, match=r"LumiX Relight: the normal map of scene 3 of 3 .*1 non-finite.*"
                                            r"Something before this node produced them"):
        check_tool_map("LumiX Relight", "normal", x)


@pytest.mark.parametrize("scale,advice", [(255.0, "0-255 image"), (-1.0, "-1..1 image")])
def test_tool_map_refuses_other_ranges(scale, advice):
    x = image() * 255 if scale == 255.0 else image() * 2 - 1
    with pytest.raises(GivenMapError, match=f"LumiX Normal Flip: the normal map holds values.*{advice}"):
        check_tool_map("LumiX Normal Flip", "normal", x)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_tool_map_grey_to_rgb_and_alpha_dropped(channels):
    x = image(c=channels)
    out = check_tool_map("LumiX Depth Colormap", "depth", x)
    assert out.shape == (1, 8, 8, 3) and out.dtype == torch.float32
    expected = x[..., :1].expand(1, 8, 8, 3) if channels < 3 else x[..., :3]
    assert torch.equal(out, expected)


@pytest.mark.parametrize("shape,problem", [((1, 0, 0, 3), "is 0x0 pixels; a map needs at least 1 pixel "),
                                           ((1, 8, 0, 3), "is 0x8 pixels"), ((0, 8, 8, 3), "empty batch"),
                                           ((1, 8, 8, 5), "has 5 channels"), ((8, 8, 3), "not an IMAGE batch")])
def test_tool_map_odd_shapes_are_refused(shape, problem):
    with pytest.raises(GivenMapError, match=f"LumiX Map Consistency: the depth .*{problem}"):
        check_tool_map("LumiX Map Consistency", "depth", torch.zeros(shape))


def test_tool_map_accepts_a_one_pixel_strip():
    assert check_tool_map("LumiX Normal Flip", "normal", image(h=1, w=1000)).shape == (1, 1, 1000, 3)


def test_finite_batch_passes_and_non_finite_names_scene_and_map():
    batch = torch.zeros(10, 4, 2, 2)
    check_finite_maps(batch, "the sampled latent", MODEL_ADVICE)  # no error
    batch[8, 0, 0, 0] = math.nan   # scene 2, depth (index 3)
    batch[9, 1, 1, 1] = math.inf   # scene 2, normal
    with pytest.raises(NonFiniteError) as err:
        check_finite_maps(batch, "the sampled latent", MODEL_ADVICE)
    text = str(err.value)
    assert "in 2 of 10 maps (depth, normal)" in text and "the depth map of scene 2 of 2, 1 value(s), 1 NaN" in text
    assert "lower the LoRA strength" in text


def test_save_maps_refuses_a_0_255_image_before_writing():
    with pytest.raises(ValueError, match="LumiX Save Maps: the color map holds values from .* to 25.*0-255 image"):
        saveable_map("color", image() * 255)


def test_save_maps_still_writes_and_counts_non_finite_within_range():
    x = image()
    x[0, 0, 0, 0] = math.inf
    rgb, bad = saveable_map("color", x)
    assert bad == [1] and rgb[0, 0, 0, 0] == 1.0


def test_latent_guard_refuses_the_issue_case_with_what_fits():
    # host count written here: 5 maps x (4 latents of 16 x H/8 x W/8 + 2 RGB images) x 4 bytes
    def host(w, h, s):
        return 5 * s * (4 * 16 * (h // 8) * (w // 8) + 2 * 3 * h * w) * 4
    free = 3 * host(4096, 4096, 1) + 1
    with pytest.raises(SamplerMemoryError, match=r"64 scene\(s\) of 4096x4096 \(320 maps\) need at least "
                                                 r"140\.0 GiB of system memory.*Set scenes to 3 "):
        check_latent_memory(4096, 4096, 64, free)
    assert check_latent_memory(4096, 4096, 3, free) == host(4096, 4096, 3)
    with pytest.raises(SamplerMemoryError, match=r"Even one scene does not fit: set width x height to 1024x1024"):
        check_latent_memory(4096, 4096, 1, host(1024, 1024, 1) + 1)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, float("1e999")])
def test_non_finite_settings_are_refused_by_name(value):
    from lumix_core.finite_check import check_finite_settings
    with pytest.raises(ValueError, match=r"^LumiX Relight: intensity is (nan|inf|-inf); set it to a finite number"):
        check_finite_settings("LumiX Relight", azimuth=45.0, intensity=value)
    check_finite_settings("LumiX Relight", azimuth=-360.0, intensity=0.0)  # finite values pass


def test_cover_crop_of_a_strip_is_refused_and_a_fitting_crop_passes():
    from lumix_core.given_maps import check_cover_crop
    with pytest.raises(GivenMapError, match=r"LumiX: the given color map is 16x1000; cropping it to the sampler's "
                                            r"512x16 aspect ratio keeps only 16x0 pixels"):
        check_cover_crop("color", torch.zeros(1, 1000, 16, 3), (512, 16))
    check_cover_crop("color", torch.zeros(1, 16, 1000, 3), (512, 16))  # 1000x16 covers 512x16: keeps 512x16


@pytest.mark.parametrize("prefix,problem", [("a\x00b", r"control character\(s\) '\\x00'"),
                                            ("ok/tab\there", r"control character\(s\) '\\t'"),
                                            ("x" * 241, "a name of 241 bytes"), ("é" * 121, "a name of 242 bytes")])
def test_save_maps_prefix_no_file_system_takes_is_refused(prefix, problem):
    from lumix_core.export import check_prefix
    with pytest.raises(ValueError, match=f"LumiX Save Maps: filename_prefix .*{problem}"):
        check_prefix(prefix)


def test_save_maps_ordinary_prefixes_pass():
    from lumix_core.export import check_prefix
    for prefix in ("LumiX/scene", "ok/é ✓", "x" * 240, "a/" + "y" * 240):
        check_prefix(prefix)


class ShortExrWriter:
    """OpenEXR.File whose write leaves half the file and reports nothing (what it does on a full disk)."""

    def __init__(self, real, *args, **kwargs):
        self.inner = real(*args, **kwargs)

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def write(self, path):
        self.inner.write(path)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])


def short_exr_writer(monkeypatch):
    import OpenEXR
    real = OpenEXR.File
    monkeypatch.setattr(OpenEXR, "File", lambda *a, **k: ShortExrWriter(real, *a, **k) if isinstance(a[0], dict)
                        else real(*a, **k))


def test_an_exr_write_that_fails_silently_is_an_oserror_and_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("OpenEXR", reason="openexr is not installed (optional extra)")
    import errno
    from lumix_core.export import write_exr
    short_exr_writer(monkeypatch)
    with pytest.raises(OSError, match="the EXR writer left an unreadable x.exr") as err:
        write_exr(str(tmp_path / "x.exr"), {"RGB": image(h=64, w=64)[0].numpy()})
    assert err.value.errno == errno.EIO and list(tmp_path.iterdir()) == []
