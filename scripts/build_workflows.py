"""Writes the shipped workflows in both of ComfyUI's formats from one description of each graph.

    python scripts/build_workflows.py        # rewrites workflows/*.json, *.jpg and workflows/api/*_api.json

UI format (drag-and-drop into ComfyUI) and API format (for scripts and scripts/lumix_client.py)
come from the same node list, so the twins cannot drift apart.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
WORKFLOW_DIR = os.path.join(HERE, "..", "workflows")

FLUX_UNET = "flux1-dev.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
LUMIX_CHECKPOINT = "lumix.safetensors"
MAP_NAMES = ("albedo", "irradiance", "color", "depth", "normal")  # lumix_core.maps order
NEGATIVE_PROMPT = "blurry, low quality, artifacts, distorted, noisy, pixelated, jpeg artifacts"
DEFAULT_PROMPT = "a cozy living room with a wooden table, a sofa and a large window, warm afternoon light"
POSITIVE_TITLE = "Positive prompt"
SAVE_PREFIX = "LumiX/"


MAP_SOCKETS = [(name, "IMAGE") for name in MAP_NAMES]
# Every input socket of each node type, in the order of the node's definition (required, then
# optional), so that the UI file lists unconnected sockets too and link slots match ComfyUI's.
SOCKETS = {
    "UNETLoader": [], "DualCLIPLoader": [], "VAELoader": [], "LoadImage": [], "Note": [], "KSamplerSelect": [],
    "LumiXNoise": [],
    "LumiXTensorLoRALoader": [("model", "MODEL")], "T5TokenizerOptions": [("clip", "CLIP")],
    "CLIPTextEncode": [("clip", "CLIP")], "FluxGuidance": [("conditioning", "CONDITIONING")],
    "SaveImage": [("images", "IMAGE")], "PreviewImage": [("images", "IMAGE")], "PreviewAny": [("source", "*")],
    "LumiXSampler": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                     ("vae", "VAE")] + MAP_SOCKETS,
    "LumiXConsistency": MAP_SOCKETS, "LumiXSaveMaps": MAP_SOCKETS,
    "LumiXRelight": [("albedo", "IMAGE"), ("normal", "IMAGE"), ("irradiance", "IMAGE")],
    "LumiXDepthColormap": [("depth", "IMAGE")],
    "LumiXEmptyLatent": [("photo", "IMAGE"), ("model", "MODEL")],
    "LumiXReferenceSigmas": [("latent", "LATENT")],
    "CFGGuider": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    "LumiXTrainingDataset": [("vae", "VAE"), ("clip", "CLIP")],
    "LumiXTrainer": [("model", "MODEL"), ("dataset", "LUMIX_TRAINING_DATA"), ("vae", "VAE")],
    "SamplerCustomAdvanced": [("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                              ("latent_image", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "LumiXSplitMaps": [("images", "IMAGE"), ("latent", "LATENT"), ("vae", "VAE")],
    "LumiXRenderPassesToMaps": [("depth_image", "IMAGE"), ("normal_image", "IMAGE")],
    "LumiXDepthToMesh": [("depth", "IMAGE"), ("normal", "IMAGE"), ("albedo", "IMAGE")],
}
# Where the frontend's missing-models dialog finds each file (node properties.models). The LumiX
# checkpoint has no public direct-download address yet, so its loader carries none.
MODEL_FILES = {
    FLUX_UNET: ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
                "diffusion_models"),
    CLIP_L: ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
             "text_encoders"),
    T5XXL: ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
            "text_encoders"),
    FLUX_VAE: ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors", "vae"),
}
T5_MIN_LENGTH = 512  # the reference pads T5 to 512 tokens; ComfyUI's FLUX default is 256


@dataclass
class Node:
    id: int
    type: str
    pos: tuple
    size: tuple = (320, 110)
    title: str | None = None
    widgets: dict = field(default_factory=dict)  # widget name -> value, in the node's widget order
    inputs: dict = field(default_factory=dict)  # connected socket name -> (source node, source slot, type)
    outputs: tuple = ()  # (name, type) per output slot
    extra_ui_widgets: dict = field(default_factory=dict)  # UI-only widget values: {after name: value}, e.g. upload
    color: str | None = None
    models: tuple = ()  # file names this loader needs (MODEL_FILES)


# The frontend puts a "control after generate" widget after every INT input named seed or noise_seed and after
# any input whose schema sets control_after_generate (tests/host/test_host_workflows.py checks this against
# the real schemas); its value sits in widgets_values right after the seed's. "fixed": a run is repeatable.
CONTROLLED_WIDGETS = ("seed", "noise_seed")
CONTROL_AFTER_GENERATE = "fixed"


def ui_widget_values(n):
    """widgets_values as the frontend lays them out: each widget's value, then the values of the
    widgets the frontend adds after it (control after generate, upload)."""
    values = []
    for name, value in n.widgets.items():
        values.append(value)
        if name in n.extra_ui_widgets:
            values.append(n.extra_ui_widgets[name])
        elif name in CONTROLLED_WIDGETS:
            values.append(CONTROL_AFTER_GENERATE)
    return values


def note(node_id, pos, text, size=(360, 200)):
    return Node(node_id, "Note", pos, size, widgets={"text": text}, color="#432")


# Columns of the layout (x of each column); rows are chosen per node so nothing overlaps and the
# sampler and image nodes have room below them for their previews.
COL_TEXT, COL_LOADERS, COL_MODEL, COL_GUIDE, COL_SAMPLER, COL_OUT = -320, 40, 420, 880, 1330, 2090
# The VAE's links run to the far right (sampler, Split Maps) along a lane above every other node.
ROW_VAE = -120
SAMPLER_SIZE = (380, 760)


def shared_nodes(text_row=0):
    """Loaders, prompts and the LumiX model: the part every workflow shares; `text_row` moves the text
    chain (encoders, T5 padding, prompts, guidance) down."""
    y = text_row
    return [
        Node(1, "UNETLoader", (COL_LOADERS, 80), (320, 82), "Load FLUX.1-dev",
             widgets={"unet_name": FLUX_UNET, "weight_dtype": "default"}, outputs=(("MODEL", "MODEL"),),
             models=(FLUX_UNET,)),
        # The text chain runs left to right: text encoders (a column left of the other loaders), T5 padding
        # in the loaders' column, then the prompts (a node fed from its own column is reached by a link that
        # loops back behind the nodes of that column).
        Node(2, "DualCLIPLoader", (COL_TEXT, 330 + y), (320, 130), "Load text encoders",
             widgets={"clip_name1": CLIP_L, "clip_name2": T5XXL, "type": "flux", "device": "default"},
             outputs=(("CLIP", "CLIP"),), models=(CLIP_L, T5XXL)),
        Node(3, "VAELoader", (COL_LOADERS, ROW_VAE), (320, 58), "Load FLUX VAE",
             widgets={"vae_name": FLUX_VAE}, outputs=(("VAE", "VAE"),), models=(FLUX_VAE,)),
        Node(4, "LumiXTensorLoRALoader", (COL_MODEL, 80), (330, 130), "LumiX Tensor LoRA Loader",
             widgets={"lumix_name": LUMIX_CHECKPOINT, "strength": 1.0, "query_broadcast": True, "adapter_dtype": "auto"},
             inputs={"model": (1, 0, "MODEL")}, outputs=(("MODEL", "MODEL"),)),
        Node(5, "T5TokenizerOptions", (COL_LOADERS, 330 + y), (340, 82), "T5 padded to 512 tokens (as the reference)",
             widgets={"min_padding": 0, "min_length": T5_MIN_LENGTH},
             inputs={"clip": (2, 0, "CLIP")}, outputs=(("CLIP", "CLIP"),)),
        Node(6, "CLIPTextEncode", (COL_MODEL, 410 + y), (420, 170), POSITIVE_TITLE,
             widgets={"text": DEFAULT_PROMPT}, inputs={"clip": (5, 0, "CLIP")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
        Node(7, "CLIPTextEncode", (COL_MODEL, 640 + y), (420, 140), "Negative prompt (the reference's)",
             widgets={"text": NEGATIVE_PROMPT}, inputs={"clip": (5, 0, "CLIP")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
        Node(8, "FluxGuidance", (COL_GUIDE, 410 + y), (300, 58), "Guidance 3.5",
             widgets={"guidance": 3.5}, inputs={"conditioning": (6, 0, "CONDITIONING")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
        Node(9, "FluxGuidance", (COL_GUIDE, 640 + y), (300, 58), "Guidance 3.5",
             widgets={"guidance": 3.5}, inputs={"conditioning": (7, 0, "CONDITIONING")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
    ]


SAMPLER_OUTPUTS = tuple((name, "IMAGE") for name in MAP_NAMES) + (("latent", "LATENT"),)


def sampler(cfg, extra_inputs=None, pos=(COL_SAMPLER, 80)):
    inputs = {"model": (4, 0, "MODEL"), "positive": (8, 0, "CONDITIONING"), "negative": (9, 0, "CONDITIONING"),
              "vae": (3, 0, "VAE")}
    inputs.update(extra_inputs or {})
    return Node(10, "LumiXSampler", pos, SAMPLER_SIZE, "LumiX Intrinsic Sampler",
                widgets={"seed": 42, "steps": 50, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                         "width": 512, "height": 512, "scenes": 1, "shared_noise": True,
                         "schedule": "reference", "held_maps_guidance": "reference", "held_maps_size": "from_given",
                         "area_width": 1536, "area_height": 1152, "held_maps_resize": "stretch", "output_size": "sampled"}, inputs=inputs, outputs=SAMPLER_OUTPUTS)


IMAGE_COLUMN_GAP, IMAGE_STEP, IMAGE_SIZE = 200, 310, (260, 280)


def image_grid(first_id, node_type, sources, prefix=SAVE_PREFIX, x0=COL_SAMPLER + SAMPLER_SIZE[0] + IMAGE_COLUMN_GAP,
               y0=80):
    """One SaveImage/PreviewImage per map, stacked in one column with room for each image. One column,
    far enough right of the node feeding them, so that no link to a lower node runs behind an upper one
    (tests/test_workflows.py checks every link against every node)."""
    nodes = []
    for k, (name, src) in enumerate(sources):
        widgets = {"filename_prefix": prefix + name} if node_type == "SaveImage" else {}
        nodes.append(Node(first_id + MAP_NAMES.index(name), node_type, (x0, y0 + IMAGE_STEP * k), IMAGE_SIZE,
                          f"{'Save' if node_type == 'SaveImage' else 'Preview'} {name}",
                          widgets=widgets, inputs={"images": src}))
    return nodes


def savers(skip=(), y0=80, x0=COL_SAMPLER + SAMPLER_SIZE[0] + IMAGE_COLUMN_GAP):
    return image_grid(20, "SaveImage", [(name, (10, i, "IMAGE")) for i, name in enumerate(MAP_NAMES) if name not in skip],
                      x0=x0, y0=y0)


MODEL_NOTE = (
    "Models (see the README's table; a missing FLUX file opens ComfyUI's download dialog):\n"
    f"- models/diffusion_models/{FLUX_UNET}\n- models/text_encoders/{CLIP_L} and {T5XXL}\n"
    f"- models/vae/{FLUX_VAE}\n- models/lumix/{LUMIX_CHECKPOINT}\n\n"
    "Low VRAM: set weight_dtype to fp8_e4m3fn in 'Load FLUX.1-dev'.")
T5_NOTE = ("Text as the reference: 'T5 padded to 512 tokens' (core T5TokenizerOptions, min_length 512) pads the "
           "T5 prompt to 512 tokens as the reference does; ComfyUI pads FLUX's T5 to 256 by default, which "
           "changes the conditioning.")
NOTE_POS, NOTE_SIZE = (COL_LOADERS, 850), (760, 300)
MODEL_NOTE_POS, MODEL_NOTE_SIZE = (COL_LOADERS, 520), (320, 280)


def text_to_intrinsic():
    return shared_nodes() + [sampler(3.0)] + savers() + [
        note(30, MODEL_NOTE_POS, MODEL_NOTE, MODEL_NOTE_SIZE),
        note(31, NOTE_POS,
             "LumiX defaults as the reference: 512x512, 50 steps, its schedule (the sampler's 'schedule: reference'), "
             "true CFG 3.0 with its negative prompt, FluxGuidance 3.5 on both prompts, the same noise for all five "
             "maps of a scene.\n\n" + T5_NOTE + "\n\nThe sampler's preview shows the five maps of the first scene "
             "side by side (start ComfyUI with --preview-method auto, or set Live preview method, to see it). scenes > 1 makes several scenes in one run (scene s uses seed + s). Each map is saved "
             "under output/LumiX/ with its own prefix.", NOTE_SIZE),
    ]


def photo_decomposition():
    load = Node(11, "LoadImage", (COL_GUIDE, 780), (300, 330), "Photo to decompose",
                widgets={"image": "example.png"}, extra_ui_widgets={"image": "image"},
                outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")))
    return shared_nodes() + [load, sampler(1.0, {"color": (11, 0, "IMAGE")})] + savers(skip=("color",)) + [
        note(30, MODEL_NOTE_POS, MODEL_NOTE, MODEL_NOTE_SIZE),
        note(31, NOTE_POS,
             "Photo decomposition as the reference: the photo is the color map, held clean (timestep 0) while "
             "albedo, irradiance, depth and normal are generated around it, with guidance 1.0 and no CFG "
             "(held_maps_guidance 'reference'; the negative prompt is unused). The size comes from the photo: its "
             "aspect ratio within 1536x1152 (a 4:3 photo gets 1536x1152), the photo stretched to it; set "
             "output_size to get every map at the photo's own size. Describe the photo in the prompt.\n\n" + T5_NOTE,
             NOTE_SIZE),
    ]


def preview(node_id, pos, source, slot, title):
    return Node(node_id, "PreviewImage", pos, (280, 300), title, inputs={"images": (source, slot, "IMAGE")})


def text_to_intrinsic_with_tools():
    """Text to intrinsic, then the map tools: metrics, relighting, a depth view and lossless export.
    Every node that reads the maps sits in one column right of the sampler, what shows their results
    in one column right of that: each link crosses only the gap between two columns. The tool nodes'
    sizes include the readout box that shows their numbers after a run (web/lumix_readout.js)."""
    maps = {name: (10, i, "IMAGE") for i, name in enumerate(MAP_NAMES)}
    x, x2 = COL_OUT, COL_OUT + 400 + 300
    return shared_nodes() + [sampler(3.0)] + [
        Node(40, "LumiXConsistency", (x, 80), (400, 420), "LumiX Map Consistency",
             widgets={"fov_degrees": 60.0, "depth_convention": "far_is_bright"}, inputs=dict(maps),
             outputs=(("photometric_heatmap", "IMAGE"), ("geometric_heatmap", "IMAGE"),
                      ("structural_heatmap", "IMAGE"), ("report", "STRING"))),
        preview(41, (x2, 80), 40, 0, "Photometric residual"),
        preview(42, (x2, 420), 40, 1, "Geometric residual"),
        preview(43, (x2, 760), 40, 2, "Structural alignment"),
        Node(49, "PreviewAny", (x2, 1100), (300, 200), "Consistency report", inputs={"source": (40, 3, "STRING")}),
        Node(44, "LumiXRelight", (x, 560), (400, 420), "LumiX Relight",
             widgets={"azimuth": 45.0, "elevation": 45.0, "light_color": "#ffffff", "intensity": 1.0, "ambient": 0.15},
             inputs={"albedo": maps["albedo"], "normal": maps["normal"], "irradiance": maps["irradiance"]},
             outputs=(("image", "IMAGE"),)),
        preview(45, (x2, 1340), 44, 0, "Relit preview"),
        Node(46, "LumiXDepthColormap", (x, 1040), (400, 260), "LumiX Depth Colormap",
             widgets={"colormap": "turbo", "near_points": True, "depth_convention": "far_is_bright"},
             inputs={"depth": maps["depth"]}, outputs=(("image", "IMAGE"),)),
        preview(47, (x2, 1680), 46, 0, "Depth (near = warm)"),
        Node(48, "LumiXSaveMaps", (x, 1360), (400, 760), "LumiX Save Maps",
             widgets={"filename_prefix": "LumiX/scene", "fov_degrees": 60.0, "multilayer_exr": False},
             inputs=dict(maps)),
        note(30, MODEL_NOTE_POS, MODEL_NOTE, MODEL_NOTE_SIZE),
        note(31, NOTE_POS,
             "Map tools (right of the sampler): the consistency node measures whether the maps agree; its heat "
             "maps (darker is better) and its full report show in the column to its right. Relight checks "
             "albedo and normals together; Save Maps writes each scene to output/LumiX/scene_NNNNN/ with 16-bit "
             "depth/normal PNGs, EXR (pip install openexr) and lumix.json.\n\n" + T5_NOTE, NOTE_SIZE),
    ]


def composable_sampler_custom_advanced():
    """The composable route: LumiX latent, noise and sigmas with core CFGGuider + SamplerCustomAdvanced.
    Everything SamplerCustomAdvanced takes sits in one column left of it; Split Maps sits in the VAE's
    lane at the top, so the VAE's link passes above every node."""
    x, x_sample = COL_SAMPLER, COL_SAMPLER + 330 + 250
    x_split = x_sample + 320 + 200
    return shared_nodes() + [
        Node(12, "LumiXEmptyLatent", (x, 80), (330, 200), "LumiX Empty Latent",
             widgets={"width": 512, "height": 512, "scenes": 1, "area_width": 1536, "area_height": 1152},
             inputs={"model": (4, 0, "MODEL")}, outputs=(("LATENT", "LATENT"),)),
        Node(16, "CFGGuider", (x, 330), (330, 100), "CFG 3.0 (as the reference)",
             widgets={"cfg": 3.0}, inputs={"model": (4, 0, "MODEL"), "positive": (8, 0, "CONDITIONING"),
                                           "negative": (9, 0, "CONDITIONING")},
             outputs=(("GUIDER", "GUIDER"),)),
        Node(13, "LumiXNoise", (x, 480), (330, 106), "LumiX Noise",
             widgets={"seed": 42, "shared_noise": True}, outputs=(("NOISE", "NOISE"),)),
        Node(15, "KSamplerSelect", (x, 640), (330, 58), "Sampler", widgets={"sampler_name": "euler"},
             outputs=(("SAMPLER", "SAMPLER"),)),
        Node(14, "LumiXReferenceSigmas", (x, 750), (330, 130), "LumiX Reference Sigmas (set to the latent's size)",
             widgets={"steps": 50, "width": 512, "height": 512}, outputs=(("SIGMAS", "SIGMAS"),)),
        Node(17, "SamplerCustomAdvanced", (x_sample, 80), (320, 420), "SamplerCustomAdvanced",
             inputs={"noise": (13, 0, "NOISE"), "guider": (16, 0, "GUIDER"), "sampler": (15, 0, "SAMPLER"),
                     "sigmas": (14, 0, "SIGMAS"), "latent_image": (12, 0, "LATENT")},
             outputs=(("output", "LATENT"), ("denoised_output", "LATENT"))),
        Node(18, "LumiXSplitMaps", (x_split, ROW_VAE), (320, 150), "LumiX Split Maps", widgets={"output_size": "sampled"},
             inputs={"latent": (17, 0, "LATENT"), "vae": (3, 0, "VAE")},
             outputs=tuple((name, "IMAGE") for name in MAP_NAMES)),
    ] + image_grid(20, "SaveImage", [(name, (18, i, "IMAGE")) for i, name in enumerate(MAP_NAMES)],
                   x0=x_split + 320 + IMAGE_COLUMN_GAP, y0=ROW_VAE) + [
        note(30, MODEL_NOTE_POS, MODEL_NOTE, MODEL_NOTE_SIZE),
        note(31, NOTE_POS,
             "The composable route, exactly what the LumiX Intrinsic Sampler runs: LumiX Empty Latent (scenes x 5 "
             "maps; with the model connected it checks it and the run's memory as the sampler does), LumiX Noise "
             "(one noise per scene, shared by its maps), LumiX Reference Sigmas (the reference's schedule; set its "
             "width and height to the latent's, or connect the latent) and core CFGGuider + SamplerCustomAdvanced, "
             "then LumiX Split Maps (from the latent, so given maps come back exactly as given). "
             "Swap in any sampler, guider or latent tool. To decompose a photo, put LumiX Hold Maps between the "
             "model/latent and the sampler (it keeps the photo at timestep 0 with guidance 1.0 and no CFG).\n\n"
             + T5_NOTE, NOTE_SIZE),
    ]


