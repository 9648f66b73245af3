#!/usr/bin/env python3
"""Whole-run parity with the LumiX reference implementation, on a tiny FLUX in float32 on the CPU.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/check_reference_parity.py --reference /path/to/LumiX

One tiny FLUX-shaped model (random weights, LumiX Tensor LoRA included) is built with the reference's
own classes (its `Flux`, `LumiXDoubleStreamProcessor`, `LumiXSingleStreamProcessor`); the same weights
go into ComfyUI's FLUX (base weights) and into a tiny checkpoint in the released key layout that this
project's LumiX Tensor LoRA Loader reads. Both sides get the same text conditioning (stand-ins for T5
and CLIP: a fixed tensor per prompt text), the same VAE (a fixed linear 8x8-patch projection, no
posterior sampling) and the same seed. Then:

- the reference runs its own functions: `generate_multimodal_images` of eval/eval_lumix_inference.py
  with the settings of eval/configs/lumix_inference.yaml, and `generate_conditional_multimodal_images`
  of eval/eval_lumix_conditional_inference.py (color given) with its config's steps;
- this project runs its shipped API workflows through ComfyUI's own validate_prompt + PromptExecutor,
  with only the three model loaders replaced by stand-ins handing over the same model, text
  encoders and VAE (and the checkpoint, photo and photo area budget named).

Photo cases (photo_cases): a photo at the sampled size, and photos the workflow has to resize, as every
real photo (4:3 shrunk 2x, 2.625x as a phone photo to 1536x1152, 3x; enlarged 1.5x as Hypersim's
1024x768; a 2:3 photo sized from itself and one stretched to 'width x height'; a depth map held
instead of color). The image is written as an 8-bit PNG; the workflow loads it with Load Image, the
reference gets it opened with Pillow as its dataset reader opens files, and resizes it itself
(`img.resize((width, height))`) to the size the workflow sampled at.

Float32: the reference's eval modules cast to bf16 in their code (noise, model inputs, timesteps).
This script runs them with their module-level `torch` name bound to a proxy on which `torch.bfloat16`
is `torch.float32`; nothing else of the reference is changed (the model is built in float32 here and
never cast, as its `setup_lumix_model`, which also loads real weights, is not called).

The text encoders are stand-ins: the "T5 output" of a prompt is a fixed [1024, C] tensor; the reference
gets its first 512 rows (it pads T5 to 512), ComfyUI gets as many rows as ComfyUI's FLUX tokenizer would
produce tokens (at least 256, or the `t5xxl_min_length` set by T5TokenizerOptions). That reproduces the
token count, not T5's real pad-token outputs.

Prints, for each run, the per-step sigmas and the timesteps/guidance reaching the model on both sides,
and the final latent difference (max abs diff / mean abs latent, in the model's latent space).
Exit status 1 when a run differs by more than --tolerance. Takes a few minutes at 50 steps.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import copy
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lumix_comfy_models as comfy_models  # noqa: E402  (ComfyUI's FLUX config for an explicit shape)

REPO = Path(__file__).resolve().parents[1]
MAP_NAMES_REF = ["diffuse_reflectance", "diffuse_illumination", "color", "depth", "normal"]

# The tiny model (FLUX.1-dev shape, small widths).
HIDDEN, HEADS, DOUBLE, SINGLE, CONTEXT, VEC, RANK = 64, 2, 2, 3, 32, 24, 4
T5_ROWS = 1024  # rows of a stand-in "T5 output"; the reference takes 512


# ---- setup -------------------------------------------------------------------------------------

def fail(message: str) -> None:
    print(f"check_reference_parity: {message}", file=sys.stderr)
    raise SystemExit(2)


def import_comfyui(path: str | None):
    if not path:
        fail("set COMFYUI_PATH (or --comfyui) to a ComfyUI checkout")
    root = Path(path).expanduser().resolve()
    if not (root / "comfy").is_dir() or not (root / "nodes.py").is_file():
        fail(f"{root} is not a ComfyUI checkout (no comfy/ and nodes.py there)")
    sys.path.insert(0, str(root))
    from comfy.cli_args import args
    args.cpu = True  # float32 on the CPU, as the comparison requires
    import nodes as comfy_nodes
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # core extras that need absent packages (audio) only warn
    try:
        asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    finally:
        logging.getLogger().setLevel(level)
    if not asyncio.run(comfy_nodes.load_custom_node(str(REPO))):
        fail("ComfyUI could not load this extension (see the log above)")
    return comfy_nodes


def import_reference(path: str):
    root = Path(path).expanduser().resolve()
    scripts = {"t2m": root / "eval" / "eval_lumix_inference.py",
               "cond": root / "eval" / "eval_lumix_conditional_inference.py"}
    for f in (*scripts.values(), root / "src" / "flux" / "model.py", root / "src" / "flux" / "modules" / "layers_lumix.py"):
        if not f.is_file():
            fail(f"--reference {root}: {f.relative_to(root)} is missing; give a checkout of xhanxu/LumiX")
    sys.path.append(str(root))
    modules = {}
    for key, file in scripts.items():
        spec = importlib.util.spec_from_file_location(f"lumix_reference_{key}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        set_reference_precision(module, torch.float32)  # its bf16 casts become float32 casts (see the docstring)
        modules[key] = module
    import yaml
    configs = {key: yaml.safe_load((root / "eval" / "configs" / name).read_text())
               for key, name in (("t2m", "lumix_inference.yaml"), ("cond", "lumix_conditional_inference.yaml"))}
    from src.flux import model as ref_model, sampling as ref_sampling
    from src.flux.modules import layers_lumix
    return types.SimpleNamespace(eval=modules, config=configs, model=ref_model, sampling=ref_sampling,
                                 lumix=layers_lumix)


def set_reference_precision(module, dtype):
    """Binds the eval module's `torch` to a proxy whose `bfloat16` is `dtype`; its noise is drawn in
    float32 (as ComfyUI's) and then cast to `dtype` (a no-op in float32)."""
    proxy = types.ModuleType(f"torch_{dtype}_proxy")
    proxy.__getattr__ = lambda name: getattr(torch, name)
    proxy.bfloat16 = dtype
    module.torch = proxy
    draw = getattr(module.get_noise, "lumix_parity_original", module.get_noise)

    def get_noise(num_samples, height, width, device, dtype, seed):
        return draw(num_samples, height, width, device=device, dtype=torch.float32, seed=seed).to(dtype)
    get_noise.lumix_parity_original = draw
    module.get_noise = get_noise


class Float64Model(torch.nn.Module):
    """The reference model in float64 for a rounding-free baseline: its float inputs cast to float64."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, **kwargs):
        return self.inner(**{k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                             for k, v in kwargs.items()})


# ---- one set of weights, conditioning and VAE for both sides ----------------------------------------

def build_reference_model(ref, seed: int):
    params = ref.model.FluxParams(
        in_channels=64, vec_in_dim=VEC, context_in_dim=CONTEXT, hidden_size=HIDDEN, mlp_ratio=2.0,
        num_heads=HEADS, depth=DOUBLE, depth_single_blocks=SINGLE,
        axes_dim=[HIDDEN // HEADS // 4, 3 * HIDDEN // HEADS // 8, 3 * HIDDEN // HEADS // 8],
        theta=10_000, qkv_bias=True, guidance_embed=True)
    model = ref.model.Flux(params)
    processors = {}
    for name in model.attn_processors:  # as its setup_lumix_model, at the tiny width
        cls = ref.lumix.LumiXDoubleStreamProcessor if name.startswith("double_blocks") else ref.lumix.LumiXSingleStreamProcessor
        processors[name] = cls(dim=HIDDEN, rank=RANK, network_alpha=None, lora_weight=1.0, num_modalities=5)
    model.set_attn_processor(processors)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith((".G1", ".G3")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)  # G3 starts at zero in the reference
            elif key.endswith(".G2"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif key.endswith(".scale"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval().requires_grad_(False)


def text_embedding(text: str):
    """(T5 rows [1, T5_ROWS, CONTEXT], CLIP pooled [1, VEC]): a fixed function of the text."""
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
    return torch.randn(1, T5_ROWS, CONTEXT, generator=g), torch.randn(1, VEC, generator=g)


class LinearPatchVAE:
    """A fixed linear map between 8x8 RGB patches (0..1) and 16 latent channels, and its pseudo-inverse."""

    def __init__(self, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.down = torch.randn(16, 3 * 64, generator=g) / 8.0
        self.up = torch.linalg.pinv(self.down)

    def encode_bhwc(self, pixels):
        b, h, w, _ = pixels.shape
        patches = pixels[..., :3].movedim(-1, 1).unfold(2, 8, 8).unfold(3, 8, 8)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, h // 8, w // 8, 192)
        return (patches.float() @ self.down.T).permute(0, 3, 1, 2).contiguous()

    def decode_bhwc(self, latent):
        b, _, h8, w8 = latent.shape
        patches = (latent.float().permute(0, 2, 3, 1) @ self.up.T).reshape(b, h8, w8, 3, 8, 8)
        return patches.permute(0, 1, 4, 2, 5, 3).reshape(b, h8 * 8, w8 * 8, 3)


FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159  # the FLUX VAE's latent scale and shift (both sides apply them)


class ReferenceVAE:
    """The reference's AutoEncoder interface: encode [B,3,H,W] in -1..1 -> scaled latent; decode back.
    Records what it is asked to decode (the final latent, in the model's space)."""

    def __init__(self, core):
        self.core, self.decoded = core, []

    def encode(self, x):
        return FLUX_SCALE * (self.core.encode_bhwc(((x + 1) / 2).permute(0, 2, 3, 1)) - FLUX_SHIFT)

    def decode(self, z):
        self.decoded.append(z.detach().clone())
        return (self.core.decode_bhwc(z / FLUX_SCALE + FLUX_SHIFT) * 2 - 1).permute(0, 3, 1, 2)


class ReferenceEmbedder:
    """The reference's HFEmbedder interface: a list of prompts -> T5 rows (512) or CLIP pooled."""

    def __init__(self, t5: bool):
        self.t5 = t5

    def __call__(self, prompts):
        rows = [text_embedding(p)[0][:, :512] if self.t5 else text_embedding(p)[1] for p in prompts]
        return torch.cat(rows)


# ---- the reference's runs ----------------------------------------------------------------------

class ModelRecorder:
    """A forward pre-hook on the reference model: timesteps, guidance and batch of every call."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append({"t": kwargs["timesteps"].double().clone(), "guidance": kwargs["guidance"].double().clone(),
                           "batch": kwargs["img"].shape[0]})


def recorded_schedule(module):
    """Wraps the eval module's get_schedule to keep what it returned (the Euler sigmas)."""
    original, seen = module.get_schedule, []

    def wrapped(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]
    module.get_schedule = wrapped
    return seen


def reference_text_run(ref, model, seed, prompt):
    cfg, module = ref.config["t2m"], ref.eval["t2m"]
    vae, recorder, schedule = ReferenceVAE(LinearPatchVAE()), ModelRecorder(model), recorded_schedule(module)
    module.generate_multimodal_images(
        model=model, vae=vae, t5=ReferenceEmbedder(True), clip=ReferenceEmbedder(False), device="cpu", prompt=prompt,
        width=cfg["width"], height=cfg["height"], num_steps=cfg["num_steps"], guidance=cfg["guidance"], seed=seed,
        true_gs=cfg["true_gs"], num_modalities=5, neg_prompt=cfg["neg_prompt"])
    return vae.decoded[-1], recorder.calls, schedule[-1]


def reference_photo_run(ref, model, seed, prompt, photo, width, height, steps, given="color"):
    """The reference's decomposition loop with `photo` (a PIL image, as its dataset reader opens files)
    as the given map `given` (its checkpoint name); it resizes the photo to width x height itself."""
    cfg, module = ref.config["cond"], ref.eval["cond"]
    vae, recorder, schedule = ReferenceVAE(LinearPatchVAE()), ModelRecorder(model), recorded_schedule(module)
    module.generate_conditional_multimodal_images(
        model=model, vae=vae, t5=ReferenceEmbedder(True), clip=ReferenceEmbedder(False), device="cpu", prompt=prompt,
        condition_images=[photo], condition_modalities=[given],
        target_modalities=[m for m in MAP_NAMES_REF if m != given], all_modalities=MAP_NAMES_REF,
        width=width, height=height, num_steps=steps, guidance=cfg["guidance"], seed=seed, true_gs=cfg["true_gs"],
        neg_prompt=cfg["neg_prompt"])
    return vae.decoded[-1], recorder.calls, schedule[-1]


# ---- this project's runs: the shipped API workflows in ComfyUI ---------------------------------------

def stand_in_nodes(comfy_nodes, reference_model, calls, decoded):
    """Loader stand-ins for UNETLoader, DualCLIPLoader and VAELoader handing over the shared pieces."""
    import comfy.latent_formats
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.patcher_extension
    import comfy.supported_models

    base_weights = {k: v for k, v in reference_model.state_dict().items() if ".processor." not in k}
    latent_format = comfy.latent_formats.Flux()

    def record(executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
               transformer_options={}, **kwargs):
        calls.append({"t": timestep.double().clone(), "guidance": guidance.double().clone(), "batch": x.shape[0],
                      "conds": list(transformer_options.get("cond_or_uncond", []))})
        return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)

    class Loader:
        CATEGORY = "LumiX/parity"
        FUNCTION = "load"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

    class ParityFlux(Loader):
        RETURN_TYPES = ("MODEL",)

        def load(self):
            head = HIDDEN // HEADS
            config = comfy_models.flux1_model_config({
                "in_channels": 16, "out_channels": 16, "vec_in_dim": VEC,
                "context_in_dim": CONTEXT, "hidden_size": HIDDEN, "mlp_ratio": 2.0, "num_heads": HEADS,
                "depth": DOUBLE, "depth_single_blocks": SINGLE, "axes_dim": [head // 4, 3 * head // 8, 3 * head // 8],
                "theta": 10000, "qkv_bias": True, "guidance_embed": True, "patch_size": 2})
            config.set_inference_dtype(torch.float32, None)
            base = config.get_model({})
            base.diffusion_model.load_state_dict(base_weights, strict=True)
            patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                                       offload_device=mm.unet_offload_device())
            patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "lumix_parity_record", record)
            return (patcher,)

    class ParityCLIP(Loader):
        RETURN_TYPES = ("CLIP",)

        def load(self):
            return (StandInCLIP(),)

    class ParityVAE(Loader):
        RETURN_TYPES = ("VAE",)

        def load(self):
            return (StandInVAE(LinearPatchVAE(), decoded, latent_format),)

    nodes = {"LumiXParityFlux": ParityFlux, "LumiXParityCLIP": ParityCLIP, "LumiXParityVAE": ParityVAE}
    comfy_nodes.NODE_CLASS_MAPPINGS.update(nodes)
    return {"UNETLoader": "LumiXParityFlux", "DualCLIPLoader": "LumiXParityCLIP", "VAELoader": "LumiXParityVAE"}


