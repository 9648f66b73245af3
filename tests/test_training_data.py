"""Training data: both folder layouts, every skip/refusal path, resize/crop/flip, the on-disk cache."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lumix_core.maps import MAP_NAMES
from lumix_core.training import DatasetError, TrainConfig, encode_dataset, flip_scene_images, load_scene_images, scan_dataset
from lumix_core.training import CacheError
from lumix_core.training.cache import text_identity
from lumix_core.training.data import read_map, resized_size
from training_fixtures import make_reference_dataset, make_scene_folder, write_png


class CountingEncoder:
    """Raw 'latents': each 8x8 patch's mean colour (3 channels) plus a 4th channel of its row index,
    so tests can read back which pixels a latent came from."""

    def __init__(self):
        self.images, self.texts = 0, []

    def images_fn(self, images):
        self.images += 1
        n, h, w, _ = images.shape
        patches = images.view(n, h // 8, 8, w // 8, 8, 3).mean((2, 4)).permute(0, 3, 1, 2)
        rows = torch.arange(h // 8, dtype=torch.float32).view(1, 1, -1, 1).expand(n, 1, h // 8, w // 8)
        return torch.cat([patches, rows], 1)

    def text_fn(self, caption):
        self.texts.append(caption)
        return torch.full((3, 4), float(len(caption))), torch.full((2,), float(len(caption)))


def test_reference_layout_with_json_and_txt_captions(tmp_path):
    make_reference_dataset(tmp_path / "a", ["s1", "s0"], "json")
    make_reference_dataset(tmp_path / "b", ["x"], "txt")
    scan = scan_dataset(str(tmp_path / "a"))
    assert scan.layout == "reference" and [s.scene_id for s in scan.scenes] == ["s0", "s1"]
    assert list(scan.scenes[0].maps) == list(MAP_NAMES)
    assert scan.scenes[0].maps["albedo"].endswith(os.path.join("diffuse_reflectance", "s0_diffuse_reflectance.png"))
    assert scan.scenes[1].caption == "a room number 0" and scan.scenes[0].size == (40, 32)
    assert scan_dataset(str(tmp_path / "b")).scenes[0].caption == "a room number 0"


def test_reference_layout_skips_with_reasons(tmp_path):
    root = tmp_path / "ref"
    make_reference_dataset(root, ["good", "nomap", "nocap", "bad", "size"])
    os.remove(root / "depth" / "nomap_depth.png")
    os.remove(root / "captions_blip2" / "nocap_color.json")
    (root / "normal" / "bad_normal.png").write_bytes(b"not a png at all")
    write_png(str(root / "color" / "size_color.png"), np.zeros((16, 16, 3)))
    scan = scan_dataset(str(root))
    assert [s.scene_id for s in scan.scenes] == ["good"]
    reasons = dict(scan.skipped)
    assert reasons["nomap"] == "missing map: depth"
    assert reasons["nocap"] == "no caption"
    assert reasons["bad"].startswith("unreadable file: bad_normal.png")
    assert reasons["size"].startswith("misaligned maps: sizes differ") and "color 16x16" in reasons["size"]
    assert scan.skip_counts() == {"missing map": 1, "no caption": 1, "unreadable file": 1, "misaligned maps": 1}
    assert scan.summary().startswith("1 scene(s) used, 4 skipped")


def test_scene_folder_layout_and_its_skips(tmp_path):
    make_scene_folder(tmp_path, "scene_0001", 0, "a kitchen")
    make_scene_folder(tmp_path, "scene_0002", 1, None)                  # no lumix.json
    make_scene_folder(tmp_path, "scene_0003", 2, "x", maps=["color", "depth"])
    make_scene_folder(tmp_path, "scene_0004", 3, "   ")                  # empty prompt
    (tmp_path / "notes").mkdir()                                         # not a scene: ignored
    scan = scan_dataset(str(tmp_path))
    assert scan.layout == "scene-folders" and [s.scene_id for s in scan.scenes] == ["scene_0001"]
    assert scan.scenes[0].caption == "a kitchen"
    assert dict(scan.skipped) == {"scene_0002": "no caption", "scene_0004": "no caption",
                                  "scene_0003": "missing map: albedo, irradiance, normal"}


def test_unusable_folders_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="no scene folders or map folders"):
        scan_dataset(str(tmp_path))
    make_scene_folder(tmp_path, "s", prompt=None)
    with pytest.raises(DatasetError, match="s: no caption"):
        scan_dataset(str(tmp_path))


def test_resize_keeps_the_aspect_and_all_maps_together(tmp_path):
    assert resized_size(40, 32, 16) == (16, 16)  # 20x16 trimmed to the 16-px grid
    assert resized_size(1024, 768, 512) == (672, 512)
    assert resized_size(768, 1024, 512) == (512, 672)
    make_scene_folder(tmp_path, "s", width=64, height=32)
    scene = scan_dataset(str(tmp_path)).scenes[0]
    images = load_scene_images(scene, 16)
    assert images.shape == (5, 16, 32, 3) and images.min() >= 0 and images.max() <= 1
    # bicubic in float (no rounding to 8 bits after resizing), clipped to 0..1
    pixels = np.asarray(Image.open(scene.maps["depth"]).convert("RGB"), dtype=np.float32) / 255.0
    expected = np.stack([np.asarray(Image.fromarray(pixels[..., c], mode="F").resize((32, 16), Image.BICUBIC))
                         for c in range(3)], axis=2).clip(0, 1)
    np.testing.assert_allclose(images[3].numpy(), expected, atol=1e-6)
    rounded = np.asarray(Image.open(scene.maps["depth"]).convert("RGB").resize((32, 16), Image.BICUBIC)) / 255.0
    np.testing.assert_allclose(images[3].numpy(), rounded, atol=1.01 / 255)  # the 8-bit resize, within its fixed-point rounding


def test_flip_mirrors_every_map_and_negates_the_normal_x():
    images = torch.rand(5, 4, 6, 3)
    flipped = flip_scene_images(images)
    for i in range(4):
        assert torch.equal(flipped[i], images[i].flip(1))
    assert torch.allclose(flipped[4, ..., 0], 1 - images[4].flip(1)[..., 0])
    assert torch.equal(flipped[4, ..., 1:], images[4].flip(1)[..., 1:])
    # a normal facing right (+x, rgb red 1.0) faces left after the mirror
    right = torch.zeros(5, 1, 2, 3)
    right[4, ..., 0] = 1.0
    assert torch.equal(flip_scene_images(right)[4, ..., 0], torch.zeros(1, 2))


def test_encoding_caches_on_disk_and_reencodes_only_what_changed(tmp_path):
    root = tmp_path / "data"
    make_reference_dataset(root, ["a", "b"], width=48, height=32)
    enc = CountingEncoder()
    cache = str(tmp_path / "cache")
    ds = encode_dataset(scan_dataset(str(root)), enc.images_fn, enc.text_fn, cache, resolution=16, encoder_id="v1")
    assert len(ds) == 2 and enc.images == 2 and enc.texts == ["a room number 0", "a room number 1", ""]
    assert ds.summary.startswith("2 scene(s) used, 0 skipped")
    again = encode_dataset(scan_dataset(str(root)), enc.images_fn, enc.text_fn, cache, resolution=16, encoder_id="v1")
    assert enc.images == 2 and len(enc.texts) == 3 and [s.latents for s in again.scenes] == [s.latents for s in ds.scenes]
    write_png(str(root / "depth" / "b_depth.png"), np.full((32, 48, 3), 7))   # new content: new key
    encode_dataset(scan_dataset(str(root)), enc.images_fn, enc.text_fn, cache, resolution=16, encoder_id="v1")
    assert enc.images == 3
    encode_dataset(scan_dataset(str(root)), enc.images_fn, enc.text_fn, cache, resolution=16, encoder_id="v2")
    assert enc.images == 5  # another encoder: everything again
    assert not [f for d, _, fs in os.walk(cache) for f in fs if f.startswith(".tmp")]


def test_examples_share_one_crop_and_honour_flip_and_dropout(tmp_path):
    make_scene_folder(tmp_path / "data", "s", width=32, height=96, prompt="tall")
    enc = CountingEncoder()
    ds = encode_dataset(scan_dataset(str(tmp_path / "data")), enc.images_fn, enc.text_fn, str(tmp_path / "c"),
                        resolution=32, flip=True)
    config = TrainConfig(resolution=32, flip=True)
    tops, flips = set(), 0
    for s in range(40):
        ex = ds.example(0, torch.Generator().manual_seed(s), config)
        assert ex.latents.shape == (5, 4, 4, 4)
        rows = ex.latents[:, 3]
        assert (rows == rows[0:1]).all()          # one crop for all five maps
        top = int(rows[0, 0, 0])
        assert top % 2 == 0 and torch.equal(rows[0, :, 0], torch.arange(top, top + 4.0))
        tops.add(top)
        assert ex.context[0, 0] == len("tall")
    assert tops == {0, 2, 4, 6, 8}  # (96 - 32) / 8 = 8 latent rows of play, on the 2-row token grid
    # with flip on, about half of the draws are mirrored: compare to the stored copies
    from safetensors.torch import load_file
    stored = load_file(ds.scenes[0].latents)
    assert not torch.equal(stored["latents"], stored["flipped"])
    seen = {"latents": 0, "flipped": 0}
    for s in range(40):
        ex = ds.example(0, torch.Generator().manual_seed(s), config)
        for key in seen:
            seen[key] += any(torch.equal(ex.latents, stored[key][..., t:t + 4, :]) for t in range(0, 9, 2))
    assert seen["latents"] > 5 and seen["flipped"] > 5 and seen["latents"] + seen["flipped"] == 40
    dropped = ds.example(0, torch.Generator().manual_seed(0), config.replace(caption_dropout=1.0))
    assert dropped.context[0, 0] == 0.0  # the empty caption's embedding
    with pytest.raises(ValueError, match="encode the dataset at 64"):
        ds.example(0, torch.Generator(), config.replace(resolution=64))
    no_flip = encode_dataset(scan_dataset(str(tmp_path / "data")), enc.images_fn, enc.text_fn, str(tmp_path / "c"),
                             resolution=32)
    with pytest.raises(ValueError, match="without flipped copies"):
        no_flip.example(0, torch.Generator(), config)


def test_a_file_that_cannot_be_decoded_is_skipped_at_encoding(tmp_path):
    root = tmp_path / "data"
    make_scene_folder(root, "ok", 0)
    folder = make_scene_folder(root, "broken", 1)
    data = open(os.path.join(folder, "irradiance.png"), "rb").read()
    with open(os.path.join(folder, "irradiance.png"), "wb") as f:
        f.write(data[: len(data) // 2])  # a header PIL reads, pixels it cannot
    enc = CountingEncoder()
    ds = encode_dataset(scan_dataset(str(root)), enc.images_fn, enc.text_fn, str(tmp_path / "c"), resolution=16)
    assert [s.scene_id for s in ds.scenes] == ["ok"]
    assert ds.skipped[0][0] == "broken" and ds.skipped[0][1].startswith("unreadable file")
    assert "1 skipped (1 unreadable file)" in ds.summary


# ---------------------------------------------------------------------------------- full-precision maps
def write_png_raw(path, rows, bitdepth, greyscale):
    """A PNG written by pypng itself (not by the code under test)."""
    import png
    os.makedirs(os.path.dirname(path), exist_ok=True)
    height, width = len(rows), len(rows[0]) // (1 if greyscale else 3)
    with open(path, "wb") as f:
        png.Writer(width, height, greyscale=greyscale, bitdepth=bitdepth).write(f, rows)


def test_16bit_grey_and_rgb_pngs_are_read_at_full_precision(tmp_path):
    width, height = 64, 32
    ramp = [[(y * width + x) * 65535 // (width * height - 1) for x in range(width)] for y in range(height)]
    write_png_raw(str(tmp_path / "grey16.png"), ramp, 16, True)
    expected = np.array(ramp, dtype=np.float64) / 65535.0         # float64, from the integers written
    got = read_map(str(tmp_path / "grey16.png"), "depth")
    assert got.shape == (height, width, 3)
    np.testing.assert_allclose(got, np.repeat(expected[..., None], 3, axis=2), rtol=0, atol=1e-12)
    assert len(np.unique(got[..., 0])) == width * height          # every step of the ramp kept (8 bits: 256)
    rgb = [[v for x in range(width) for v in (ramp[y][x], 65535 - ramp[y][x], 12345)] for y in range(height)]
    write_png_raw(str(tmp_path / "rgb16.png"), rgb, 16, False)
    got = read_map(str(tmp_path / "rgb16.png"))
    np.testing.assert_allclose(got[..., 1], 1.0 - expected, atol=1e-12)
    np.testing.assert_allclose(got[..., 2], 12345 / 65535.0, atol=1e-12)
    grey8 = [[(x * 4) % 256 for x in range(width)] for _ in range(height)]
    write_png_raw(str(tmp_path / "grey8.png"), grey8, 8, True)
    np.testing.assert_allclose(read_map(str(tmp_path / "grey8.png"))[..., 1], np.array(grey8) / 255.0, atol=1e-12)


def test_a_16bit_depth_ramp_reaches_the_encoder_unclipped(tmp_path):
    """The tester's case: a 0-65535 depth ramp through 8-bit RGB became [0, 1, 1, ...]."""
    folder = make_scene_folder(tmp_path, "s", width=32, height=32, maps=["albedo", "irradiance", "color", "normal"])
    ramp = [[(y * 32 + x) * 64 for x in range(32)] for y in range(32)]  # 0 .. 65472
    write_png_raw(os.path.join(folder, "depth.png"), ramp, 16, True)
    scene = scan_dataset(str(tmp_path)).scenes[0]
    images = load_scene_images(scene, 32)  # no resize at the file's own size
    expected = np.array(ramp, dtype=np.float64) / 65535.0
    np.testing.assert_allclose(images[3, ..., 0].double().numpy(), expected, atol=1e-7)
    assert images[3, 0, 1, 0] < 0.01 and images[3, -1, -1, 0] > 0.99


