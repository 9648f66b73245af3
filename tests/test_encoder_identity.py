"""The dataset cache's encoder fingerprint: the same from a file (read in rows) and from the model a host
built from it (other names, other dtype), sensitive to the weights, blind to what a host adds."""
import torch
from safetensors.torch import save_file

from lumix_core.training.encoder_identity import (
    SAMPLES, canonical_name, chosen, encoder_id, fingerprint_file, fingerprint_tensors, sample_positions,
)

SHAPES = {f"encoder.block.{i}.layer.0.SelfAttention.q.weight": (12, 7) for i in range(6)}
SHAPES.update({"shared.weight": (40, 7), "encoder.final_layer_norm.weight": (7,), "encoder.conv.weight": (4, 3, 3, 3)})


def weights(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}


def test_a_file_and_the_host_model_built_from_it_agree(tmp_path):
    w = weights(dtype=torch.float16)
    save_file(w, str(tmp_path / "t5.safetensors"))
    # as ComfyUI holds it: under a wrapper prefix, upcast to float32, with a projection the file lacks
    held = {"transformer." + k: v.float() for k, v in w.items()}
    held["transformer.text_projection.weight"] = torch.full((7, 7), float("nan"))  # uninitialised memory
    assert fingerprint_file(str(tmp_path / "t5.safetensors")) == fingerprint_tensors(held)
    save_file({k: v.float() for k, v in w.items()}, str(tmp_path / "t5_fp32.safetensors"))
    assert fingerprint_file(str(tmp_path / "t5_fp32.safetensors")) == fingerprint_file(str(tmp_path / "t5.safetensors"))


def test_changed_weights_change_the_fingerprint(tmp_path):
    base = weights()
    assert fingerprint_tensors(weights(seed=1)) != fingerprint_tensors(base)
    for name in chosen({k: tuple(v.shape) for k, v in base.items()}):
        changed = {k: v.clone() for k, v in base.items()}
        flat = changed[name].view(-1)
        flat[sample_positions(flat.numel())[3]] += 0.5
        assert fingerprint_tensors(changed) != fingerprint_tensors(base), name
    reshaped = dict(base, **{"shared.weight": base["shared.weight"].reshape(7, 40)})
    assert fingerprint_tensors(reshaped) != fingerprint_tensors(base)  # shapes count


def test_which_tensors_and_values_are_read():
    names = chosen(SHAPES)
    assert names == sorted(n for n, s in SHAPES.items() if len(s) >= 2)  # every weight of 2+ dimensions
    assert "encoder.final_layer_norm.weight" not in names  # 1-D: norms are often left at their defaults
    assert sample_positions(100) == [(99 * i) // (SAMPLES - 1) for i in range(SAMPLES)] and sample_positions(1) == [0]
    assert canonical_name("first_stage_model.transformer.encoder.x.weight") == "encoder.x.weight"
    assert chosen({"a.bias": (3, 3)}) == ["a.bias"]  # no .weight at all: any tensor of 2+ dimensions
    assert fingerprint_tensors({}) == "no-weights"


def test_a_change_in_any_middle_layer_is_seen():
    base = weights()
    for layer in range(6):
        changed = {k: v.clone() for k, v in base.items()}
        changed[f"encoder.block.{layer}.layer.0.SelfAttention.q.weight"] += 1.0  # a fine-tune of that layer
        assert fingerprint_tensors(changed) != fingerprint_tensors(base), layer


def test_a_file_that_is_not_safetensors_is_hashed_whole(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x" * 1000)
    (tmp_path / "b.pt").write_bytes(b"x" * 999 + b"y")
    fa, fb = fingerprint_file(str(tmp_path / "a.pt")), fingerprint_file(str(tmp_path / "b.pt"))
    assert fa.startswith("file-") and fa != fb and fa == fingerprint_file(str(tmp_path / "a.pt"))


def test_the_identity_names_each_encoder_in_a_fixed_order():
    assert encoder_id([("vae", "v"), ("t5xxl", "t"), ("clip_l", "c")]) == "clip_l=c;t5xxl=t;vae=v"
