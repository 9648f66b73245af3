"""Damaged, hostile or absurd checkpoints end in CheckpointError naming the key and the problem
(issue 10, items 2 and 6), including a property-based fuzz of the safetensors header."""
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lumix_core import CheckpointError, LumiXCheckpoint, checkpoint_from_state_dict, load_checkpoint
from lumix_core.checkpoint import MAX_ALPHA, MAX_CHECKPOINT_RANK, MAX_FACTOR_MAGNITUDE
from tiny_flux import official_state_dict

KEY = "double_blocks.0.processor.kv_tt_lora.G1"


def write(tmp_path, sd, metadata=None, name="lumix.safetensors"):
    path = tmp_path / name
    save_file(sd, str(path), metadata=metadata)
    return str(path)


def raw_file(path, header, data=b""):
    """A safetensors file from a header written here (any JSON value) and raw data bytes."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return str(path)


def valid_parts(tmp_path):
    """(header dict, data bytes) of a small valid checkpoint, split here from the file."""
    path = write(tmp_path, official_state_dict(hidden=4, R=1, double=1, single=0), name="valid.safetensors")
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


# ---- header ------------------------------------------------------------------------------------

@pytest.mark.parametrize("offsets", ["0,48", 48, [], [0], [8, 0], [0, 1, 2], [0.0, 48.0], [True, 48], None])
def test_malformed_offsets_name_the_key(tmp_path, offsets):
    header, data = valid_parts(tmp_path)
    header[KEY]["data_offsets"] = offsets
    with pytest.raises(CheckpointError, match=rf"tensor '{KEY}' has data_offsets"):
        load_checkpoint(raw_file(tmp_path / "bad.safetensors", header, data))


@pytest.mark.parametrize("field,value,problem", [
    ("dtype", "F128", "unknown dtype 'F128'"), ("dtype", 4, "unknown dtype"),
    ("shape", "5,5,1", "has shape"), ("shape", [5, -5, 1], "has shape"), ("shape", [1] * 9, "has shape"),
    ("shape", [5, 5, 2], "needs 200 bytes but its offsets span 100"),
])
def test_malformed_dtype_and_shape_name_the_key(tmp_path, field, value, problem):
    header, data = valid_parts(tmp_path)
    header[KEY][field] = value
    with pytest.raises(CheckpointError, match=rf"'{KEY}'.*{problem}"):
        load_checkpoint(raw_file(tmp_path / "bad.safetensors", header, data))


def test_entry_that_is_not_an_object(tmp_path):
    header, data = valid_parts(tmp_path)
    header[KEY] = [1, 2]
    with pytest.raises(CheckpointError, match=rf"'{KEY}' has a header entry of type list"):
        load_checkpoint(raw_file(tmp_path / "bad.safetensors", header, data))


def test_overlapping_offsets(tmp_path):
    header, data = valid_parts(tmp_path)
    other = "double_blocks.0.processor.kv_tt_lora.G3"
    size = header[other]["data_offsets"][1] - header[other]["data_offsets"][0]
    begin = header[KEY]["data_offsets"][0]
    header[other]["data_offsets"] = [begin, begin + size]
    with pytest.raises(CheckpointError, match="overlap"):
        load_checkpoint(raw_file(tmp_path / "bad.safetensors", header, data))


def test_truncated_data_names_the_key(tmp_path):
    header, data = valid_parts(tmp_path)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    with pytest.raises(CheckpointError, match=rf"truncated: '{last}' ends at byte"):
        load_checkpoint(raw_file(tmp_path / "cut.safetensors", header, data[:-1]))


def test_deeply_nested_json_is_not_a_recursion_error(tmp_path):
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint(raw_file(tmp_path / "deep.safetensors", nested))


@pytest.mark.parametrize("header", [[1, 2], "text", 3, None])
def test_header_that_is_not_an_object(tmp_path, header):
    with pytest.raises(CheckpointError, match="not an object"):
        load_checkpoint(raw_file(tmp_path / "bad.safetensors", header))


@pytest.mark.parametrize("metadata", [[1], {"alpha": 1.0}, "x"])
def test_metadata_must_map_names_to_strings(tmp_path, metadata):
    header, data = valid_parts(tmp_path)
    header["__metadata__"] = metadata
    with pytest.raises(CheckpointError, match="__metadata__ must map names to strings"):
        load_checkpoint(raw_file(tmp_path / "bad.safetensors", header, data))


def test_a_hole_between_tensors_is_wrapped(tmp_path):
    """Gaps pass this project's checks; safetensors' own parser refuses them, and that is wrapped."""
    header, data = valid_parts(tmp_path)
    shifted = {k: dict(v, data_offsets=[v["data_offsets"][0] + 4, v["data_offsets"][1] + 4])
               for k, v in header.items() if k != "__metadata__"}
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        load_checkpoint(raw_file(tmp_path / "gap.safetensors", shifted, b"\0" * 4 + data))


# ---- metadata and values -----------------------------------------------------------------------

@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf", "1e400", "-1e39", "0", "-1", "1e5", "", "0x10"])
def test_absurd_alpha_is_refused(tmp_path, alpha):
    path = write(tmp_path, official_state_dict(), {"alpha": alpha})
    with pytest.raises(CheckpointError, match=rf"alpha='{alpha}' is (not a number|out of range).*\(0, 10000\]"):
        load_checkpoint(path)


@pytest.mark.parametrize("alpha", ["1", "16.0", repr(MAX_ALPHA)])
def test_ordinary_alpha_is_accepted(tmp_path, alpha):
    assert load_checkpoint(write(tmp_path, official_state_dict(), {"alpha": alpha})).alpha == float(alpha)


@pytest.mark.parametrize("value", [3e38, -2 * MAX_FACTOR_MAGNITUDE])
def test_absurd_factor_values_are_refused(tmp_path, value):
    sd = official_state_dict()
    sd["single_blocks.1.processor.proj_tt_lora.G3"][2, 3, 0] = value
    with pytest.raises(CheckpointError, match=r"single_blocks\.1\.processor\.proj_tt_lora\.G3 holds values up to"):
        load_checkpoint(write(tmp_path, sd))


def test_large_but_sane_factor_values_are_accepted(tmp_path):
    sd = official_state_dict()
    sd[KEY][0, 0, 0] = MAX_FACTOR_MAGNITUDE / 2
    assert load_checkpoint(write(tmp_path, sd)).adapters[("double_blocks", 0)]["kv_tt_lora"].G1[0, 0, 0] == 5000.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float_dtypes_are_kept(tmp_path, dtype):
    sd = {k: v.to(dtype) for k, v in official_state_dict().items()}
    ckpt = load_checkpoint(write(tmp_path, sd))
    g2 = ckpt.adapters[("single_blocks", 0)]["kv_tt_lora"].G2
    assert g2.dtype == dtype and torch.equal(g2, sd["single_blocks.0.processor.kv_tt_lora.G2"])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_is_widened_to_bf16_exactly(tmp_path, dtype):
    sd = {k: v.to(dtype) for k, v in official_state_dict().items()}
    ckpt = load_checkpoint(write(tmp_path, sd))
    g3 = ckpt.adapters[("double_blocks", 1)]["proj_tt_lora"].G3
    assert g3.dtype == torch.bfloat16
    assert torch.equal(g3.double(), sd["double_blocks.1.processor.proj_tt_lora.G3"].double())
    assert ckpt.tensor_loras()[("double_blocks", 1)]["proj_tt_lora"] is not None


def test_fp8_nan_is_refused_not_not_implemented(tmp_path):
    sd = {k: v.to(torch.float8_e4m3fn) for k, v in official_state_dict().items()}
    sd[KEY] = sd[KEY].float()
    sd[KEY][0, 0, 0] = float("nan")
    sd[KEY] = sd[KEY].to(torch.float8_e4m3fn)
    with pytest.raises(CheckpointError, match=rf"{KEY} contains NaN or Inf"):
        load_checkpoint(write(tmp_path, sd))


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool])
def test_non_float_dtypes_are_refused_by_name(tmp_path, dtype):
    sd = official_state_dict()
    sd[KEY] = sd[KEY].to(dtype)
    with pytest.raises(CheckpointError, match=rf"{KEY} has dtype {dtype}; LumiX factors are float32, float16 or bfloat16"):
        load_checkpoint(write(tmp_path, sd))


def test_float64_is_narrowed_to_float32(tmp_path):
    sd = {k: v.double() for k, v in official_state_dict().items()}
    ckpt = load_checkpoint(write(tmp_path, sd))
    assert ckpt.adapters[("double_blocks", 0)]["kv_tt_lora"].G1.dtype == torch.float32


# ---- sizes -------------------------------------------------------------------------------------

def test_rank_zero_is_refused_at_load(tmp_path):
    with pytest.raises(CheckpointError, match=r"double_blocks\.0\.processor\.kv_tt_lora is empty .*rank 0"):
        load_checkpoint(write(tmp_path, official_state_dict(R=0)))


def test_rank_above_the_supported_bound_is_refused(tmp_path):
    sd = official_state_dict(hidden=2, R=MAX_CHECKPOINT_RANK + 1, double=1, single=0)
    with pytest.raises(CheckpointError, match=rf"has rank {MAX_CHECKPOINT_RANK + 1}; this loader supports ranks 1 to"):
        checkpoint_from_state_dict(sd)


@pytest.mark.parametrize("maps", [1, 3, 6])
def test_map_counts_the_sampler_cannot_use_are_refused_with_advice(tmp_path, maps):
    ckpt = load_checkpoint(write(tmp_path, official_state_dict(M=maps)))
    assert ckpt.num_maps == maps  # readable (e.g. for training tools) ...
    with pytest.raises(CheckpointError, match=rf"mixes {maps} maps per scene .*sampler makes 5 maps.*Pick a 5-map checkpoint in the loader.s lumix_name"):
        ckpt.validate_for_model(16, 2, 3)  # ... but refused for a model the sampler will use


def test_metadata_map_count_must_match_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="metadata says 4 maps but the tensors have 5"):
        load_checkpoint(write(tmp_path, official_state_dict(), {"num_maps": "4"}))


# ---- fuzz --------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def mutate(draw, header, data):
    """One hostile change to a valid (header, data): returns the file's bytes."""
    kind = draw(st.sampled_from(["field", "entry", "metadata", "drop", "truncate", "header_bytes", "length"]))
    keys = sorted(k for k in header if k != "__metadata__")
    header = json.loads(json.dumps(header))
    if kind == "field":
        key = draw(st.sampled_from(keys))
        header[key][draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(JSON)
    elif kind == "entry":
        header[draw(st.sampled_from(keys) | st.text(max_size=40))] = draw(JSON)
    elif kind == "metadata":
        header["__metadata__"] = draw(JSON | st.dictionaries(st.sampled_from(["alpha", "rank", "num_maps"]),
                                                             st.text(max_size=10)))
    elif kind == "drop":
        del header[draw(st.sampled_from(keys))][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    blob = json.dumps(header).encode()
    raw = struct.pack("<Q", len(blob)) + blob + data
    if kind == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif kind == "header_bytes":
        at = draw(st.integers(8, 8 + len(blob) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
    elif kind == "length":
        raw = struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + raw[8:]
    return raw


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_headers_only_raise_checkpoint_error(tmp_path, data):
    header, payload = valid_parts(tmp_path)
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(mutate(data.draw, header, payload))
    try:
        result = load_checkpoint(str(path))
    except CheckpointError as exc:
        assert str(exc)  # a message, not an empty error
    else:
        assert isinstance(result, LumiXCheckpoint)