def test_save_maps_16bit_twins_are_preferred_in_scene_folders(tmp_path):
    folder = make_scene_folder(tmp_path, "s", width=32, height=32)
    write_png_raw(os.path.join(folder, "depth_16bit.png"), [[1000 * x for x in range(32)]] * 32, 16, True)
    scene = scan_dataset(str(tmp_path)).scenes[0]
    assert os.path.basename(scene.maps["depth"]) == "depth_16bit.png"
    assert os.path.basename(scene.maps["albedo"]) == "albedo.png"


def test_exr_maps_are_converted_metric_depth_normalised(tmp_path):
    OpenEXR = pytest.importorskip("OpenEXR")
    folder = make_scene_folder(tmp_path, "s", width=16, height=16, maps=["albedo", "irradiance", "color"])
    linear = np.linspace(0, 1, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    distance = np.linspace(2.0, 10.0, 256, dtype=np.float32).reshape(16, 16)
    normals = np.zeros((16, 16, 3), np.float32)
    normals[..., 2] = 1.0
    for name, channels in (("depth", {"Y": distance}), ("normal", {"RGB": normals})):
        with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as f:
            f.write(os.path.join(folder, f"{name}.exr"))
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGB": linear}) as f:
        f.write(str(tmp_path / "linear.exr"))
    images = load_scene_images(scan_dataset(str(tmp_path)).scenes[0], 16)
    expected_depth = (distance.astype(np.float64) - 2.0) / 8.0           # relative: 0 nearest, 1 farthest
    np.testing.assert_allclose(images[3, ..., 1].double().numpy(), expected_depth, atol=1e-6)
    np.testing.assert_allclose(images[4].double().numpy(), np.broadcast_to([0.5, 0.5, 1.0], (16, 16, 3)), atol=1e-7)
    lin = linear.astype(np.float64)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    np.testing.assert_allclose(read_map(str(tmp_path / "linear.exr"), "srgb"), srgb, atol=1e-6)


def test_relative_depth_exr_as_save_maps_writes_it_is_kept_as_its_png(tmp_path):
    OpenEXR = pytest.importorskip("OpenEXR")
    relative = np.linspace(0.2, 0.7, 256, dtype=np.float32).reshape(16, 16)  # Save Maps: decode_depth of the map
    path = str(tmp_path / "depth.exr")
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"Y": relative}) as f:
        f.write(path)
    depth = read_map(path, "depth")
    # the same values the PNG holds (not stretched to 0..1), so a scene trains alike from either file
    np.testing.assert_allclose(depth, np.repeat(relative.astype(np.float64)[..., None], 3, axis=2), atol=1e-7)