class StandInCLIP:
    """ComfyUI's CLIP interface for CLIPTextEncode and T5TokenizerOptions. T5 rows: as many as ComfyUI's
    FLUX tokenizer makes tokens (text tokens + min_padding, at least t5xxl_min_length, default 256)."""

    def __init__(self, options=None):
        self.tokenizer_options = dict(options or {})

    def clone(self):
        return StandInCLIP(self.tokenizer_options)

    def set_tokenizer_option(self, name, value):
        self.tokenizer_options[name] = value

    def tokenize(self, text, **kwargs):
        tokens = len(text.split()) + 1 + self.tokenizer_options.get("t5xxl_min_padding", 0)  # + end token
        return {"text": text, "t5_rows": max(tokens, self.tokenizer_options.get("t5xxl_min_length", 256))}

    def encode_from_tokens_scheduled(self, tokens, add_dict={}):
        t5, pooled = text_embedding(tokens["text"])
        return [[t5[:, :tokens["t5_rows"]], {"pooled_output": pooled, **add_dict}]]


class StandInVAE:
    """ComfyUI's VAE interface (IMAGE 0..1 <-> raw latent); records decoded latents in the model's space."""

    def __init__(self, core, decoded, latent_format):
        self.core, self.decoded, self.latent_format = core, decoded, latent_format

    def encode(self, pixels):
        return self.core.encode_bhwc(pixels)

    def decode(self, latent):
        self.decoded.append(self.latent_format.process_in(latent.detach().clone().float()))
        return self.core.decode_bhwc(latent)