TRAINING_DATASET_FOLDER = "lumix_dataset"
TRAINED_NAME = "lumix_trained"
# The trainer's widgets in the order of its inputs (the paper's choices are in the note).
TRAINER_WIDGETS = {
    "output_name": TRAINED_NAME, "steps": 1000, "rank": 8, "optimizer": "adamw", "learning_rate": 1e-4,
    "batch_size": 1, "grad_accumulation": 1, "warmup_steps": 50, "max_grad_norm": 1.0,
    "timestep_sampling": "logit_normal", "guidance": 1.0, "held_map_probability": 0.0, "caption_dropout": 0.0,
    "gradient_checkpointing": True, "seed": 0, "save_every": 250, "init_from": "none (train from scratch)",
    "resume": False, "validate_every": 250, "validation_scenes": 2, "validation_size": 256, "validation_steps": 12,
    "alpha": 1.0, "lr_schedule": "constant", "lr_min_ratio": 0.0, "ema_decay": 0.0, "keep_last": 3, "keep_best": True,
    "best_metric": "photometric_residual", "prefetch": 1,
}


def training_then_sampling():
    """Train a Tensor LoRA from a dataset folder, then sample with the trained MODEL (no released checkpoint).
    The training row on top (FLUX -> trainer -> loss plot), the text and sampling row below it."""
    text_row = 1000  # the text chain below the training row (and the room its plot and report take after a run)
    shared = [n for n in shared_nodes(text_row) if n.type != "LumiXTensorLoRALoader"]
    return shared + [
        Node(12, "LumiXTrainingDataset", (COL_MODEL, 380), (320, 220), "LumiX Training Dataset",
             widgets={"folder": TRAINING_DATASET_FOLDER, "resolution": 512, "flip": False, "cache_folder": ""},
             inputs={"vae": (3, 0, "VAE"), "clip": (5, 0, "CLIP")},
             outputs=(("dataset", "LUMIX_TRAINING_DATA"), ("summary", "STRING"))),
        Node(13, "LumiXTrainer", (COL_GUIDE, 80), (340, 740), "LumiX Trainer", widgets=dict(TRAINER_WIDGETS),
             inputs={"model": (1, 0, "MODEL"), "dataset": (12, 0, "LUMIX_TRAINING_DATA"), "vae": (3, 0, "VAE")},
             outputs=(("MODEL", "MODEL"), ("plot", "IMAGE"), ("report", "STRING"))),
        # right of the column of the sampler below, clear of the link from the trainer down to it
        preview(14, (COL_SAMPLER + 200, 80), 13, 1, "Loss and consistency metrics"),
        # The sampling row's own VAE loader: the one above feeds the training row along the top lane.
        Node(19, "VAELoader", (COL_GUIDE, 1770), (300, 58), "Load FLUX VAE (for sampling)",
             widgets={"vae_name": FLUX_VAE}, outputs=(("VAE", "VAE"),), models=(FLUX_VAE,)),
        sampler(3.0, {"model": (13, 0, "MODEL"), "vae": (19, 0, "VAE")}, pos=(COL_SAMPLER, 1410)),
    ] + savers(y0=1410) + [
        note(30, (COL_LOADERS, 1810),
             f"Training data: ComfyUI/input/{TRAINING_DATASET_FOLDER}/ (or another input/ subfolder, or a folder "
             "registered as lumix_datasets in extra_model_paths.yaml; press R to refresh the list), either\n"
             "- <map>/<id>_<map>.png with the map folders diffuse_reflectance, diffuse_illumination, color, depth, "
             "normal and captions in captions_blip2/<id>_color.json (the LumiX reference), or\n"
             "- one folder per scene with albedo/irradiance/color/depth/normal.png and lumix.json (LumiX Save "
             "Maps and the headless client write these).\nThe dataset node caches VAE latents and text embeddings "
             "in .lumix_cache/.\n\n" + T5_NOTE, NOTE_SIZE),
        note(31, (COL_LOADERS, 2160),
             f"The trainer writes models/lumix/{TRAINED_NAME}.safetensors (loads in the LumiX Tensor LoRA Loader) "
             f"and, in models/lumix/{TRAINED_NAME}_training/, step checkpoints, a resumable state, log.jsonl and "
             "plot.png. Cancel saves the state: queue again with resume on to continue. Its MODEL output feeds "
             "the sampler directly.\n\nThe paper: prodigy (pip install prodigyopt) at learning rate 1.0, batch 16, "
             "10K steps, rank 8.", (760, 200)),
    ]


