"""Writes the shipped workflows in both of ComfyUI's formats from one description of each graph.

    python scripts/build_workflows.py        # rewrites workflows/*.json

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
    "UNETLoader": [], "DualCLIPLoader": [], "VAELoader": [], "LoadImage": [], "Note": [],
    "LumiXTensorLoRALoader": [("model", "MODEL")], "ModelSamplingFlux": [("model", "MODEL")],
    "CLIPTextEncode": [("clip", "CLIP")], "FluxGuidance": [("conditioning", "CONDITIONING")],
    "SaveImage": [("images", "IMAGE")], "PreviewImage": [("images", "IMAGE")],
    "LumiXSampler": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                     ("vae", "VAE")] + MAP_SOCKETS,
    "LumiXConsistency": MAP_SOCKETS, "LumiXSaveMaps": MAP_SOCKETS,
    "LumiXRelight": [("albedo", "IMAGE"), ("normal", "IMAGE"), ("irradiance", "IMAGE")],
    "LumiXDepthColormap": [("depth", "IMAGE")],
}


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
    extra_ui_widgets: dict = field(default_factory=dict)  # UI-only widget values: {after name: value}
    color: str | None = None


def note(node_id, pos, text, size=(360, 200)):
    return Node(node_id, "Note", pos, size, widgets={"text": text}, color="#432")


def shared_nodes(sampler_width=512, sampler_height=512):
    """Loaders, prompts and the LumiX model: the part both workflows share."""
    return [
        Node(1, "UNETLoader", (40, 80), (320, 82), "Load FLUX.1-dev",
             widgets={"unet_name": FLUX_UNET, "weight_dtype": "default"}, outputs=(("MODEL", "MODEL"),)),
        Node(2, "DualCLIPLoader", (40, 220), (320, 130), "Load text encoders",
             widgets={"clip_name1": CLIP_L, "clip_name2": T5XXL, "type": "flux", "device": "default"}, outputs=(("CLIP", "CLIP"),)),
        Node(3, "VAELoader", (40, 400), (320, 58), "Load FLUX VAE",
             widgets={"vae_name": FLUX_VAE}, outputs=(("VAE", "VAE"),)),
        Node(4, "LumiXTensorLoRALoader", (400, 80), (330, 130), "LumiX Tensor LoRA Loader",
             widgets={"lumix_name": LUMIX_CHECKPOINT, "strength": 1.0, "query_broadcast": True},
             inputs={"model": (1, 0, "MODEL")}, outputs=(("MODEL", "MODEL"),)),
        Node(5, "ModelSamplingFlux", (400, 250), (330, 130), "Resolution shift (as the reference)",
             widgets={"max_shift": 1.15, "base_shift": 0.5, "width": sampler_width, "height": sampler_height},
             inputs={"model": (4, 0, "MODEL")}, outputs=(("MODEL", "MODEL"),)),
        Node(6, "CLIPTextEncode", (400, 420), (400, 160), POSITIVE_TITLE,
             widgets={"text": DEFAULT_PROMPT}, inputs={"clip": (2, 0, "CLIP")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
        Node(7, "CLIPTextEncode", (400, 620), (400, 130), "Negative prompt (the reference's)",
             widgets={"text": NEGATIVE_PROMPT}, inputs={"clip": (2, 0, "CLIP")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
        Node(8, "FluxGuidance", (830, 420), (300, 58), "Guidance 3.5",
             widgets={"guidance": 3.5}, inputs={"conditioning": (6, 0, "CONDITIONING")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
        Node(9, "FluxGuidance", (830, 620), (300, 58), "Guidance 3.5",
             widgets={"guidance": 3.5}, inputs={"conditioning": (7, 0, "CONDITIONING")}, outputs=(("CONDITIONING", "CONDITIONING"),)),
    ]


SAMPLER_OUTPUTS = tuple((name, "IMAGE") for name in MAP_NAMES) + (("latent", "LATENT"),)


def sampler(cfg, extra_inputs=None):
    inputs = {"model": (5, 0, "MODEL"), "positive": (8, 0, "CONDITIONING"), "negative": (9, 0, "CONDITIONING"),
              "vae": (3, 0, "VAE")}
    inputs.update(extra_inputs or {})
    return Node(10, "LumiXSampler", (1170, 80), (340, 470), "LumiX Intrinsic Sampler",
                widgets={"seed": 42, "steps": 50, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                         "width": 512, "height": 512, "scenes": 1, "shared_noise": True},
                extra_ui_widgets={"seed": "fixed"}, inputs=inputs, outputs=SAMPLER_OUTPUTS)


def savers(skip=()):
    nodes = []
    for i, name in enumerate(MAP_NAMES):
        if name in skip:
            continue
        nodes.append(Node(20 + i, "SaveImage", (1560 + 280 * (i % 3), 80 + 330 * (i // 3)), (260, 300),
                          f"Save {name}", widgets={"filename_prefix": SAVE_PREFIX + name},
                          inputs={"images": (10, i, "IMAGE")}))
    return nodes


MODEL_NOTE = (
    "Models (see the README's table):\n"
    f"- models/diffusion_models/{FLUX_UNET}\n- models/text_encoders/{CLIP_L} and {T5XXL}\n"
    f"- models/vae/{FLUX_VAE}\n- models/lumix/{LUMIX_CHECKPOINT}\n\n"
    "Low VRAM: set weight_dtype to fp8_e4m3fn in 'Load FLUX.1-dev'.")


def text_to_intrinsic():
    return shared_nodes() + [sampler(3.0)] + savers() + [
        note(30, (40, 520), MODEL_NOTE),
        note(31, (1170, 600),
             "LumiX defaults as the reference: 512x512, 50 steps, true CFG 3.0 with the negative prompt, "
             "FluxGuidance 3.5, the same noise for all five maps of a scene.\n\n"
             "scenes > 1 makes several scenes in one run (scene s uses seed + s). Each map is saved under "
             "output/LumiX/ with its own prefix.", (340, 180)),
    ]


def photo_decomposition():
    load = Node(11, "LoadImage", (830, 760), (320, 330), "Photo to decompose",
                widgets={"image": "example.png"}, extra_ui_widgets={"image": "image"},
                outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")))
    return shared_nodes() + [load, sampler(1.0, {"color": (11, 0, "IMAGE")})] + savers(skip=("color",)) + [
        note(30, (40, 520), MODEL_NOTE),
        note(31, (1170, 600),
             "Photo decomposition: the photo is the color map, held clean (timestep 0) while albedo, "
             "irradiance, depth and normal are generated around it. cfg 1.0 as the reference (no negative "
             "pass). The photo is resized to cover 512x512 and centre-cropped. Describe the photo in the "
             "prompt for best results.", (340, 200)),
    ]


def preview(node_id, pos, source, slot, title):
    return Node(node_id, "PreviewImage", pos, (260, 300), title, inputs={"images": (source, slot, "IMAGE")})


def text_to_intrinsic_with_tools():
    """Text to intrinsic, then the map tools: metrics, relighting, a depth view and lossless export."""
    maps = {name: (10, i, "IMAGE") for i, name in enumerate(MAP_NAMES)}
    x = 1560
    return shared_nodes() + [sampler(3.0)] + [
        Node(40, "LumiXConsistency", (x, 80), (300, 200), "LumiX Map Consistency",
             widgets={"fov_degrees": 60.0, "depth_convention": "far is bright (LumiX)"}, inputs=dict(maps),
             outputs=(("photometric_heatmap", "IMAGE"), ("geometric_heatmap", "IMAGE"),
                      ("structural_heatmap", "IMAGE"), ("report", "STRING"))),
        preview(41, (x + 340, 80), 40, 0, "Photometric residual"),
        preview(42, (x + 620, 80), 40, 1, "Geometric residual"),
        preview(43, (x + 900, 80), 40, 2, "Structural alignment"),
        Node(44, "LumiXRelight", (x, 440), (300, 250), "LumiX Relight",
             widgets={"azimuth": 45.0, "elevation": 45.0, "light_color": "#ffffff", "intensity": 1.0, "ambient": 0.15},
             inputs={"albedo": maps["albedo"], "normal": maps["normal"], "irradiance": maps["irradiance"]},
             outputs=(("image", "IMAGE"),)),
        preview(45, (x + 340, 440), 44, 0, "Relit preview"),
        Node(46, "LumiXDepthColormap", (x, 740), (300, 130), "LumiX Depth Colormap",
             widgets={"colormap": "turbo", "near_points": True, "depth_convention": "far is bright (LumiX)"},
             inputs={"depth": maps["depth"]}, outputs=(("image", "IMAGE"),)),
        preview(47, (x + 340, 740), 46, 0, "Depth (near = warm)"),
        Node(48, "LumiXSaveMaps", (x + 620, 440), (560, 560), "LumiX Save Maps",
             widgets={"filename_prefix": "LumiX/scene", "fov_degrees": 60.0}, inputs=dict(maps)),
        note(30, (40, 520), MODEL_NOTE),
        note(31, (1170, 600),
             "Map tools: the consistency node measures whether the maps agree (its report shows in the node and "
             "its heat maps below: darker is better); Relight checks albedo and normals together; Save Maps writes "
             "each scene to output/LumiX/scene_NNNNN/ with 16-bit depth/normal PNGs, EXR (pip install openexr) "
             "and lumix.json.", (340, 220)),
    ]


WORKFLOWS = {"lumix_text_to_intrinsic": text_to_intrinsic, "lumix_photo_decomposition": photo_decomposition,
             "lumix_text_to_intrinsic_tools": text_to_intrinsic_with_tools}


def to_api(nodes):
    api = {}
    for n in nodes:
        if n.type == "Note":
            continue
        inputs = dict(n.widgets)
        inputs.update({name: [str(src), slot] for name, (src, slot, _t) in n.inputs.items()})
        api[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
    return api


def to_ui(nodes):
    links, by_id = [], {n.id: n for n in nodes}
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
        widgets = []
        for name, value in n.widgets.items():
            widgets.append(value)
            if name in n.extra_ui_widgets:
                widgets.append(n.extra_ui_widgets[name])
        entry = {
            "id": n.id, "type": n.type, "pos": list(n.pos), "size": list(n.size), "flags": {}, "order": order,
            "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": in_links.get((n.id, name))} for name, typ in SOCKETS[n.type]],
            "outputs": [{"name": name, "type": typ, "links": out_links.get((n.id, slot), []), "slot_index": slot}
                        for slot, (name, typ) in enumerate(n.outputs)],
            "properties": {"Node name for S&R": n.type} if n.type != "Note" else {},
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
    """{file name: JSON text} for every shipped workflow."""
    files = {}
    for name, build in WORKFLOWS.items():
        nodes = build()
        files[f"{name}.json"] = json.dumps(to_ui(nodes), indent=2) + "\n"
        files[f"{name}_api.json"] = json.dumps(to_api(nodes), indent=2) + "\n"
    return files


def main():
    os.makedirs(WORKFLOW_DIR, exist_ok=True)
    for file_name, text in render_all().items():
        with open(os.path.join(WORKFLOW_DIR, file_name), "w") as f:
            f.write(text)
        print("wrote", os.path.join("workflows", file_name))


if __name__ == "__main__":
    main()
