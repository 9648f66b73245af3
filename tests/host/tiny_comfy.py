"""Tiny ComfyUI objects for host tests and the test server's fixture nodes: a random FLUX inside
ComfyUI's own model classes, a small VAE and CLIP with ComfyUI's interfaces, conditioning."""
import hashlib
import sys
from pathlib import Path

import torch

import comfy.ldm.flux.math as flux_math
import comfy.model_management as model_management
import comfy.model_patcher
import comfy.supported_models

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from lumix_comfy_models import flux1_model_config  # noqa: E402  (one FLUX config for every ComfyUI version)

HIDDEN, HEADS, DOUBLE, SINGLE, CONTEXT, VEC = 64, 2, 2, 3, 32, 24


def randomize_(module, seed, std=0.15):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return module


def tiny_flux(seed=0, dtype=torch.float32, manual_cast=None, hidden=HIDDEN, double=DOUBLE, single=SINGLE):
    """A FLUX.1-dev-shaped ComfyUI model (model_base.Flux inside a ModelPatcher), random weights."""
    head_dim = hidden // HEADS
    unet_config = {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": VEC,
        "context_in_dim": CONTEXT, "hidden_size": hidden, "mlp_ratio": 2.0, "num_heads": HEADS,
        "depth": double, "depth_single_blocks": single, "axes_dim": [head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8],
        "theta": 10000, "qkv_bias": True, "guidance_embed": True, "patch_size": 2,
    }
    config = flux1_model_config(unet_config)
    config.set_inference_dtype(dtype, manual_cast)
    base = config.get_model({})
    randomize_(base.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=model_management.get_torch_device(),
                                            offload_device=model_management.unet_offload_device())


def model_inputs(batch, seed=0, size=16, dtype=torch.float32, txt_tokens=4):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, size, size, generator=g).to(dtype),
        timestep=torch.rand(batch, generator=g),  # ComfyUI keeps timesteps in float32
        context=torch.randn(batch, txt_tokens, CONTEXT, generator=g).to(dtype),
        y=torch.randn(batch, VEC, generator=g).to(dtype),
        guidance=torch.full((batch,), 3.5),
    )


def run_model(patcher, inputs):
    """One call of the FLUX transformer with the patcher's transformer_options (its patches)."""
    options = patcher.model_options.get("transformer_options", {})
    with torch.no_grad():
        return patcher.get_model_object("diffusion_model")(transformer_options=options, **inputs)


def comfy_attention(options):
    return lambda q, k, v, pe, mask: flux_math.attention(q, k, v, pe=pe, mask=mask, transformer_options=options)


class TinyVAE:
    """A small deterministic VAE with ComfyUI's VAE interface (encode/decode of IMAGE batches):
    each 8x8 RGB patch <-> 16 latent channels through a fixed random projection and its
    pseudo-inverse. The FLUX VAE itself is not downloadable here."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.down = torch.randn(16, 3 * 64, generator=g) / 8.0
        self.up = torch.linalg.pinv(self.down)

    def encode(self, pixels):
        b, h, w, _ = pixels.shape
        patches = pixels[..., :3].movedim(-1, 1).unfold(2, 8, 8).unfold(3, 8, 8)  # b,3,h/8,w/8,8,8
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, h // 8, w // 8, 192)
        return (patches.float() @ self.down.T).permute(0, 3, 1, 2).contiguous()

    def decode(self, latent):
        b, _, h8, w8 = latent.shape
        patches = (latent.float().permute(0, 2, 3, 1) @ self.up.T).reshape(b, h8, w8, 3, 8, 8)
        return patches.permute(0, 1, 4, 2, 5, 3).reshape(b, h8 * 8, w8 * 8, 3)


class CountingVAE(TinyVAE):
    """TinyVAE counting its encode and decode calls (`calls`): shows a refusal came before the VAE ran."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.calls = 0

    def encode(self, pixels):
        self.calls += 1
        return super().encode(pixels)

    def decode(self, latent):
        self.calls += 1
        return super().decode(latent)


def conditioning(seed, tokens=4, guidance=3.5):
    """A CONDITIONING as CLIPTextEncode + FluxGuidance would give for the tiny model."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, CONTEXT, generator=g),
             {"pooled_output": torch.randn(1, VEC, generator=g), "guidance": guidance}]]


# Tokenizer options every TinyCLIP.tokenize call saw (what T5TokenizerOptions set), for the tests.
TOKENIZE_CALLS = []


class TinyCLIP:
    """What CLIPTextEncode and T5TokenizerOptions need from a CLIP: clone, set_tokenizer_option,
    tokenize and encode_from_tokens_scheduled. The conditioning is a deterministic function of the
    text, at the tiny model's widths; each tokenize call records its tokenizer options."""

    def __init__(self, tokenizer_options=None):
        self.tokenizer_options = dict(tokenizer_options or {})

    def clone(self):
        return TinyCLIP(self.tokenizer_options)

    def set_tokenizer_option(self, name, value):
        self.tokenizer_options[name] = value

    def tokenize(self, text):
        TOKENIZE_CALLS.append({"text": text, **self.tokenizer_options})
        # as real tokens, they change with the tokenizer options (T5 padding); the text alone sets the encoding
        return {"text": text, "options": tuple(sorted(self.tokenizer_options.items()))}

    def encode_from_tokens_scheduled(self, tokens, add_dict={}):
        seed = int.from_bytes(hashlib.sha256(tokens["text"].encode()).digest()[:4], "little")
        cond = conditioning(seed)
        cond[0][1].pop("guidance")
        cond[0][1].update(add_dict)
        return cond
