import json
import math
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumix_core import CheckpointError, TensorLoRA, checkpoint_from_state_dict, load_checkpoint, save_checkpoint
from lumix_core.maps import CHECKPOINT_MAP_NAMES
from tiny_flux import official_state_dict

HIDDEN, M, R, DOUBLE, SINGLE = 16, 5, 3, 2, 3


def write(tmp_path, sd, name="lumix.safetensors", metadata=None):
    path = tmp_path / name
    save_file(sd, str(path), metadata=metadata)
    return str(path)


def test_reads_official_layout_and_infers_sizes(tmp_path):
    sd = official_state_dict()
    ckpt = load_checkpoint(write(tmp_path, sd))
    assert (ckpt.num_maps, ckpt.rank, ckpt.hidden_size, ckpt.alpha) == (M, R, HIDDEN, 1.0)
    assert ckpt.covered("double_blocks") == [0, 1] and ckpt.covered("single_blocks") == [0, 1, 2]
    assert ckpt.parameter_count() == sum(t.numel() for t in sd.values())
    assert torch.equal(ckpt.adapters[("single_blocks", 2)]["proj_tt_lora"].G2,
                       sd["single_blocks.2.processor.proj_tt_lora.G2"])
    assert "5 maps, rank 3" in ckpt.summary()
    ckpt.validate_for_model(HIDDEN, DOUBLE, SINGLE)
    ckpt.validate_for_model(HIDDEN, 19, 38)  # a partial checkpoint fits a larger model


@pytest.mark.parametrize("prefix", ["diffusion_model.", "transformer.", "model.diffusion_model."])
def test_accepts_a_leading_prefix(tmp_path, prefix):
    ckpt = load_checkpoint(write(tmp_path, official_state_dict(prefix=prefix)))
    assert ckpt.prefix == prefix and ckpt.covered("double_blocks") == [0, 1]


def test_alpha_from_metadata_reaches_the_adapter(tmp_path):
    sd = official_state_dict()
    ckpt = load_checkpoint(write(tmp_path, sd, metadata={"alpha": "4.0"}))
    lora = ckpt.tensor_loras(dtype=torch.float64)[("double_blocks", 1)]["kv_tt_lora"]
    assert lora.alpha == 4.0 and not lora.G1.requires_grad
    x = torch.randn(M, 2, HIDDEN, dtype=torch.float64)
    G1, G2, G3 = (sd[f"double_blocks.1.processor.kv_tt_lora.{n}"].double() for n in ("G1", "G2", "G3"))
    expected = torch.einsum("jlu,iurq,ijq,ior->ilo", x, G2, G1, G3) * 4.0 / math.sqrt(R)
    torch.testing.assert_close(lora(x), expected, rtol=1e-10, atol=1e-10)
    assert ("double_blocks", 7) not in ckpt.tensor_loras()


def test_round_trip_write_read(tmp_path):
    adapters = {}
    for kind, n in (("double_blocks", 2), ("single_blocks", 1)):
        for i in range(n):
            adapters[(kind, i)] = {"kv_tt_lora": TensorLoRA(M, HIDDEN, 2 * HIDDEN, R, alpha=2.0),
                                   "proj_tt_lora": TensorLoRA(M, HIDDEN, HIDDEN, R, alpha=2.0)}
            for lora in adapters[(kind, i)].values():
                torch.nn.init.normal_(lora.G3)
    path = str(tmp_path / "out.safetensors")
    save_checkpoint(path, adapters)
    raw = load_file(path)  # what the reference code would see: plain keys, no prefix
    assert set(raw) == {f"{k}.{i}.processor.{a}.{g}" for (k, i) in adapters
                        for a in ("kv_tt_lora", "proj_tt_lora") for g in ("G1", "G2", "G3")}
    ckpt = load_checkpoint(path)
    assert ckpt.alpha == 2.0 and ckpt.rank == R and ckpt.num_maps == M
    assert json.loads(ckpt.metadata["map_names"]) == list(CHECKPOINT_MAP_NAMES)
    assert ckpt.metadata["format_version"] == "1"
    for (kind, i), block in adapters.items():
        for name, lora in block.items():
            back = ckpt.adapters[(kind, i)][name]
            assert torch.equal(back.G1, lora.G1) and torch.equal(back.G2, lora.G2) and torch.equal(back.G3, lora.G3)


