"""Host-free checks of the shipped workflows: parse, links, twins agree, our node types exist."""
import math
import sys
from pathlib import Path

import pytest

from workflow_files import FRONTEND_ONLY_TYPES, api_twin, load, our_node_ids, ui_files, ui_widget_values

REPO = Path(__file__).resolve().parents[1]
# Widget order of the stock ComfyUI nodes the workflows use (from ComfyUI's INPUT_TYPES); the
# host test checks the same against a real ComfyUI, including our own nodes' schemas.
WIDGETS = {
    "UNETLoader": ["unet_name", "weight_dtype"],
    "DualCLIPLoader": ["clip_name1", "clip_name2", "type", "device"],
    "VAELoader": ["vae_name"],
    "CLIPTextEncode": ["text"],
    "FluxGuidance": ["guidance"],
    "T5TokenizerOptions": ["min_padding", "min_length"],
    "SaveImage": ["filename_prefix"],
    "LoadImage": ["image"],
    "LumiXTensorLoRALoader": ["lumix_name", "strength", "query_broadcast", "adapter_dtype"],
    "LumiXSampler": ["seed", "steps", "cfg", "sampler_name", "scheduler", "width", "height", "scenes", "shared_noise",
                     "schedule", "held_maps_guidance", "held_maps_size", "area_width", "area_height",
                     "held_maps_resize", "output_size"],
    "Note": ["text"],
    "PreviewImage": [],
    "LumiXConsistency": ["fov_degrees", "depth_convention"],
    "LumiXRelight": ["azimuth", "elevation", "light_color", "intensity", "ambient"],
    "LumiXDepthColormap": ["colormap", "near_points", "depth_convention"],
    "LumiXSaveMaps": ["filename_prefix", "fov_degrees", "multilayer_exr"],
    "LumiXRenderPassesToMaps": ["depth_file", "normal_file", "depth_encoding", "depth_range", "near", "far",
                                "normal_space", "normal_values", "camera_rot_x", "camera_rot_y", "camera_rot_z",
                                "fov_degrees"],
    "LumiXDepthToMesh": ["fov_degrees", "depth_scale", "near", "far", "discontinuity", "max_side", "filename_prefix"],
    "PreviewAny": [],
    "LumiXEmptyLatent": ["width", "height", "scenes", "area_width", "area_height"],
    "LumiXNoise": ["seed", "shared_noise"],
    "LumiXReferenceSigmas": ["steps", "width", "height"],
    "KSamplerSelect": ["sampler_name"],
    "CFGGuider": ["cfg"],
    "SamplerCustomAdvanced": [],
    "LumiXSplitMaps": ["output_size"],
    "LumiXTrainingDataset": ["folder", "resolution", "flip", "cache_folder"],
    "LumiXTrainer": ["output_name", "steps", "rank", "optimizer", "learning_rate", "batch_size", "grad_accumulation",
                     "warmup_steps", "max_grad_norm", "timestep_sampling", "guidance", "held_map_probability",
                     "caption_dropout", "gradient_checkpointing", "seed", "save_every", "init_from", "resume",
                     "validate_every", "validation_scenes", "validation_size", "validation_steps", "alpha",
                     "lr_schedule", "lr_min_ratio", "ema_decay", "keep_last", "keep_best", "best_metric", "prefetch"],
}
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its stored pos