RENDER_PASSES_FILE = "render_passes.exr"  # in ComfyUI/input/: Blender's multilayer EXR with Depth and Normal


def render_passes_to_maps():
    """Geometry from 3D software held, albedo, irradiance and color generated around it; the result saved
    as maps (with a multilayer EXR) and as a textured mesh."""
    maps = {name: (10, i, "IMAGE") for i, name in enumerate(MAP_NAMES)}
    # Every node the sampler feeds in one column, far enough right for the links to the lowest ones.
    x = COL_SAMPLER + SAMPLER_SIZE[0] + 400
    return shared_nodes() + [
        Node(11, "LumiXRenderPassesToMaps", (COL_GUIDE, 780), (330, 470), "LumiX Render Passes to Maps",
             widgets={"depth_file": RENDER_PASSES_FILE, "normal_file": RENDER_PASSES_FILE,
                      "depth_encoding": "planar Z (scene units)",
                      "depth_range": "image's nearest..farthest", "near": 0.1, "far": 100.0,
                      "normal_space": "world (camera rotation below)",
                      "normal_values": "auto",
                      "camera_rot_x": 90.0, "camera_rot_y": 0.0, "camera_rot_z": 0.0, "fov_degrees": 60.0},
             outputs=(("depth", "IMAGE"), ("normal", "IMAGE"))),
        sampler(1.0, {"depth": (11, 0, "IMAGE"), "normal": (11, 1, "IMAGE")}),
    ] + savers(skip=("depth", "normal"), x0=x) + [
        Node(40, "LumiXDepthToMesh", (x, 80 + 3 * IMAGE_STEP), (330, 420), "LumiX Depth to Mesh",
             widgets={"fov_degrees": 60.0, "depth_scale": "fit to the normals",
                      "near": 1.0, "far": 3.0, "discontinuity": 0.05, "max_side": 512, "filename_prefix": "LumiX/mesh"},
             inputs={"depth": maps["depth"], "normal": maps["normal"], "albedo": maps["albedo"]},
             outputs=(("model_file", "STRING"),)),
        Node(48, "LumiXSaveMaps", (x, 80 + 3 * IMAGE_STEP + 470), (400, 600), "LumiX Save Maps",
             widgets={"filename_prefix": "LumiX/from3d", "fov_degrees": 60.0, "multilayer_exr": True},
             inputs=dict(maps)),
        note(30, MODEL_NOTE_POS, MODEL_NOTE, MODEL_NOTE_SIZE),
        note(31, NOTE_POS,
             f"From 3D software: render depth and normals of your (untextured) scene, e.g. Blender's Z and Normal "
             f"passes in one multilayer EXR, put it into ComfyUI/input/ ({RENDER_PASSES_FILE} here) and set "
             "'LumiX Render Passes to Maps' to your camera: horizontal field of view, and its rotation for world-space "
             "normals (Blender's Normal pass), and depth_encoding: EEVEE's Z pass is planar Z, Cycles' the distance to "
             "the camera. Its readout says whether depth and normals agree. The sampler holds "
             "them clean (timestep 0, guidance 1.0, no CFG, as the reference decomposes) and generates albedo, "
             "irradiance and color consistent with your geometry; describe the scene in the prompt.\n\n"
             "Out: the maps and output/LumiX/from3d_NNNNN/layers.exr (one multilayer EXR for Blender/Nuke), and a "
             "textured mesh output/LumiX/mesh_NNNNN.glb: connect core 'Preview 3D' to model_file to look at it.\n\n"
             + T5_NOTE, NOTE_SIZE),
    ]


