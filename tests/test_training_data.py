"""Training data: both folder layouts, every skip/refusal path, resize/crop/flip, the on-disk cache."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lumix_core.maps import MAP_NAMES
from lumix_core.training import DatasetError, TrainConfig, encode_dataset, flip_scene_images, load_scene_images, scan_dataset
from lumix_core.training.data import resized_size
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
    expected = np.asarray(Image.open(scene.maps["depth"]).convert("RGB").resize((32, 16), Image.BICUBIC)) / 255.0
    np.testing.assert_allclose(images[3].numpy(), expected, atol=1e-6)


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
    assert len(ds) == 2 and enc.images == 2 and enc.texts == ["", "a room number 0", "a room number 1"]
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