def test_folder_layout_ui_files_on_top_api_twins_below():
    top = {p.name for p in (REPO / "workflows").iterdir() if p.is_file()}
    ui = {p.name for p in ui_files()}
    assert {"lumix_text_to_intrinsic.json", "lumix_photo_decomposition.json", "lumix_text_to_intrinsic_tools.json",
            "lumix_composable_sampler_custom_advanced.json"} <= ui
    assert top == ui | {p.replace(".json", ".jpg") for p in ui}, "only UI workflows and their thumbnails at the top"
    for path in ui_files():
        wf = load(path)
        assert "nodes" in wf and "links" in wf and wf.get("version"), f"{path.name} is not in the UI format"
        assert api_twin(path).is_file(), f"{path.name} has no API-format twin"
    api = {p.name for p in (REPO / "workflows" / "api").iterdir()}
    assert api == {api_twin(p).name for p in ui_files()}
    for name in api:
        assert "nodes" not in load(REPO / "workflows" / "api" / name)


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_every_ui_workflow_has_a_thumbnail(ui_path):
    from PIL import Image
    thumb = ui_path.with_suffix(".jpg")  # where ComfyUI's template browser (frontend 1.27) looks
    assert thumb.is_file(), f"{thumb.name} is missing"
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and 128 <= image.width <= 1024 and 96 <= image.height <= 1024
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50, "the thumbnail is (nearly) blank"


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_model_loaders_carry_download_metadata(ui_path):
    expected = {"UNETLoader": {("flux1-dev.safetensors", "diffusion_models")},
                "DualCLIPLoader": {("clip_l.safetensors", "text_encoders"), ("t5xxl_fp16.safetensors", "text_encoders")},
                "VAELoader": {("ae.safetensors", "vae")}}
    seen = set()
    for node in load(ui_path)["nodes"]:
        if node["type"] not in expected:
            continue
        seen.add(node["type"])
        models = node["properties"]["models"]
        assert {(m["name"], m["directory"]) for m in models} == expected[node["type"]]
        names = set(node["widgets_values"])
        for m in models:
            assert m["name"] in names, f"{m['name']} is not what the loader loads"
            assert m["url"].startswith("https://huggingface.co/") and m["url"].endswith("/" + m["name"])
    assert seen == set(expected)


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_no_two_nodes_overlap(ui_path):
    boxes = []
    for n in load(ui_path)["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        boxes.append((n["id"], x, y - TITLE_HEIGHT, x + w, y + h))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, f"{ui_path.name}: nodes {a[0]} and {b[0]} overlap"


def backward_links(wf):
    """Links whose input sits left of their source's right edge. LiteGraph draws such a link as a loop
    back across the canvas, behind the source, the target and whatever stands between them."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    return [(link_id, src, dst) for link_id, src, _, dst, _, _ in wf["links"]
            if nodes[dst]["pos"][0] < nodes[src]["pos"][0] + nodes[src]["size"][0]]


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_every_link_runs_left_to_right(ui_path):
    assert backward_links(load(ui_path)) == []


SLOT_HEIGHT = 20  # LiteGraph's NODE_SLOT_HEIGHT: slot i sits (i + 0.7) slots below the node's top


def link_curve(wf, link, points=64):
    """Points of a link as LiteGraph draws it (a spline from the output slot to the input slot, each
    control point a quarter of the distance straight out of its slot)."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    _id, src, src_slot, dst, dst_slot, _type = link
    a = (nodes[src]["pos"][0] + nodes[src]["size"][0], nodes[src]["pos"][1] + (src_slot + 0.7) * SLOT_HEIGHT)
    b = (nodes[dst]["pos"][0], nodes[dst]["pos"][1] + (dst_slot + 0.7) * SLOT_HEIGHT)
    d = math.dist(a, b) * 0.25
    c1, c2 = (a[0] + d, a[1]), (b[0] - d, b[1])
    out = []
    for k in range(points + 1):
        t = k / points
        out.append(tuple((1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3
                         for p0, p1, p2, p3 in zip(a, c1, c2, b)))
    return out


def links_behind_nodes(wf):
    """(link id, node id) for every link that runs behind a node other than its two ends (title bar
    included), as the frontend draws the stored positions and sizes."""
    found = []
    for link in wf["links"]:
        curve = link_curve(wf, link)
        for n in wf["nodes"]:
            if n["id"] in (link[1], link[3]):
                continue
            x, y = n["pos"]
            w, h = n["size"]
            if any(x < px < x + w and y - TITLE_HEIGHT < py < y + h for px, py in curve):
                found.append((link[0], n["id"]))
    return found


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_no_link_runs_behind_a_node(ui_path):
    assert links_behind_nodes(load(ui_path)) == []


def test_link_behind_node_check_can_fail():
    node = lambda i, x, y: {"id": i, "pos": [x, y], "size": [200, 100]}  # noqa: E731
    wf = {"nodes": [node(1, 0, 0), node(2, 300, 0), node(3, 600, 0)], "links": [[7, 1, 0, 3, 0, "IMAGE"]]}
    assert links_behind_nodes(wf) == [(7, 2)]  # straight through the middle node
    wf["nodes"][1]["pos"][1] = 300  # moved out of the way
    assert links_behind_nodes(wf) == []


def test_no_node_starts_left_of_or_above_the_canvas_origin():
    """Opened from Templates the view starts at the origin: a node at negative x or y starts off-screen."""
    for ui_path in ui_files():
        for n in load(ui_path)["nodes"]:
            assert n["pos"][0] >= 0 and n["pos"][1] - TITLE_HEIGHT >= 0, (ui_path.name, n["id"], n.get("title"))


def test_backward_link_check_can_fail():
    # two nodes stacked in one column, the upper feeding the lower: the link loops back
    node = lambda i, x, y: {"id": i, "pos": [x, y], "size": [300, 100]}  # noqa: E731
    wf = {"nodes": [node(1, 0, 0), node(2, 0, 200)], "links": [[7, 1, 0, 2, 0, "CLIP"]]}
    assert backward_links(wf) == [(7, 1, 2)]
    wf["nodes"][1]["pos"][0] = 300  # the next column: a plain curve to the right
    assert backward_links(wf) == []


def test_overlap_check_can_fail():
    a, b = (1, 0, 0, 100, 100), (2, 90, 50, 200, 120)
    assert not (a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2])


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_text_is_padded_as_the_reference_and_the_notes_say_why(ui_path):
    wf = load(ui_path)
    t5 = [n for n in wf["nodes"] if n["type"] == "T5TokenizerOptions"]
    assert len(t5) == 1 and t5[0]["widgets_values"] == [0, 512]
    links = {l[0]: l for l in wf["links"]}
    for n in wf["nodes"]:
        if n["type"] == "CLIPTextEncode":
            assert links[n["inputs"][0]["link"]][1] == t5[0]["id"], "prompts must be encoded through the T5 options"
    notes = " ".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note")
    assert "512 tokens" in notes and "256" in notes


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_ui_links_connect_existing_sockets_of_matching_types(ui_path):
    wf = load(ui_path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(l[0] for l in wf["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert out["type"] == typ and inp["type"] in (typ, "*"), f"link {link_id}: {out['type']} -> {inp['type']} ({typ})"
        assert link_id in out["links"] and inp["link"] == link_id
    linked = {l[0] for l in wf["links"]}
    for n in nodes.values():
        for inp in n.get("inputs", []):
            assert inp["link"] is None or inp["link"] in linked


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_our_node_types_exist_and_every_type_is_known(ui_path):
    ours = our_node_ids()
    assert {"LumiXTensorLoRALoader", "LumiXSampler", "LumiXQueryBroadcast"} <= ours
    for n in load(ui_path)["nodes"]:
        if n["type"].startswith("LumiX"):
            assert n["type"] in ours, f"{n['type']} is not a node of this extension"
        assert n["type"] in WIDGETS or n["type"] in ours, f"unexpected node type {n['type']}"


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_ui_and_api_twins_set_the_same_values_and_links(ui_path):
    ui, api = load(ui_path), load(api_twin(ui_path))
    ui_nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY_TYPES}
    assert set(ui_nodes) == set(api)
    links = {l[0]: l for l in ui["links"]}
    for node_id, node in ui_nodes.items():
        entry = api[node_id]
        assert entry["class_type"] == node["type"]
        widgets = ui_widget_values(node, WIDGETS[node["type"]])
        for name, value in widgets.items():
            assert entry["inputs"][name] == value, f"{node['type']}.{name}: UI {value!r} vs API {entry['inputs'][name]!r}"
        for inp in node.get("inputs", []):
            if inp["link"] is not None:
                _, src, slot, *_ = links[inp["link"]]
                assert entry["inputs"][inp["name"]] == [str(src), slot]
        assert set(entry["inputs"]) == set(widgets) | {i["name"] for i in node.get("inputs", []) if i["link"] is not None}


def test_the_tools_workflow_shows_the_consistency_report():
    wf = load(REPO / "workflows" / "lumix_text_to_intrinsic_tools.json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    report = [l for l in wf["links"] if nodes[l[1]]["type"] == "LumiXConsistency" and l[5] == "STRING"]
    assert len(report) == 1 and nodes[report[0][3]]["type"] == "PreviewAny"


def test_the_composable_workflow_uses_sampler_custom_advanced():
    api = load(REPO / "workflows" / "api" / "lumix_composable_sampler_custom_advanced_api.json")
    by_type = {n["class_type"]: (k, n["inputs"]) for k, n in api.items()}
    _, sca = by_type["SamplerCustomAdvanced"]
    assert api[sca["noise"][0]]["class_type"] == "LumiXNoise"
    assert api[sca["sigmas"][0]]["class_type"] == "LumiXReferenceSigmas"
    assert api[sca["latent_image"][0]]["class_type"] == "LumiXEmptyLatent"
    assert api[sca["guider"][0]]["class_type"] == "CFGGuider" and by_type["CFGGuider"][1]["cfg"] == 3.0


def test_reference_defaults():
    t2i = load(REPO / "workflows" / "api" / "lumix_text_to_intrinsic_api.json")
    by_type = {}
    for node in t2i.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    sampler = by_type["LumiXSampler"][0]
    assert (sampler["width"], sampler["height"], sampler["steps"], sampler["cfg"]) == (512, 512, 50, 3.0)
    assert all(g["guidance"] == 3.5 for g in by_type["FluxGuidance"])
    texts = [c["text"] for c in by_type["CLIPTextEncode"]]
    assert "blurry, low quality, artifacts, distorted, noisy, pixelated, jpeg artifacts" in texts
    assert sorted(s["filename_prefix"] for s in by_type["SaveImage"]) == sorted(
        f"LumiX/{m}" for m in ("albedo", "irradiance", "color", "depth", "normal"))
    assert by_type["UNETLoader"][0]["unet_name"] == "flux1-dev.safetensors"
    assert by_type["DualCLIPLoader"][0]["type"] == "flux"
    assert by_type["LumiXTensorLoRALoader"][0]["lumix_name"] == "lumix.safetensors"
    assert sampler["schedule"] == "reference" and "ModelSamplingFlux" not in by_type
    assert by_type["T5TokenizerOptions"][0]["min_length"] == 512
    photo = load(REPO / "workflows" / "api" / "lumix_photo_decomposition_api.json")
    sampler = next(n["inputs"] for n in photo.values() if n["class_type"] == "LumiXSampler")
    assert sampler["cfg"] == 1.0 and sampler["color"][0] in photo
    assert sampler["held_maps_guidance"] == "reference"
    assert sampler["held_maps_size"] == "from_given" and (sampler["area_width"], sampler["area_height"]) == (1536, 1152)
    assert sampler["held_maps_resize"] == "stretch" and sampler["output_size"] == "sampled"
    assert photo[sampler["color"][0]]["class_type"] == "LoadImage"
    assert len([n for n in photo.values() if n["class_type"] == "SaveImage"]) == 4


def test_workflow_files_are_what_the_builder_writes():
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_workflows", REPO / "scripts" / "build_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules["build_workflows"] = builder  # dataclasses look their module up there
    spec.loader.exec_module(builder)
    files = builder.render_all()
    for name, text in files.items():
        assert (REPO / "workflows" / name).read_text() == text, f"workflows/{name} is stale: run scripts/build_workflows.py"
    assert {p.name for p in ui_files()} == {n for n in files if "/" not in n}
