"""The dataset cache's keys for the VAE and CLIP a ComfyUI graph gives the LumiX Training Dataset
node: the same keys the command-line trainer computes from the encoder files and its tokenizer
(lumix_core.training.encoder_identity, cache.text_identity), so either finds the other's entries."""
from __future__ import annotations

import hashlib

import torch

from ..lumix_core.training.cache import text_identity
from ..lumix_core.training.encoder_identity import encoder_id, fingerprint_tensors


def _tensors(obj) -> dict:
    """{name: tensor} of a module, or of an object's tensor attributes (stand-ins without modules)."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    return {k: v for k, v in vars(obj).items() if isinstance(v, torch.Tensor)}


def _unpatched(clip, child_name: str, tensors: dict) -> dict:
    """A text encoder's weights as loaded: where ComfyUI left a LoRA's patch in a weight (its originals are in
    the patcher's backup until unpatched), the original; the patches themselves key the text separately."""
    backup = getattr(getattr(clip, "patcher", None), "backup", None) or {}
    out = {}
    for name, t in tensors.items():
        saved = backup.get(f"{child_name}.{name}")
        original = getattr(saved, "weight", None) if saved is not None else None
        out[name] = original if isinstance(original, torch.Tensor) else t
    return out


def encoders_identity(vae, clip) -> tuple[str, str]:
    """(latent encoder id, text encoder id): vae=<fingerprint>, and clip_l=...;t5xxl=... for each text
    encoder of the CLIP on its own (FLUX: clip_l and t5xxl, the names the CLI's files have)."""
    image = encoder_id([("vae", fingerprint_tensors(_tensors(getattr(vae, "first_stage_model", None) or vae)))])
    text_model = getattr(clip, "cond_stage_model", None)
    children = dict(text_model.named_children()) if isinstance(text_model, torch.nn.Module) else {}
    if children:
        parts = [(name, fingerprint_tensors(_unpatched(clip, name, child.state_dict())))
                 for name, child in children.items()]
    else:
        parts = [("clip", fingerprint_tensors(_tensors(text_model if text_model is not None else clip)))]
    return image, encoder_id(parts)


def _first_tensor(value, depth=0):
    if isinstance(value, torch.Tensor):
        return value
    if depth < 3 and isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item, depth + 1)
            if found is not None:
                return found
    weights = getattr(value, "weights", None)  # ComfyUI's LoRA adapters
    return _first_tensor(weights, depth + 1) if weights is not None and depth < 3 else None


def _patches_digest(clip) -> str:
    """The patches (LoRAs) on the text encoder: their keys, strengths and a sample of their weights."""
    patches = getattr(getattr(clip, "patcher", None), "patches", None) or {}
    if not patches:
        return ""
    h = hashlib.sha256()
    for key in sorted(patches):
        h.update(key.encode())
        for patch in patches[key]:
            h.update(repr([p for p in patch if isinstance(p, (int, float, str))]).encode())
            t = _first_tensor(patch[1]) if len(patch) > 1 else None
            if t is not None:
                h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()


def caption_identity(clip):
    """caption -> what else keys its embedding: its tokens (with the CLIP's tokenizer options, e.g.
    T5TokenizerOptions' padding), the CLIP layer and the patches on the text encoder."""
    layer, patches = getattr(clip, "layer_idx", None), _patches_digest(clip)
    return lambda caption: text_identity(clip.tokenize(caption), layer, patches)


def text_encoder(clip):
    def encode(text):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return cond[0][0][0], cond[0][1]["pooled_output"][0]
    return encode