WORKFLOWS = {"lumix_text_to_intrinsic": text_to_intrinsic, "lumix_photo_decomposition": photo_decomposition,
             "lumix_text_to_intrinsic_tools": text_to_intrinsic_with_tools,
             "lumix_composable_sampler_custom_advanced": composable_sampler_custom_advanced,
             "lumix_train_then_sample": training_then_sampling,
             "lumix_from_3d_render_passes": render_passes_to_maps}


def to_api(nodes):
    api = {}
    for n in nodes:
        if n.type == "Note":
            continue
        inputs = dict(n.widgets)
        inputs.update({name: [str(src), slot] for name, (src, slot, _t) in n.inputs.items()})
        api[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
    return api


def properties(n):
    if n.type == "Note":
        return {}
    props = {"Node name for S&R": n.type}
    if n.models:
        props["models"] = [{"name": name, "url": MODEL_FILES[name][0], "directory": MODEL_FILES[name][1]}
                           for name in n.models]
    return props


CANVAS_MARGIN = 120  # the top-left node this far from the canvas origin, where a template opens (clear of
# the frontend's side bar and the workflow name box drawn over the canvas)


def to_ui(nodes):
    links, by_id = [], {n.id: n for n in nodes}
    dx = CANVAS_MARGIN - min(n.pos[0] for n in nodes)
    dy = CANVAS_MARGIN + 30 - min(n.pos[1] for n in nodes)  # 30: the title bar above a node's pos
    out_links: dict[tuple, list] = {}
    in_links: dict[tuple, int] = {}
    for n in nodes:
        sockets = [name for name, _t in SOCKETS[n.type]]
        for name, (src, slot, typ) in n.inputs.items():
            link_id = len(links) + 1
            links.append([link_id, src, slot, n.id, sockets.index(name), typ])
            out_links.setdefault((src, slot), []).append(link_id)
            in_links[(n.id, name)] = link_id
    ui_nodes = []
    for order, n in enumerate(sorted(nodes, key=lambda n: n.id)):
        widgets = ui_widget_values(n)
        entry = {
            "id": n.id, "type": n.type, "pos": [n.pos[0] + dx, n.pos[1] + dy], "size": list(n.size), "flags": {}, "order": order,
            "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": in_links.get((n.id, name))} for name, typ in SOCKETS[n.type]],
            "outputs": [{"name": name, "type": typ, "links": out_links.get((n.id, slot), []), "slot_index": slot}
                        for slot, (name, typ) in enumerate(n.outputs)],
            "properties": properties(n),
            "widgets_values": widgets,
        }
        if n.title:
            entry["title"] = n.title
        if n.color:
            entry["color"], entry["bgcolor"] = n.color, "#653"
        ui_nodes.append(entry)
    assert all(src in by_id for _l, src, *_ in links)
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def render_all() -> dict[str, str]:
    """{path under workflows/: JSON text} for every shipped workflow: the UI file at the top (ComfyUI's
    template browser lists those), its API twin under api/."""
    files = {}
    for name, build in WORKFLOWS.items():
        nodes = build()
        files[f"{name}.json"] = json.dumps(to_ui(nodes), indent=2) + "\n"
        files[f"api/{name}_api.json"] = json.dumps(to_api(nodes), indent=2) + "\n"
    return files


