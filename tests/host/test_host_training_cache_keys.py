"""The dataset cache's encoder keys against ComfyUI's own loaders: a VAE and a CLIP-L file of full size
(random weights, in the real key layouts ComfyUI itself lays out), loaded the way VAELoader and CLIPLoader
load them, key the cache exactly as the command-line trainer keys those files without loading them
(so a dataset encoded through either front door is found by the other); a LoRA ComfyUI left patched into
the text encoder's weights does not change the weights' part of the key."""
import pytest
import torch
from safetensors.torch import save_file

from comfy_host import extension_module, load_extension  # noqa: F401  (first: skips without ComfyUI)
import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402

from lumix_core.training.encoder_identity import encoder_id, fingerprint_file

load_extension()
keys = __import__(extension_module().__name__ + ".nodes.dataset_cache_keys", fromlist=["encoders_identity"])


def random_file(path, layout, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    save_file({k: (torch.randn(shape, generator=g) * 0.02).to(dtype) for k, shape in layout.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoders")
    # ComfyUI lays out the FLUX VAE from a 16-channel decoder input (its detection); its own model's state dict
    # is the file layout (ae.safetensors)
    probe = comfy.sd.VAE(sd={"decoder.conv_in.weight": torch.zeros(512, 16, 3, 3)})
    vae_layout = {k: tuple(v.shape) for k, v in probe.first_stage_model.state_dict().items()}
    # CLIP-L as ComfyUI builds it, its file names without the model's "transformer." (clip_l.safetensors lacks
    # the projection, as FLUX's does)
    clip_model = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16)
    clip_layout = {k[len("transformer."):]: tuple(v.shape) for k, v in clip_model.state_dict().items()
                   if k.startswith("transformer.") and v.is_floating_point() and "text_projection" not in k}
    del probe, clip_model
    return (random_file(folder / "ae.safetensors", vae_layout, torch.bfloat16, 0),
            random_file(folder / "clip_l.safetensors", clip_layout, torch.float16, 1))


def test_comfyui_s_loaded_encoders_key_the_cache_as_their_files_do(encoder_files):
    vae_file, clip_file = encoder_files
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_file))           # as VAELoader
    clip = comfy.sd.load_clip(ckpt_paths=[clip_file], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)  # CLIPLoader
    image_id, text_id = keys.encoders_identity(vae, clip)
    assert image_id == encoder_id([("vae", fingerprint_file(vae_file))])
    assert text_id == encoder_id([("clip_l", fingerprint_file(clip_file))])

    # a weight patch (what a LoRA becomes) applied in place by ComfyUI, its original kept in the patcher's backup
    name = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    weight = clip.cond_stage_model.state_dict()[name]
    clip.patcher.add_patches({name: (torch.full_like(weight, 0.5),)}, 1.0)
    comfy.model_management.load_models_gpu([clip.patcher])
    try:
        assert not torch.equal(clip.cond_stage_model.state_dict()[name], weight)  # patched in the module now
        assert keys.encoders_identity(vae, clip)[1] == text_id                    # the weights' key is the file's
    finally:
        clip.patcher.unpatch_model()
    other = comfy.sd.VAE(sd={k: v + 0.01 for k, v in comfy.utils.load_torch_file(vae_file).items()})
    assert keys.encoders_identity(other, clip)[0] != image_id