class StubServer:
    client_id = last_node_id = last_prompt_id = None

    def send_sync(self, *args, **kwargs):
        pass


ADDED_INPUTS = {"area_width", "area_height"}  # optional sampler inputs a workflow may leave at their defaults


def pad_t5(prompt, min_length):
    """Diagnostic: a core T5TokenizerOptions node (min_length) between the text-encoder loader and every
    CLIPTextEncode, where the workflow has none."""
    if any(n["class_type"] == "T5TokenizerOptions" for n in prompt.values()):
        return
    loader = next(k for k, n in prompt.items() if n["class_type"] == "DualCLIPLoader")
    prompt["parity_t5"] = {"class_type": "T5TokenizerOptions",
                           "inputs": {"clip": [loader, 0], "min_padding": 0, "min_length": min_length}}
    for node in prompt.values():
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["clip"] = ["parity_t5", 0]


def run_workflow(comfy_nodes, path, replace, edits, t5_min_length=None, given_input=None):
    """Runs an API workflow with the loaders replaced and `edits` applied; given_input: move the sampler's
    color link (the Load Image photo) to this map input instead."""
    import execution
    prompt = json.loads(path.read_text())
    if given_input:
        for node in prompt.values():
            if node["class_type"] == "LumiXSampler" and "color" in node["inputs"]:
                node["inputs"][given_input] = node["inputs"].pop("color")
    if t5_min_length:
        pad_t5(prompt, t5_min_length)
    for node in prompt.values():
        if node["class_type"] in replace:
            node["class_type"], node["inputs"] = replace[node["class_type"]], {}
        for class_type, values in edits.items():
            if node["class_type"] == class_type:
                node["inputs"].update({k: v for k, v in values.items() if k in node["inputs"] or k in ADDED_INPUTS})
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("parity", prompt, None))
    if not valid:
        fail(f"{path.name} does not validate: {error} {json.dumps(node_errors)[:1500]}")
    if node_errors:  # ComfyUI then runs the outputs that did validate
        print(f"   NOTE: {path.name}: ComfyUI dropped outputs that do not validate: {json.dumps(node_errors)[:600]}")
    executor = comfy_models.prompt_executor(StubServer())
    executor.execute(prompt, "parity", {}, outputs)
    if not executor.success:
        fail(f"{path.name} failed: {json.dumps(executor.status_messages, default=str)[-3000:]}")
    return prompt