def test_round_trip_of_an_official_file(tmp_path):
    sd = official_state_dict(prefix="transformer.")
    ckpt = load_checkpoint(write(tmp_path, sd))
    adapters = ckpt.tensor_loras()
    out = str(tmp_path / "again.safetensors")
    save_checkpoint(out, adapters)
    again = load_file(out)
    assert set(again) == {k[len("transformer."):] for k in sd}
    for k, v in sd.items():
        assert torch.equal(again[k[len("transformer."):]], v)


# ---- error paths -------------------------------------------------------------------------------

def test_not_safetensors(tmp_path):
    p = tmp_path / "model.ckpt"
    p.write_bytes(b"PK\x03\x04 this is a zip/pickle checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(str(p))
    p.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(str(p))
    bad_json = b"{not json}"
    p.write_bytes(struct.pack("<Q", len(bad_json)) + bad_json)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(str(p))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="models/lumix"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))


def test_truncated(tmp_path):
    path = write(tmp_path, official_state_dict())
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_no_lumix_keys(tmp_path):
    path = write(tmp_path, {"lora_unet_down.lora_up.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="no LumiX keys.*lora_unet_down"):
        load_checkpoint(path)


def test_missing_factor(tmp_path):
    sd = official_state_dict()
    del sd["single_blocks.1.processor.proj_tt_lora.G3"]
    with pytest.raises(CheckpointError, match=r"single_blocks\.1\.processor\.proj_tt_lora lacks G3"):
        load_checkpoint(write(tmp_path, sd))


def test_inconsistent_rank_between_blocks(tmp_path):
    sd = official_state_dict()
    other = official_state_dict(R=R + 1)
    for g in ("G1", "G2", "G3"):
        sd[f"single_blocks.2.processor.kv_tt_lora.{g}"] = other[f"single_blocks.2.processor.kv_tt_lora.{g}"]
    with pytest.raises(CheckpointError, match=r"single_blocks\.2\.processor\.kv_tt_lora has 5 maps and rank 4"):
        load_checkpoint(write(tmp_path, sd))


def test_inconsistent_shapes_inside_an_adapter(tmp_path):
    sd = official_state_dict()
    sd["double_blocks.0.processor.kv_tt_lora.G1"] = torch.randn(M, M - 1, R)
    with pytest.raises(CheckpointError, match="inconsistent shapes"):
        load_checkpoint(write(tmp_path, sd))
    sd = official_state_dict()
    sd["double_blocks.0.processor.kv_tt_lora.G2"] = torch.randn(M, HIDDEN, R)
    with pytest.raises(CheckpointError, match="expected G1 \\[M,M,R\\]"):
        load_checkpoint(write(tmp_path, sd))


def test_inconsistent_width_between_blocks(tmp_path):
    sd = official_state_dict()
    wide = official_state_dict(hidden=HIDDEN * 2)
    for g in ("G1", "G2", "G3"):
        sd[f"single_blocks.0.processor.proj_tt_lora.{g}"] = wide[f"single_blocks.0.processor.proj_tt_lora.{g}"]
    with pytest.raises(CheckpointError, match=r"single_blocks\.0\.processor\.proj_tt_lora maps width 32 to 32; expected 16 to 16"):
        load_checkpoint(write(tmp_path, sd))


def test_kv_adapter_must_double_the_width(tmp_path):
    sd = official_state_dict()
    sd["double_blocks.0.processor.kv_tt_lora.G3"] = torch.randn(M, HIDDEN, R)
    with pytest.raises(CheckpointError, match="expected 16 to 32"):
        load_checkpoint(write(tmp_path, sd))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf(tmp_path, bad):
    sd = official_state_dict()
    sd["double_blocks.1.processor.proj_tt_lora.G2"][0, 0, 0, 0] = bad
    with pytest.raises(CheckpointError, match=r"double_blocks\.1\.processor\.proj_tt_lora\.G2 contains NaN or Inf"):
        load_checkpoint(write(tmp_path, sd))


def test_width_does_not_match_model(tmp_path):
    ckpt = load_checkpoint(write(tmp_path, official_state_dict()))
    with pytest.raises(CheckpointError, match=r"width 16, but the model has width 3072.*double_blocks\.0\.processor"):
        ckpt.validate_for_model(3072, 19, 38)


def test_block_count_does_not_match_model(tmp_path):
    ckpt = load_checkpoint(write(tmp_path, official_state_dict()))
    with pytest.raises(CheckpointError, match=r"single_blocks\.2 but the model has only 2"):
        ckpt.validate_for_model(HIDDEN, DOUBLE, 2)


def test_mixed_prefixes_and_bad_metadata():
    sd = official_state_dict(double=1, single=0)
    sd.update(official_state_dict(double=0, single=1, prefix="transformer."))
    with pytest.raises(CheckpointError, match="mixes key prefixes"):
        checkpoint_from_state_dict(sd)
    with pytest.raises(CheckpointError, match="alpha='x' is not a number"):
        checkpoint_from_state_dict(official_state_dict(), {"alpha": "x"})
    with pytest.raises(CheckpointError, match="metadata says rank 8"):
        checkpoint_from_state_dict(official_state_dict(), {"rank": "8"})


def test_tensor_loras_is_a_private_copy_and_consume_leaves_one_copy(tmp_path):
    sd = official_state_dict()
    ckpt = load_checkpoint(write(tmp_path, sd))
    file_g2 = ckpt.adapters[("double_blocks", 0)]["kv_tt_lora"].G2
    kept = ckpt.tensor_loras(dtype=torch.float64)
    module = kept[("double_blocks", 0)]["kv_tt_lora"]
    assert module.G2.dtype == torch.float64 and module.G2.data_ptr() != file_g2.data_ptr()
    # the checkpoint still holds its own factors; changing them does not reach the module
    assert ckpt.adapters[("double_blocks", 0)]["kv_tt_lora"].G2 is file_g2
    file_g2.add_(1.0)
    assert torch.equal(module.G2, sd["double_blocks.0.processor.kv_tt_lora.G2"].double())
    consumed = ckpt.tensor_loras(consume=True)
    for block, modules in consumed.items():
        for name, lora in modules.items():
            assert ckpt.adapters[block][name].G3 is lora.G3 and not lora.G3.requires_grad
    assert set(consumed) == set(ckpt.adapters) and ("single_blocks", 2) in consumed


def test_trainable_adapters_from_a_checkpoint_are_the_factory_s_values_and_learn(tmp_path):
    from lumix_core.training import LumiXAdapters
    sd = official_state_dict()
    ckpt = load_checkpoint(write(tmp_path, sd, metadata={"alpha": "2.5"}))
    adapters = LumiXAdapters.from_checkpoint(ckpt, DOUBLE + 1, SINGLE)  # one more double block than the file
    assert adapters.alpha == 2.5 and adapters.rank == R
    for key, value in sd.items():
        kind, index, _, name, factor = key.split(".")
        p = getattr(adapters.adapter(kind, int(index), name), factor)
        assert p.requires_grad and p.dtype == torch.float32 and torch.equal(p.detach(), value.float())
    fresh = adapters.adapter("double_blocks", DOUBLE, "kv_tt_lora")  # not in the file: starts as a no-op
    assert torch.count_nonzero(fresh.G3) == 0 and fresh.G3.requires_grad
    assert len(list(adapters.parameters())) == 3 * 2 * (DOUBLE + 1 + SINGLE)
