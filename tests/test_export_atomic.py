"""Files and scene folders are complete or absent; lumix.json is strict JSON (issue 10, items 3 and 8)."""
import errno
import math
import os

import numpy as np
import pytest
import torch

from disk_faults import FullDisk, strict_loads
from lumix_core import export
from lumix_core.export import (atomic_path, saveable_map, scene_folder, sidecar_json, write_bytes, write_png16,
                               write_sidecar)


def test_full_disk_leaves_no_file_under_its_name(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "open_for_writing", FullDisk(10))
    with pytest.raises(OSError) as err:
        write_bytes(str(tmp_path / "a.png"), b"x" * 100)
    assert err.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []  # neither a.png nor its temporary file


def test_write_bytes_and_png16_complete(tmp_path):
    write_bytes(str(tmp_path / "a.bin"), b"abc")
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    write_png16(str(tmp_path / "g.png"), np.full((2, 3), 7, np.uint16))
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "g.png"]


def test_atomic_path_removes_the_temporary_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(str(tmp_path / "x.exr")) as temporary:
            open(temporary, "wb").write(b"half")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []


def test_scene_folder_is_complete_or_absent(tmp_path, monkeypatch):
    with scene_folder(str(tmp_path), "LumiX/scene") as first:
        write_bytes(os.path.join(first.temporary, "a.png"), b"1")
        assert os.listdir(tmp_path / "LumiX") == [os.path.basename(first.temporary)]  # only the hidden .part
    assert first.path == str(tmp_path / "LumiX" / "scene_00001") and os.listdir(first.path) == ["a.png"]
    monkeypatch.setattr(export, "open_for_writing", FullDisk(3))
    with pytest.raises(OSError):
        with scene_folder(str(tmp_path), "LumiX/scene") as second:
            write_bytes(os.path.join(second.temporary, "a.png"), b"12")
            write_bytes(os.path.join(second.temporary, "b.png"), b"34")
    assert os.listdir(tmp_path / "LumiX") == ["scene_00001"]
    monkeypatch.undo()
    with scene_folder(str(tmp_path), "LumiX/scene") as third:
        write_bytes(os.path.join(third.temporary, "c.png"), b"3")
    assert sorted(os.listdir(tmp_path / "LumiX")) == ["scene_00001", "scene_00002"]


def test_scene_folder_never_renames_over_an_existing_one(tmp_path, monkeypatch):
    (tmp_path / "s_00001").mkdir()
    (tmp_path / "s_00001" / "keep").write_text("old")
    calls = []
    real = export._next_free_name

    def stale(root, prefix):  # first answer is stale (another save finished meanwhile)
        calls.append(1)
        return str(tmp_path / "s_00001") if len(calls) == 1 else real(root, prefix)
    monkeypatch.setattr(export, "_next_free_name", stale)
    with scene_folder(str(tmp_path), "s") as scene:
        write_bytes(os.path.join(scene.temporary, "new"), b"n")
    assert scene.path.endswith("s_00002") and (tmp_path / "s_00001" / "keep").read_text() == "old"


def test_sidecar_is_strict_json_with_nulls_and_a_flag():
    text = sidecar_json({"metrics": {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float64(-np.inf),
                                     "d": (1, 2), "e": torch.tensor(0.5).item()}, "seed": 2**64 - 1})
    data = strict_loads(text)
    assert data["metrics"] == {"a": None, "b": [1.0, None], "c": None, "d": [1, 2], "e": 0.5}
    assert data["non_finite_numbers"] == ["metrics.a", "metrics.b[1]", "metrics.c"]
    assert data["seed"] == 2**64 - 1
    assert "non_finite_numbers" not in strict_loads(sidecar_json({"x": 1.0}))


def test_write_sidecar_refuses_to_overwrite(tmp_path):
    write_sidecar(str(tmp_path / "lumix.json"), {"v": math.nan})
    with pytest.raises(FileExistsError):
        write_sidecar(str(tmp_path / "lumix.json"), {"v": 2})
    assert strict_loads((tmp_path / "lumix.json").read_text())["v"] is None


def test_saveable_map_channels_and_non_finite():
    grey = torch.rand(2, 4, 5, 1)
    rgb, bad = saveable_map("depth", grey)
    assert rgb.shape == (2, 4, 5, 3) and bad == [0, 0] and torch.equal(rgb[..., 2], grey[..., 0])
    rgba = torch.rand(1, 4, 5, 4)
    rgba[0, 0, 0, 0], rgba[0, 0, 1, 1], rgba[0, 1, 1, 2], rgba[0, 2, 2, 3] = math.nan, math.inf, -math.inf, math.nan
    rgb, bad = saveable_map("color", rgba)
    assert bad == [3]  # the NaN in the dropped alpha does not count
    assert (rgb[0, 0, 0, 0], rgb[0, 0, 1, 1], rgb[0, 1, 1, 2]) == (0.0, 1.0, 0.0)
    assert torch.equal(rgb[0, 3], rgba[0, 3, :, :3])


@pytest.mark.parametrize("shape,problem", [((1, 0, 0, 3), "is empty"), ((0, 8, 8, 3), "is empty"),
                                           ((1, 8, 8, 5), "has 5 channels"), ((8, 8, 3), "is not an IMAGE batch")])
def test_saveable_map_refuses_odd_shapes(shape, problem):
    with pytest.raises(ValueError, match=f"LumiX Save Maps: the albedo input {problem}"):
        saveable_map("albedo", torch.zeros(shape))
