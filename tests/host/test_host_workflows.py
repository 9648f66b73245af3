"""The shipped workflows and the headless client against a real ComfyUI."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import COMFYUI, DOUBLE, HIDDEN, REPO, SINGLE, comfy_nodes, folder_paths, load_extension
from tiny_flux import official_state_dict
from workflow_files import FRONTEND_ONLY_TYPES, api_twin, load, ui_files, ui_widget_values

import execution  # noqa: E402  (ComfyUI's)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def all_nodes():
    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    return load_extension()


def is_output_node(node_class):
    if hasattr(node_class, "GET_NODE_INFO_V1"):
        return node_class.GET_NODE_INFO_V1()["output_node"]
    return getattr(node_class, "OUTPUT_NODE", False)


def ordered_inputs(node_class):
    """(name, is_widget) of every input in ComfyUI's order (required, then optional), as /object_info has them."""
    if hasattr(node_class, "GET_NODE_INFO_V1"):
        info = node_class.GET_NODE_INFO_V1()
        inputs, order = info["input"], info["input_order"]
    else:
        inputs = node_class.INPUT_TYPES()
        order = {k: list(v) for k, v in inputs.items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs[section][name]
            yield name, isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def socket_names(node_class):
    return [name for name, is_widget in ordered_inputs(node_class) if not is_widget]


def widget_names(node_class):
    return [name for name, is_widget in ordered_inputs(node_class) if is_widget]


@pytest.fixture(scope="module")
def placeholder_models(tmp_path_factory, all_nodes):
    """Empty files standing in for the model files, in a temporary models folder."""
    root = tmp_path_factory.mktemp("models")
    for folder, name in (("diffusion_models", "flux1-dev.safetensors"), ("text_encoders", "clip_l.safetensors"),
                         ("text_encoders", "t5xxl_fp16.safetensors"), ("vae", "ae.safetensors"),
                         ("lumix", "lumix.safetensors")):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / name).write_bytes(b"")
        folder_paths.add_model_folder_path(folder, str(root / folder))
    inputs = tmp_path_factory.mktemp("input")
    from PIL import Image
    Image.new("RGB", (32, 32), (200, 100, 50)).save(inputs / "example.png")
    folder_paths.set_input_directory(str(inputs))
    return root


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_comfyui_validates_the_api_workflow(placeholder_models, ui_path):
    prompt = load(api_twin(ui_path))
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid, f"{error} {json.dumps(node_errors)[:2000]}"
    output_nodes = {k for k, v in prompt.items() if is_output_node(comfy_nodes.NODE_CLASS_MAPPINGS[v["class_type"]])}
    assert output_nodes and set(outputs) == output_nodes


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_ui_workflow_types_known_and_widgets_match_the_api_twin(all_nodes, ui_path):
    ui, api = load(ui_path), load(api_twin(ui_path))
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        assert node["type"] in all_nodes, f"ComfyUI {node['type']} is unknown to this ComfyUI"
        widgets = ui_widget_values(node, widget_names(all_nodes[node["type"]]))
        for name, value in widgets.items():
            assert api[str(node["id"])]["inputs"][name] == value
        assert [i["name"] for i in node["inputs"]] == socket_names(all_nodes[node["type"]]), node["type"]


# ---- a real server on loopback ------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    os.symlink(REPO, base / "custom_nodes" / "comfyui-lumix")
    os.symlink(REPO / "tests" / "host" / "server_fixture" / "lumix_test_fixtures", base / "custom_nodes" / "lumix_test_fixtures")
    (base / "models" / "lumix").mkdir(parents=True)
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, scale=0.5),
              str(base / "models" / "lumix" / "tiny_lumix.safetensors"))
    port = free_port()
    cmd = [sys.executable, str(COMFYUI / "main.py"), "--base-directory", str(base), "--listen", "127.0.0.1",
           "--port", str(port), "--disable-auto-launch"]
    if not torch.cuda.is_available():
        cmd.append("--cpu")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=str(COMFYUI), stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://{address}/system_stats", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"ComfyUI did not start: {(base / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    yield {"address": address, "base": base}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def tiny_workflow(path, tmp_path):
    """The shipped API workflow with the fixture nodes in place of the model files."""
    wf = load(path)
    replace = {"UNETLoader": "LumiXTestTinyFlux", "DualCLIPLoader": "LumiXTestTinyCLIP", "VAELoader": "LumiXTestTinyVAE"}
    for node in wf.values():
        if node["class_type"] in replace:
            node["class_type"], node["inputs"] = replace[node["class_type"]], {}
        if node["class_type"] == "LumiXTensorLoRALoader":
            node["inputs"]["lumix_name"] = "tiny_lumix.safetensors"
    out = tmp_path / path.name
    out.write_text(json.dumps(wf))
    return out


def test_object_info_lists_the_lumix_nodes(server):
    info = json.loads(urllib.request.urlopen(f"http://{server['address']}/object_info").read())
    for key, name in (("LumiXTensorLoRALoader", "LumiX Tensor LoRA Loader"),
                      ("LumiXQueryBroadcast", "LumiX Query-Broadcast Attention"),
                      ("LumiXSampler", "LumiX Intrinsic Sampler"), ("LumiXConsistency", "LumiX Map Consistency"),
                      ("LumiXRelight", "LumiX Relight"), ("LumiXSaveMaps", "LumiX Save Maps"),
                      ("LumiXDepthColormap", "LumiX Depth Colormap"),
                      ("LumiXNormalFlip", "LumiX Normal OpenGL <-> DirectX")):
        assert info[key]["display_name"] == name
    assert "tiny_lumix.safetensors" in info["LumiXTensorLoRALoader"]["input"]["required"]["lumix_name"][1]["options"]


def test_comfyui_reads_the_registry_metadata():
    from comfy_config import config_parser
    config = config_parser.extract_node_configuration(str(REPO))
    assert config.project.name == "comfyui-lumix" and config.project.license.file == "LICENSE"
    assert config.tool_comfy.publisher_id == "lumix-comfyui" and config.tool_comfy.display_name
    assert len(config.tool_comfy.models) == 4