def widget(prompt, class_type, name, default=None):
    for node in prompt.values():
        if node["class_type"] == class_type and name in node["inputs"]:
            return node["inputs"][name]
    return default


def prompt_texts(prompt):
    """(positive, negative) texts: what the sampler's positive and negative inputs lead back to."""
    def text_of(link):
        node = prompt[link[0]]
        while node["class_type"] != "CLIPTextEncode":
            node = prompt[node["inputs"]["conditioning"][0]]
        return node["inputs"]["text"]
    for node in prompt.values():
        if {"positive", "negative"} <= set(node["inputs"]):
            return text_of(node["inputs"]["positive"]), text_of(node["inputs"]["negative"])
    fail("no node with positive and negative inputs in the workflow")


def extension_module(suffix):
    """This extension's module `suffix` as ComfyUI loaded it (under its own package name)."""
    for name, module in list(sys.modules.items()):
        if name.endswith("." + suffix) and getattr(module, "__file__", "") and \
                Path(module.__file__).resolve().is_relative_to(REPO):
            return module
    fail(f"the extension's {suffix} was not loaded")


def extension_constant(suffix, name):
    return getattr(extension_module(suffix), name)


def size_for_photo(*args):
    return extension_module("lumix_core.schedule").size_for_photo(*args)


# ---- test photos ---------------------------------------------------------------------------------------