# ---------------------------------------------------------------------------------- links, labels
def test_confined_scans_never_follow_links_out_of_the_folder_nor_name_outside_files(tmp_path):
    secret = tmp_path / "secret"
    make_scene_folder(secret, "private_scene", seed=1, prompt="private")
    make_reference_dataset(str(secret / "ref"), ["bank_statement_2025"])
    data = tmp_path / "input" / "data"
    make_scene_folder(data, "ok", seed=0)
    os.symlink(secret / "private_scene", data / "linked_scene")                # a whole scene outside
    half = make_scene_folder(data, "half", seed=2, maps=["albedo", "irradiance", "color", "normal"])
    os.symlink(secret / "private_scene" / "depth.png", os.path.join(half, "depth.png"))   # one map outside
    scan = scan_dataset(str(data), confine=True, label="input/data")
    assert [s.scene_id for s in scan.scenes] == ["ok"]
    assert dict(scan.skipped) == {"half": "link leaving the dataset folder", "linked_scene": "link leaving the dataset folder"}
    assert str(tmp_path) not in scan.summary() and "input/data" in scan.summary()
    unconfined = scan_dataset(str(data))                                        # the command line: any path
    assert {s.scene_id for s in unconfined.scenes} == {"ok", "half", "linked_scene"}

    ref = tmp_path / "input" / "ref"
    make_reference_dataset(str(ref), ["mine"])
    os.symlink(secret / "ref" / "color" / "bank_statement_2025_color.png", ref / "color" / "bank_statement_2025_color.png")
    refscan = scan_dataset(str(ref), confine=True, label="input/ref")
    assert [s.scene_id for s in refscan.scenes] == ["mine"]
    assert all("secret" not in why and str(tmp_path) not in why for _, why in refscan.skipped)
    only_links = tmp_path / "input" / "links"
    os.makedirs(only_links)
    for name in ("color", "depth", "captions"):
        os.symlink(secret / "ref" / name if name != "captions" else secret / "ref" / "captions_blip2", only_links / name)
    with pytest.raises(DatasetError) as err:
        scan_dataset(str(only_links), confine=True, label="input/links")
    assert "bank_statement" not in str(err.value) and str(tmp_path) not in str(err.value)
    assert "input/links" in str(err.value)


