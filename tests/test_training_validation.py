"""Validation images (host-free): one five-map grid per caption, a sheet of all captions, their files."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lumix_core.maps import MAP_NAMES
from lumix_core.training import validation as v

H, W = 24, 40


def random_maps(seed, height=H, width=W):
    g = torch.Generator().manual_seed(seed)
    maps = {name: torch.rand(height, width, 3, generator=g) for name in MAP_NAMES}
    maps["albedo"][0, 0] = torch.tensor([0.0, 1.0, 0.5])  # the ends of the range and a half level
    maps["albedo"][0, 1] = torch.tensor([1 / 510, 3 / 510, 254.5 / 255])  # exactly between two levels
    return maps


def to_8bit(image):
    """Independent 8-bit conversion: nearest level, ties to even (float32, as the maps are)."""
    scaled = image.numpy().astype(np.float32) * np.float32(255.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def test_scene_grid_places_each_map_in_map_order_at_its_offset_in_8bit():
    maps = random_maps(0)
    grid = np.asarray(v.scene_grid(maps, "a living room"))
    gap, label = 2, 24  # the documented layout, restated
    assert (v.GRID_GAP, v.LABEL_HEIGHT) == (gap, label)
    assert grid.shape == (label + H, 5 * W + 4 * gap, 3) and grid.dtype == np.uint8
    for k, name in enumerate(["albedo", "irradiance", "color", "depth", "normal"]):
        x = k * (W + gap)
        np.testing.assert_array_equal(grid[label:, x:x + W], to_8bit(maps[name]), err_msg=name)
        if k < 4:  # the gap after it is background
            assert (grid[label:, x + W:x + W + gap] == v.GRID_BACKGROUND).all()
    assert tuple(grid[label, 0]) == (0, 255, 128)  # 0.5 * 255 = 127.5 -> 128 (ties to even)
    assert tuple(grid[label, 1]) == (0, 2, 254)  # 0.5 -> 0, 1.5 -> 2, 254.5 -> 254


def test_scene_grid_label_row_holds_text_and_the_caption_is_cut_to_the_width():
    maps = random_maps(1)
    short = np.asarray(v.scene_grid(maps, "room"))
    longer = np.asarray(v.scene_grid(maps, "room " + "with a very long description " * 20))
    caption_row, names_row = short[:v.LINE_HEIGHT], short[v.LINE_HEIGHT:v.LABEL_HEIGHT]
    text = lambda pixels: (pixels.mean(-1) > 128).sum()  # light text (antialiased) on the dark background
    assert text(caption_row) > 10 and text(names_row) > 50
    # every map column has its name written over it
    for k in range(5):
        x = k * (W + v.GRID_GAP)
        assert text(names_row[:, x:x + W]) > 5, k
    assert longer.shape == short.shape  # a long caption never widens the grid
    assert (longer[:v.LINE_HEIGHT, -20:] != v.GRID_BACKGROUND).any()  # it fills the line, up to '...'
    np.testing.assert_array_equal(longer[v.LINE_HEIGHT:], short[v.LINE_HEIGHT:])  # and nothing else moves
    drawn = Image.new("RGB", (200, 20))
    from PIL import ImageDraw
    draw = ImageDraw.Draw(drawn)
    cut = v._fit(draw, "a\nb  " + "x" * 100, 60)
    assert cut.startswith("a b x") and cut.endswith("...") and draw.textlength(cut) <= 60


def test_scene_grid_refuses_missing_mismatched_and_non_finite_maps():
    maps = random_maps(2)
    with pytest.raises(ValueError, match="depth missing"):
        v.scene_grid({k: t for k, t in maps.items() if k != "depth"}, "x")
    with pytest.raises(ValueError, match=r"normal is \[24, 20, 3\], albedo \[24, 40, 3\]"):
        v.scene_grid({**maps, "normal": maps["normal"][:, :20]}, "x")
    bad = maps["color"].clone()
    bad[3, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="the color map holds NaN"):
        v.scene_grid({**maps, "color": bad}, "x")


def test_sheet_stacks_the_grids_in_order():
    grids = [v.scene_grid(random_maps(s), f"scene {s}") for s in range(3)]
    sheet = np.asarray(v.validation_sheet(grids))
    h = v.LABEL_HEIGHT + H
    assert sheet.shape == (3 * h + 2 * v.GRID_GAP, grids[0].width, 3)
    for s, grid in enumerate(grids):
        y = s * (h + v.GRID_GAP)
        np.testing.assert_array_equal(sheet[y:y + h], np.asarray(grid))
    with pytest.raises(ValueError, match="at least one"):
        v.validation_sheet([])


def test_grids_are_written_under_their_step_and_index_with_no_temporary_left(tmp_path):
    grids = [v.scene_grid(random_maps(s), f"scene {s}") for s in range(2)]
    paths = v.write_validation_grids(str(tmp_path), 120, grids)
    folder = tmp_path / "validation"
    assert paths == [str(folder / "step_000120_0.png"), str(folder / "step_000120_1.png")]
    assert sorted(os.listdir(tmp_path / "validation")) == ["step_000120_0.png", "step_000120_1.png"]
    for path, grid in zip(paths, grids):
        with Image.open(path) as written:
            assert written.format == "PNG"
            np.testing.assert_array_equal(np.asarray(written.convert("RGB")), np.asarray(grid))
    assert v.validation_image_path("run", 1234567, 3) == os.path.join("run", "validation", "step_1234567_3.png")


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path, monkeypatch):
    grids = [v.scene_grid(random_maps(0), "scene")]
    v.write_validation_grids(str(tmp_path), 1, grids)

    def torn_save(self, fp, format=None, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("No space left on device")
    monkeypatch.setattr(Image.Image, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        v.write_validation_grids(str(tmp_path), 2, grids)
    assert os.listdir(tmp_path / "validation") == ["step_000001_0.png"]  # the earlier one intact, nothing else