# ---- thumbnails: <name>.jpg beside each UI file, where the frontend's template browser looks -------

THUMB_SIZE, TILE = (512, 384), 160
THUMB_CAPTIONS = {
    "lumix_text_to_intrinsic": "text -> five maps",
    "lumix_photo_decomposition": "photo -> four maps",
    "lumix_text_to_intrinsic_tools": "five maps -> metrics, relight, export",
    "lumix_composable_sampler_custom_advanced": "SamplerCustomAdvanced route",
    "lumix_train_then_sample": "train a Tensor LoRA, then sample",
    "lumix_from_3d_render_passes": "3D depth + normal -> maps, mesh",
}
GIVEN_IN_THUMBNAIL = {"lumix_photo_decomposition": ("color",), "lumix_from_3d_render_passes": ("depth", "normal")}


def drawn_scene(size=TILE):
    """Five maps of a drawn scene (a lit sphere before a wall), in map order, as uint8 RGB arrays."""
    import numpy as np
    v, u = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    r2 = (u / 0.55) ** 2 + (v / 0.55) ** 2
    on_sphere = r2 < 1
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    normal = np.where(on_sphere[..., None], np.stack([u / 0.55, -v / 0.55, nz], -1), [0.0, 0.0, 1.0])
    light = np.array([0.4, 0.6, 0.7]) / np.linalg.norm([0.4, 0.6, 0.7])
    shade = np.clip(normal @ light, 0, 1)[..., None]
    irradiance = 0.15 + 0.85 * shade * np.array([1.0, 0.95, 0.85])
    albedo = np.where(on_sphere[..., None], [0.8, 0.35, 0.25], [0.55, 0.6, 0.7])
    color = np.clip(albedo * irradiance, 0, 1) ** (1 / 2.2)
    depth = np.where(on_sphere, 0.45 - 0.25 * nz, 0.9)[..., None].repeat(3, -1)
    maps = [albedo, irradiance ** (1 / 2.2), color, depth, (normal + 1) / 2]
    return [(np.clip(m, 0, 1) * 255).astype("uint8") for m in maps]


