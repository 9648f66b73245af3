"""Host-free checks of the shipped workflows: parse, links, twins agree, our node types exist."""
import ast
import sys
from pathlib import Path

import pytest

from workflow_files import FRONTEND_ONLY_TYPES, api_twin, load, ui_files, ui_widget_values

REPO = Path(__file__).resolve().parents[1]
# Widget order of the stock ComfyUI nodes the workflows use (from ComfyUI's INPUT_TYPES); the
# host test checks the same against a real ComfyUI, including our own nodes' schemas.
WIDGETS = {
    "UNETLoader": ["unet_name", "weight_dtype"],
    "DualCLIPLoader": ["clip_name1", "clip_name2", "type", "device"],
    "VAELoader": ["vae_name"],
    "CLIPTextEncode": ["text"],
    "FluxGuidance": ["guidance"],
    "ModelSamplingFlux": ["max_shift", "base_shift", "width", "height"],
    "SaveImage": ["filename_prefix"],
    "LoadImage": ["image"],
    "LumiXTensorLoRALoader": ["lumix_name", "strength", "query_broadcast"],
    "LumiXSampler": ["seed", "steps", "cfg", "sampler_name", "scheduler", "width", "height", "scenes", "shared_noise"],
    "Note": ["text"],
    "PreviewImage": [],
    "LumiXConsistency": ["fov_degrees", "depth_convention"],
    "LumiXRelight": ["azimuth", "elevation", "light_color", "intensity", "ambient"],
    "LumiXDepthColormap": ["colormap", "near_is_high", "depth_convention"],
    "LumiXSaveMaps": ["filename_prefix", "fov_degrees"],
    "LumiXTrainingDataset": ["folder", "resolution", "flip", "cache_folder"],
    "LumiXTrainer": ["output_name", "steps", "rank", "optimizer", "learning_rate", "batch_size", "grad_accumulation",
                     "warmup_steps", "max_grad_norm", "timestep_sampling", "guidance", "held_map_probability",
                     "caption_dropout", "gradient_checkpointing", "seed", "save_every", "init_from", "resume",
                     "validate_every", "validation_scenes", "validation_size", "validation_steps"],
}


def our_node_ids():
    """node_id="..." literals of the extension's io.Schema definitions."""
    ids = set()
    for path in (REPO / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "node_id" and isinstance(node.value, ast.Constant):
                ids.add(node.value.value)
    return ids


def test_the_two_required_workflows_and_their_twins_exist():
    names = {p.name for p in ui_files()}
    assert {"lumix_text_to_intrinsic.json", "lumix_photo_decomposition.json", "lumix_text_to_intrinsic_tools.json"} <= names
    for ui in ui_files():
        assert api_twin(ui).is_file(), f"{ui.name} has no API-format twin"


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_ui_links_connect_existing_sockets_of_matching_types(ui_path):
    wf = load(ui_path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(l[0] for l in wf["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert out["type"] == typ == inp["type"], f"link {link_id}: {out['type']} -> {inp['type']} ({typ})"
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


def test_reference_defaults():
    t2i = load(REPO / "workflows" / "lumix_text_to_intrinsic_api.json")
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
    photo = load(REPO / "workflows" / "lumix_photo_decomposition_api.json")
    sampler = next(n["inputs"] for n in photo.values() if n["class_type"] == "LumiXSampler")
    assert sampler["cfg"] == 1.0 and sampler["color"][0] in photo
    assert photo[sampler["color"][0]]["class_type"] == "LoadImage"
    assert len([n for n in photo.values() if n["class_type"] == "SaveImage"]) == 4


def test_workflow_files_are_what_the_builder_writes():
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_workflows", REPO / "scripts" / "build_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules["build_workflows"] = builder  # dataclasses look their module up there
    spec.loader.exec_module(builder)
    for name, text in builder.render_all().items():
        assert (REPO / "workflows" / name).read_text() == text, f"workflows/{name} is stale: run scripts/build_workflows.py"
