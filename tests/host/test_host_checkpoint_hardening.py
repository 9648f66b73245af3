"""The LumiX Tensor LoRA Loader refuses absurd checkpoints at load, with advice (issue 10, items 2 and 6)."""
import pytest

from comfy_host import DOUBLE, HIDDEN, SINGLE, load_extension, tiny_flux  # first: skips without ComfyUI

import folder_paths  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny_flux import official_state_dict  # noqa: E402

NODES = load_extension()
Loader = NODES["LumiXTensorLoRALoader"]


def checkpoint(folder, name, metadata=None, **shape):
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, **shape), str(folder / name),
              metadata=metadata)
    folder_paths.add_model_folder_path("lumix", str(folder))
    return name


@pytest.mark.parametrize("maps", [1, 3, 6])
def test_map_count_the_sampler_cannot_use_is_refused_by_the_loader(tmp_path, maps):
    name = checkpoint(tmp_path, f"maps{maps}.safetensors", M=maps)
    with pytest.raises(ValueError, match=rf"LumiX: this checkpoint mixes {maps} maps per scene.*Pick a 5-map checkpoint in the loader.s lumix_name"):
        Loader.execute(tiny_flux(), name, 1.0, True)


@pytest.mark.parametrize("alpha", ["nan", "1e400", "-1e39"])
def test_absurd_alpha_is_refused_by_the_loader(tmp_path, alpha):
    name = checkpoint(tmp_path, f"alpha_{alpha}.safetensors", metadata={"alpha": alpha})
    with pytest.raises(ValueError, match=rf"LumiX: the checkpoint's metadata alpha='{alpha}' is out of range"):
        Loader.execute(tiny_flux(), name, 1.0, True)


def test_rank_zero_is_refused_by_the_loader(tmp_path):
    save_file(official_state_dict(hidden=HIDDEN, R=0, double=DOUBLE, single=SINGLE), str(tmp_path / "rank0.safetensors"))
    folder_paths.add_model_folder_path("lumix", str(tmp_path))
    with pytest.raises(ValueError, match="LumiX: .*kv_tt_lora is empty .*rank 0"):
        Loader.execute(tiny_flux(), "rank0.safetensors", 1.0, True)


def test_fp8_checkpoint_loads_and_samples_finite_maps(tmp_path):
    """An fp8 file used to end in NotImplementedError ("isfinite"); it is widened to bf16 on load."""
    import torch
    from comfy_host import TinyVAE, conditioning

    sd = official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, scale=0.5)
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}, str(tmp_path / "fp8.safetensors"))
    folder_paths.add_model_folder_path("lumix", str(tmp_path))
    model = Loader.execute(tiny_flux(), "fp8.safetensors", 1.0, True).result[0]
    out = NODES["LumiXSampler"].execute(model, conditioning(1), conditioning(2), TinyVAE(), 0, 2, 1.0, "euler",
                                        "simple", 32, 32, 1, True).result
    assert torch.isfinite(out[-1]["samples"]).all() and torch.isfinite(torch.stack(out[:5])).all()