def make_photo(width, height, seed, depth=False):
    """An 8-bit RGB test image with what a resize filter acts on: smooth shading, texture, sharp edges.
    depth=True: a grey depth-like map (a ramp with flat objects in front, sharp steps at their edges)."""
    g = torch.Generator().manual_seed(seed)
    channels = 1 if depth else 3

    def layer(cells_x, cells_y):
        grid = torch.rand(1, channels, cells_y, cells_x, generator=g)
        return torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0]

    if depth:
        image = 0.6 * torch.linspace(0.2, 1.0, height)[:, None].expand(height, width)[None] + 0.1 * layer(3, 3)
    else:
        image = 0.5 * layer(4, 3) + 0.3 * layer(max(2, width // 8), max(2, height // 8)) \
            + 0.15 * torch.rand(channels, height, width, generator=g)
    for _ in range(4):  # flat rectangles with sharp edges
        x0, y0 = int(torch.randint(0, width * 3 // 4, (1,), generator=g)), int(torch.randint(0, height * 3 // 4, (1,), generator=g))
        x1, y1 = x0 + max(2, width // 5), y0 + max(2, height // 5)
        image[:, y0:y1, x0:x1] = torch.rand(channels, 1, 1, generator=g) * (0.3 if depth else 1.0)
    pixels = (image.clamp(0, 1).expand(3, height, width).permute(1, 2, 0) * 255).round().byte()
    from PIL import Image
    return Image.fromarray(pixels.numpy())


def photo_cases(photo_size, area):
    """name -> (photo size, given map, sampler edits, sampled size or None for 'from the photo').
    The resize cases sample within `area` (the sampler's area budget) to stay fast on a CPU."""
    w, h = area
    return {
        "same size": ((photo_size), "color", {"area_width": photo_size[0], "area_height": photo_size[1]}, None),
        "4:3 downscaled 2x": ((2 * w, 2 * h), "color", {}, None),
        "4:3 downscaled 2.625x (a phone photo to 1536x1152)": ((w * 21 // 8, h * 21 // 8), "color", {}, None),
        "4:3 downscaled 3x": ((3 * w, 3 * h), "color", {}, None),
        "4:3 upscaled 1.5x (Hypersim 1024x768 to 1536x1152)": ((w * 2 // 3, h * 2 // 3), "color", {}, None),
        "2:3 photo": ((2 * h, 3 * h), "color", {}, None),
        "2:3 photo, held_maps_size 'width x height'": ((2 * h, 3 * h), "color", {"width": w, "height": h}, (w, h)),
        "depth held, downscaled 2x": ((2 * w, 2 * h), "depth", {}, None),
    }


# ---- report ------------------------------------------------------------------------------------------

def per_step(calls):
    """[(t of the generated maps, held t values, guidance values, passes)] per sampling step."""
    steps = []
    for c in calls:
        t = c["t"].max().item()
        held = sorted({round(v, 9) for v in c["t"].tolist() if v != t})
        passes = len(c.get("conds") or [None]) if "conds" in c else 1
        if steps and steps[-1][0] == t:
            steps[-1][2].update(c["guidance"].tolist())
            steps[-1][3] += passes
        else:
            steps.append([t, held, set(c["guidance"].tolist()), passes, c["batch"]])
    return steps


def relative(a, b, scale):
    return (a.double() - b.double()).abs().max().item() / scale


def report(name, ref_latent, ref_calls, ref_sigmas, our_latent, our_calls, tolerance, ref_latent64=None):
    ref_steps, our_steps = per_step(ref_calls), per_step(our_calls)
    print(f"\n== {name}")
    print(f"   model calls: reference {len(ref_calls)} (batch {ref_calls[0]['batch']}), "
          f"ours {len(our_calls)} (batch {our_calls[0]['batch']})")
    print(f"   {'step':>4} {'ref sigma':>10} {'ref t':>10} {'our t':>10} {'t diff':>9}  held t ref/ours  "
          f"guidance ref / ours     passes ref/ours")
    for i in range(max(len(ref_steps), len(our_steps))):
        r = ref_steps[i] if i < len(ref_steps) else None
        o = our_steps[i] if i < len(our_steps) else None
        sigma = f"{ref_sigmas[i]:10.6f}" if i < len(ref_sigmas) else " " * 10
        rt = f"{r[0]:10.6f}" if r else " " * 10
        ot = f"{o[0]:10.6f}" if o else " " * 10
        dt = f"{abs(r[0] - o[0]):9.1e}" if r and o else " " * 9
        held = f"{r[1] if r else '-'}/{o[1] if o else '-'}"
        guid = f"{sorted(r[2]) if r else '-'} / {sorted(o[2]) if o else '-'}"
        passes = f"{r[3] if r else '-'}/{o[3] if o else '-'}"
        print(f"   {i:4d} {sigma} {rt} {ot} {dt}  {held:16s} {guid:24s} {passes}")
    if ref_latent.shape != our_latent.shape:
        print(f"   latent shapes differ: reference {tuple(ref_latent.shape)}, ours {tuple(our_latent.shape)}")
        return False
    diff = (ref_latent.double() - our_latent.double()).abs()
    scale = ref_latent.double().abs().mean().item()
    rel = diff.max().item() / scale
    per_map = [f"{n}={diff[i::5].max().item() / scale:.1e}" for i, n in enumerate(("albedo", "irradiance", "color", "depth", "normal"))]
    ok = rel <= tolerance
    print(f"   final latent: max abs diff {diff.max().item():.3e}, mean abs latent {scale:.3e}, "
          f"max abs diff / mean abs latent = {rel:.2e}  ({'OK' if ok else 'DIFFERS'}, tolerance {tolerance:g})")
    print(f"   per map: {', '.join(per_map)}")
    if ref_latent64 is not None:
        print(f"   against the reference run in float64: reference float32 {relative(ref_latent, ref_latent64, scale):.2e}, "
              f"ours (float32) {relative(our_latent, ref_latent64, scale):.2e}  (max abs diff / mean abs latent)")
    return ok


def float64_run(ref, key, run, model, *args):
    """The same reference run with the model and the eval module's casts in float64."""
    set_reference_precision(ref.eval[key], torch.float64)
    try:
        return run(ref, Float64Model(copy.deepcopy(model).double()), *args)[0]
    finally:
        set_reference_precision(ref.eval[key], torch.float32)


# ---- main ---------------------------------------------------------------------------------------------

def parse_size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if w % 16 or h % 16 or w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"{text}: both sides must be positive multiples of 16")
    return w, h


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="a checkout of the LumiX reference (xhanxu/LumiX)")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (default: COMFYUI_PATH)")
    parser.add_argument("--workflows", type=Path, default=None,
                        help="folder of API workflows (default: workflows/api, else workflows)")
    parser.add_argument("--text-workflow", nargs="+", default=["lumix_text_to_intrinsic_api.json"],
                        help="text-to-maps API workflow(s) in --workflows (e.g. also "
                             "lumix_composable_sampler_custom_advanced_api.json lumix_text_to_intrinsic_tools_api.json)")
    parser.add_argument("--photo-workflow", default="lumix_photo_decomposition_api.json")
    parser.add_argument("--photo-size", type=parse_size, default=None,
                        help="case 'same size': a 4:3 photo of this size, given to the workflow as its area budget "
                             "(so no resize) and to the reference as width x height. Default: --resize-area")
    parser.add_argument("--resize-area", type=parse_size, default=(192, 144),
                        help="the other photo cases (photos that need resizing): the sampler's area budget "
                             "(the reference's config: 1536x1152; slow here). Default 192x144")
    parser.add_argument("--photo-case", nargs="+", default=None, metavar="TEXT",
                        help="run only the photo cases whose name contains one of these (e.g. 'same size' '2:3')")
    parser.add_argument("--steps", type=int, default=None,
                        help="override the step count on both sides (development only; default: as configured)")
    parser.add_argument("--seed", type=int, default=None, help="default: the workflow's seed")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--only", choices=["text", "photo"], default=None)
    parser.add_argument("--float64-reference", action="store_true",
                        help="also run the reference in float64 and show both float32 runs' distance to it "
                             "(the float32 rounding floor)")
    parser.add_argument("--insert-t5-min-length", type=int, default=None, metavar="N",
                        help="diagnostic: add a core T5TokenizerOptions node (min_length N) to a workflow that has none")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    comfy_nodes = import_comfyui(args.comfyui)
    ref = import_reference(args.reference)
    import folder_paths
    from PIL import Image
    from safetensors.torch import save_file

    folder = args.workflows or (REPO / "workflows" / "api" if (REPO / "workflows" / "api").is_dir() else REPO / "workflows")
    work = Path(tempfile.mkdtemp(prefix="lumix_parity_"))  # checkpoint, photo and saved maps; removed at exit
    atexit.register(shutil.rmtree, work, True)
    for sub in ("lumix", "input", "output"):
        (work / sub).mkdir()
    folder_paths.add_model_folder_path("lumix", str(work / "lumix"))
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_output_directory(str(work / "output"))

    torch.set_grad_enabled(False)
    model = build_reference_model(ref, seed=1)
    adapters = {k: v.contiguous() for k, v in model.state_dict().items() if ".processor." in k}
    save_file(adapters, str(work / "lumix" / "parity_lumix.safetensors"))  # the released key layout
    print(f"tiny model: hidden {HIDDEN}, {HEADS} heads, {DOUBLE} double + {SINGLE} single blocks, Tensor LoRA rank "
          f"{RANK} ({len(adapters)} tensors, e.g. {next(iter(adapters))}); workflows from {folder}")

    our_calls, our_decoded = [], []
    replace = stand_in_nodes(comfy_nodes, model, our_calls, our_decoded)
    all_ok = True

    if args.only in (None, "text"):
        cfg = ref.config["t2m"]
        if args.steps:
            cfg["num_steps"] = args.steps
        reference_runs = {}  # (seed, prompt) -> the reference's run, shared by workflows that agree on both
        for name in args.text_workflow:
            path = folder / name
            wf = json.loads(path.read_text())
            seed = args.seed if args.seed is not None else widget(wf, "LumiXSampler", "seed", widget(wf, "LumiXNoise", "seed", 42))
            positive, _ = prompt_texts(wf)
            edits = {"LumiXTensorLoRALoader": {"lumix_name": "parity_lumix.safetensors"}}
            if args.steps:
                edits.update({k: {"steps": args.steps} for k in ("LumiXSampler", "LumiXReferenceSigmas", "BasicScheduler")})
            if args.seed is not None:
                edits.update({k: {"seed": args.seed, "noise_seed": args.seed} for k in ("LumiXSampler", "LumiXNoise")})
            print(f"\ntext to maps: reference {cfg['width']}x{cfg['height']}, {cfg['num_steps']} steps, guidance "
                  f"{cfg['guidance']}, true CFG {cfg['true_gs']}, seed {seed}; ours: {path.name} as shipped")
            if (seed, positive) not in reference_runs:
                run = reference_text_run(ref, model, seed, positive)
                latent64 = (float64_run(ref, "t2m", reference_text_run, model, seed, positive)
                            if args.float64_reference else None)
                reference_runs[seed, positive] = (*run, latent64)
            ref_latent, ref_calls, ref_sigmas, latent64 = reference_runs[seed, positive]
            our_calls.clear(), our_decoded.clear()
            run_workflow(comfy_nodes, path, replace, edits, args.insert_t5_min_length)
            all_ok &= report(f"text to maps ({path.name})", ref_latent, ref_calls, ref_sigmas, our_decoded[0],
                             list(our_calls), args.tolerance, latent64)

    if args.only in (None, "photo"):
        path = folder / args.photo_workflow
        wf = json.loads(path.read_text())
        seed = args.seed if args.seed is not None else widget(wf, "LumiXSampler", "seed", widget(wf, "LumiXNoise", "seed", 42))
        positive, _ = prompt_texts(wf)
        steps = args.steps or ref.config["cond"]["num_steps"]
        size_explicit = extension_constant("nodes.sampler_node", "SIZE_EXPLICIT")
        cases = photo_cases(args.photo_size or args.resize_area, args.resize_area)
        for index, (case, (photo_size, given, sampler_edits, explicit)) in enumerate(cases.items()):
            if args.photo_case and not any(c.lower() in case.lower() for c in args.photo_case):
                continue
            sampler = {"area_width": args.resize_area[0], "area_height": args.resize_area[1], **sampler_edits}
            if explicit:
                sampler["held_maps_size"] = size_explicit
            width, height = explicit or size_for_photo(*photo_size, sampler["area_width"], sampler["area_height"])
            name = f"parity_photo_{index}.png"
            make_photo(*photo_size, seed=5 + index, depth=given == "depth").save(work / "input" / name)
            edits = {"LumiXTensorLoRALoader": {"lumix_name": "parity_lumix.safetensors"},
                     "LoadImage": {"image": name}, "LumiXSampler": sampler}
            if args.steps:
                edits["LumiXSampler"]["steps"] = args.steps
            if args.seed is not None:
                edits["LumiXSampler"]["seed"] = args.seed
            ours_given = {"color": "color", "depth": "depth"}[given]
            print(f"\ndecomposition, {case}: a {photo_size[0]}x{photo_size[1]} {given} image given; reference at "
                  f"{width}x{height} (it resizes the image itself), {steps} steps (guidance and CFG as its loop "
                  f"hard-codes them), seed {seed}; ours: {path.name} as shipped, sampler set to "
                  f"{json.dumps(sampler)}, the image on its {ours_given} input")
            # the reference opens its files as 8-bit RGB (image_datasets/dataset_v2_inference.py)
            ref_photo = Image.open(work / "input" / name).convert("RGB")
            ref_latent, ref_calls, ref_sigmas = reference_photo_run(ref, model, seed, positive, ref_photo, width,
                                                                    height, steps, given)
            latent64 = (float64_run(ref, "cond", reference_photo_run, model, seed, positive, ref_photo, width, height,
                                    steps, given) if args.float64_reference else None)
            our_calls.clear(), our_decoded.clear()
            run_workflow(comfy_nodes, path, replace, edits, args.insert_t5_min_length,
                         given_input=None if given == "color" else given)
            all_ok &= report(f"photo decomposition, {case} ({path.name})", ref_latent, ref_calls, ref_sigmas,
                             our_decoded[0], list(our_calls), args.tolerance, latent64)

    print("\nall runs within tolerance" if all_ok else "\nat least one run DIFFERS from the reference")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
