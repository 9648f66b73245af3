"""Prepare a ComfyUI copy for a look at the LumiX nodes in a real browser (scripts/ui_check/README.md).

Links this checkout and the test-only tiny-model nodes into <comfyui>/custom_nodes, writes tiny random
checkpoints into models/loras (one LumiX, one other LoRA, one damaged file: the loader's menu must show
only the first), writes the tools workflow with the tiny models in place of the real ones, and every
shipped workflow small and fast (tiny_<name>.json, for check_workflows.mjs) with the photo and the
training dataset they read in <comfyui>/input.
Run with the Python of that ComfyUI:  python scripts/ui_check/prepare.py /path/to/ComfyUI out_dir
"""
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "host"), str(REPO / "scripts")]

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import build_workflows  # noqa: E402
from tiny_flux import official_state_dict  # noqa: E402
from training_fixtures import make_scene_folder  # noqa: E402

# Sizes of tests/host/tiny_comfy.py's tiny FLUX, read from its "HIDDEN, HEADS, ... = 64, 2, ..." line
# (importing it would import ComfyUI).
TINY = {}
for line in (REPO / "tests" / "host" / "tiny_comfy.py").read_text().splitlines():
    if line.startswith("HIDDEN, "):
        names, values = line.split("=")
        TINY = dict(zip((n.strip() for n in names.split(",")), (int(v) for v in values.split("#")[0].split(","))))
        break

FIXTURES = {"UNETLoader": "LumiXTestTinyFlux", "DualCLIPLoader": "LumiXTestTinyCLIP", "VAELoader": "LumiXTestTinyVAE"}


def link(target: Path, name: Path):
    if name.is_symlink() or name.exists():
        return
    os.symlink(target, name)


def tiny_tools_workflow(size=64, steps=2):
    wf = json.loads((REPO / "workflows" / "lumix_text_to_intrinsic_tools.json").read_text())
    for node in wf["nodes"]:
        if node["type"] in FIXTURES:
            node["type"], node["widgets_values"] = FIXTURES[node["type"]], []
            node.get("properties", {}).pop("models", None)
        elif node["type"] == "LumiXTensorLoRALoader":
            node["widgets_values"][0] = "lumix_in_loras.safetensors"
        elif node["type"] == "LumiXSampler":
            values = node["widgets_values"]  # seed, control, steps, cfg, sampler, scheduler, width, height, ...
            values[2], values[6], values[7] = steps, size, size
        elif node["type"] == "ModelSamplingFlux":
            node["widgets_values"][2:4] = [size, size]
    return wf


# Widget values that make each shipped workflow run in seconds on the CPU with the tiny models.
SMALL = {"LumiXSampler": {"steps": 2, "width": 64, "height": 64, "area_width": 64, "area_height": 48},
         "LumiXEmptyLatent": {"width": 64, "height": 64}, "LumiXReferenceSigmas": {"steps": 2, "width": 64, "height": 64},
         "LumiXTensorLoRALoader": {"lumix_name": "lumix_in_loras.safetensors"},
         "LumiXTrainingDataset": {"resolution": 64},
         "LumiXTrainer": {"steps": 2, "save_every": 1, "validate_every": 2, "validation_scenes": 1,
                          "validation_size": 64, "validation_steps": 2, "output_name": "ui_check_trained"}}


def tiny_shipped_workflows() -> dict[str, dict]:
    """Every shipped workflow in UI format, built by scripts/build_workflows.py with the fixture loaders and
    SMALL's values (by widget name, so the frontend's extra widgets stay where they belong)."""
    out = {}
    for name, build in build_workflows.WORKFLOWS.items():
        nodes = build()
        for node in nodes:
            node.widgets.update({k: v for k, v in SMALL.get(node.type, {}).items() if k in node.widgets})
        wf = build_workflows.to_ui(nodes)
        for node in wf["nodes"]:
            if node["type"] in FIXTURES:
                node["type"], node["widgets_values"] = FIXTURES[node["type"]], []
                node.get("properties", {}).pop("models", None)
        out[name] = wf
    return out


def write_inputs(comfyui: Path):
    """The photo the decomposition workflow loads and the training workflow's dataset (tiny scenes)."""
    from PIL import Image
    inputs = comfyui / "input"
    inputs.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(inputs / "example.png")
    dataset = inputs / build_workflows.TRAINING_DATASET_FOLDER
    for k in range(2):
        if not (dataset / f"scene_{k}").exists():
            make_scene_folder(str(dataset), f"scene_{k}", seed=k, prompt=f"a tiny room {k}", width=64, height=64)


def skip_first_run_dialog(comfyui: Path):
    """A fresh ComfyUI opens its template browser over the canvas on a user's first visit (frontend 1.35);
    mark the tutorial done, as the frontend does once it was shown, so the screenshots show the graph."""
    path = comfyui / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = json.loads(path.read_text()) if path.is_file() else {}
    settings["Comfy.TutorialCompleted"] = True
    path.write_text(json.dumps(settings, indent=4))


def main(comfyui: Path, out: Path):
    skip_first_run_dialog(comfyui)
    custom = comfyui / "custom_nodes"
    custom.mkdir(exist_ok=True)
    link(REPO, custom / "comfyui-lumix")
    link(REPO / "tests" / "host" / "server_fixture" / "lumix_test_fixtures", custom / "lumix_test_fixtures")
    loras = comfyui / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_file(official_state_dict(hidden=TINY["HIDDEN"], R=4, double=TINY["DOUBLE"], single=TINY["SINGLE"], scale=0.5),
              str(loras / "lumix_in_loras.safetensors"))
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 16)},
              str(loras / "some_style_lora.safetensors"))
    (loras / "damaged.safetensors").write_bytes(b"\x00" * 32)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiny_tools_workflow.json").write_text(json.dumps(tiny_tools_workflow()))
    for name, wf in tiny_shipped_workflows().items():
        (out / f"tiny_{name}.json").write_text(json.dumps(wf))
    write_inputs(comfyui)
    print(f"ready: {custom}, {loras}, {out / 'tiny_tools_workflow.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