def thumbnail(name):
    """A small JPEG: the drawn scene's five maps in a grid with the workflow's caption."""
    import io
    from PIL import Image, ImageDraw
    canvas = Image.new("RGB", THUMB_SIZE, (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    for k, (map_name, tile) in enumerate(zip(MAP_NAMES, drawn_scene())):
        x, y = 8 + (k % 3) * (TILE + 8), 8 + (k // 3) * (TILE + 26)
        canvas.paste(Image.fromarray(tile), (x, y))
        given = map_name in GIVEN_IN_THUMBNAIL.get(name, ())
        draw.text((x + 2, y + TILE + 4), map_name + (" (given)" if given else ""), fill=(230, 230, 230))
    draw.text((2 * (TILE + 8) + 16, 8 + TILE + 26 + 40), "LumiX", fill=(255, 200, 120))
    draw.text((2 * (TILE + 8) + 16, 8 + TILE + 26 + 60), THUMB_CAPTIONS[name], fill=(230, 230, 230))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=85)
    return out.getvalue()


def main():
    os.makedirs(os.path.join(WORKFLOW_DIR, "api"), exist_ok=True)
    for file_name, text in render_all().items():
        with open(os.path.join(WORKFLOW_DIR, file_name), "w") as f:
            f.write(text)
        print("wrote", os.path.join("workflows", file_name))
    for name in WORKFLOWS:
        with open(os.path.join(WORKFLOW_DIR, f"{name}.jpg"), "wb") as f:
            f.write(thumbnail(name))
        print("wrote", os.path.join("workflows", f"{name}.jpg"))


if __name__ == "__main__":
    main()
