"""Telling LumiX checkpoints from other files by their safetensors header, without loading tensors."""
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from lumix_core.checkpoint_sniff import LumiXFileCache, has_lumix_keys, is_lumix_file, read_header
from tiny_flux import official_state_dict


def raw_safetensors(path, header: dict, data: bytes = b""):
    """A safetensors file written byte by byte here (8-byte little-endian length, JSON, data)."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return str(path)


@pytest.fixture
def files(tmp_path):
    save_file(official_state_dict(), str(tmp_path / "lumix.safetensors"))
    save_file(official_state_dict(prefix="diffusion_model."), str(tmp_path / "prefixed.safetensors"))
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 16),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(48, 4)},
              str(tmp_path / "flux_style_lora.safetensors"))
    (tmp_path / "garbage.safetensors").write_bytes(os.urandom(64))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    # a header that names a LumiX key but is cut off before its end
    cut = tmp_path / "cut.safetensors"
    blob = json.dumps({"double_blocks.0.processor.kv_tt_lora.G1": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    cut.write_bytes(struct.pack("<Q", len(blob)) + blob[: len(blob) // 2])
    return tmp_path


def test_lumix_files_are_recognised_with_or_without_a_prefix(files):
    assert is_lumix_file(str(files / "lumix.safetensors"))
    assert is_lumix_file(str(files / "prefixed.safetensors"))


@pytest.mark.parametrize("name", ["flux_style_lora.safetensors", "garbage.safetensors", "empty.safetensors",
                                  "cut.safetensors", "missing.safetensors"])
def test_other_and_unreadable_files_are_not(files, name):
    assert is_lumix_file(str(files / name)) is False


def test_a_deeply_nested_header_is_not_lumix_rather_than_a_crash(tmp_path):
    # json answers deep nesting with RecursionError, not ValueError; the loader's menu must not fail on it
    blob = b'{"double_blocks.0.processor.kv_tt_lora.G1": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "nested.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    assert is_lumix_file(str(path)) is False
    with pytest.raises(ValueError, match="nested too deeply"):
        read_header(str(path))


def test_the_header_is_read_without_the_tensor_data(tmp_path):
    # a header whose tensor data is absent entirely: a full load would fail, the header read does not
    key = "single_blocks.7.processor.proj_tt_lora.G3"
    path = raw_safetensors(tmp_path / "header_only.safetensors",
                           {key: {"dtype": "F32", "shape": [5, 16, 3], "data_offsets": [0, 960]}, "__metadata__": {"a": "b"}})
    assert set(read_header(path)) == {key, "__metadata__"} and is_lumix_file(path)


def test_key_matching_is_exact():
    assert has_lumix_keys({"transformer.double_blocks.3.processor.kv_tt_lora.G2": {}})
    for key in ("double_blocks.3.processor.kv_tt_lora.G4", "double_blocks.x.processor.kv_tt_lora.G1",
                "double_blocks.3.processor.kv_tt_lora.G1.extra", "mydouble_blocks.3.processor.kv_tt_lora.G1",
                "double_blocks.3.img_attn.kv_tt_lora.G1"):
        assert not has_lumix_keys({key: {}}), key
    assert not has_lumix_keys({"__metadata__": {"double_blocks.0.processor.kv_tt_lora.G1": "x"}})


def test_cache_reads_again_only_when_size_or_mtime_change(tmp_path):
    cache = LumiXFileCache()
    lumix_key = {"double_blocks.0.processor.kv_tt_lora.G1": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    other_key = {"double_blocks.0.processor.kv_tt_lora.X1": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    path = raw_safetensors(tmp_path / "a.safetensors", lumix_key, b"\0" * 4)
    assert cache.is_lumix(path)
    stat = os.stat(path)
    # same size, same mtime, other content: the remembered answer stands (the file was not read again)
    raw_safetensors(tmp_path / "a.safetensors", other_key, b"\0" * 4)
    assert os.path.getsize(path) == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.is_lumix(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: read again
    assert not cache.is_lumix(path)
    os.remove(path)
    assert not cache.is_lumix(path)


def test_cache_forgets_files_no_longer_listed(tmp_path):
    cache = LumiXFileCache()
    paths = [raw_safetensors(tmp_path / f"{i}.safetensors", {}) for i in range(3)]
    for p in paths:
        cache.is_lumix(p)
    cache.forget_missing({paths[0]})
    assert set(cache._known) == {paths[0]}