# ---------------------------------------------------------------------------------- cache keys and checks
def test_text_embeddings_are_keyed_by_the_tokenizer_settings(tmp_path):
    make_scene_folder(tmp_path / "data", "s", prompt="a hall")
    enc = CountingEncoder()
    scan = scan_dataset(str(tmp_path / "data"))
    pad = lambda n: (lambda caption: text_identity([caption, "<pad>" * (n - 1)]))  # noqa: E731  (tokens padded to n)
    a = encode_dataset(scan, enc.images_fn, enc.text_fn, str(tmp_path / "c"), 16, text_identity=pad(256))
    assert enc.texts == ["a hall", ""]
    b = encode_dataset(scan, enc.images_fn, enc.text_fn, str(tmp_path / "c"), 16, text_identity=pad(512))
    assert enc.texts == ["a hall", "", "a hall", ""] and enc.images == 1       # text again, latents reused
    assert a.scenes[0].text != b.scenes[0].text and a.empty_text != b.empty_text
    encode_dataset(scan, enc.images_fn, enc.text_fn, str(tmp_path / "c"), 16, text_identity=pad(256))
    assert len(enc.texts) == 4                                                  # 256 still cached


def test_an_unreadable_folder_is_refused_before_any_encoder_runs(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        folder = make_scene_folder(root, f"broken{i}", i)
        data = open(os.path.join(folder, "color.png"), "rb").read()
        with open(os.path.join(folder, "color.png"), "wb") as f:
            f.write(data[: len(data) // 2])
    enc = CountingEncoder()
    with pytest.raises(ValueError, match="no scene of .* could be encoded: broken0: unreadable file"):
        encode_dataset(scan_dataset(str(root)), enc.images_fn, enc.text_fn, str(tmp_path / "c"), resolution=16)
    assert enc.images == 0 and enc.texts == []


def damage(path, **tensors):
    from safetensors.torch import load_file, save_file
    data = load_file(path)
    for key, value in tensors.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    save_file(data, path)


@pytest.mark.parametrize("case, message", [
    ("size", r"shape \[5, 4, 2, 2\], expected \[5, 4, 4, 6\]"),
    ("maps", r"shape \[3, 4, 4, 6\], expected \[5, 4, 4, 6\] \(5 maps"),
    ("nan", r"non-finite values \(NaN/Inf\) in 'latents'"),
    ("key", r"has no 'latents' tensor \(it has other\)"),
    ("junk", r"cannot be read"),
    ("text", r"has no 'pooled' tensor"),
    ("textnan", r"non-finite values \(NaN/Inf\) in 'context'"),
])
def test_damaged_cache_files_are_refused_when_read_and_rebuilt_at_encoding(tmp_path, case, message):
    make_scene_folder(tmp_path / "data", "s", width=48, height=32)
    enc = CountingEncoder()
    scan = scan_dataset(str(tmp_path / "data"))
    cache = str(tmp_path / "cache")
    ds = encode_dataset(scan, enc.images_fn, enc.text_fn, cache, resolution=32, cache_label="output/my_cache")
    good = ds.example(0, torch.Generator().manual_seed(0), TrainConfig(resolution=32))
    lat, txt = ds.scenes[0].latents, ds.scenes[0].text
    if case == "size":
        damage(lat, latents=torch.zeros(5, 4, 2, 2))
    elif case == "maps":
        damage(lat, latents=torch.zeros(3, 4, 4, 6))
    elif case == "nan":
        damage(lat, latents=torch.full((5, 4, 4, 6), float("nan")))
    elif case == "key":
        damage(lat, latents=None, other=torch.zeros(1))
    elif case == "junk":
        open(lat, "wb").write(b"not safetensors")
    elif case == "text":
        damage(txt, pooled=None)
    elif case == "textnan":
        damage(txt, context=torch.full((3, 4), float("inf")))
    bad = lat if case in ("size", "maps", "nan", "key", "junk") else txt
    rel = "output/my_cache/" + os.path.relpath(bad, cache).replace(os.sep, "/")
    with pytest.raises(CacheError, match=message) as err:
        ds.example(0, torch.Generator().manual_seed(0), TrainConfig(resolution=32))
    assert rel in str(err.value) and "(scene s)" in str(err.value) and "delete that file" in str(err.value)
    assert str(tmp_path) not in str(err.value)
    # encoding again finds the damaged file and rebuilds it (except NaN, found only when read)
    images, texts = enc.images, len(enc.texts)
    again = encode_dataset(scan, enc.images_fn, enc.text_fn, cache, resolution=32)
    if case in ("nan", "textnan"):
        assert enc.images == images and len(enc.texts) == texts
        return
    assert (enc.images, len(enc.texts)) == ((images + 1, texts) if bad == lat else (images, texts + 1))
    assert "1 damaged cache file(s) encoded again" in again.summary
    fixed = again.example(0, torch.Generator().manual_seed(0), TrainConfig(resolution=32))
    assert torch.equal(fixed.latents, good.latents) and torch.equal(fixed.context, good.context)


def test_a_vae_that_returns_nan_caches_nothing(tmp_path):
    make_scene_folder(tmp_path / "data", "s")
    enc = CountingEncoder()
    nan_vae = lambda images: enc.images_fn(images) * float("nan")  # noqa: E731
    with pytest.raises(ValueError, match="VAE returned non-finite values"):
        encode_dataset(scan_dataset(str(tmp_path / "data")), nan_vae, enc.text_fn, str(tmp_path / "c"), resolution=16)
    assert not os.path.isdir(tmp_path / "c" / "latents") or not os.listdir(tmp_path / "c" / "latents")
