"""The shipped workflows against a real ComfyUI: validated, their UI and API twins agree, and run in this process."""
import asyncio
import json
from pathlib import Path

import numpy
import pytest
import torch
from safetensors.torch import save_file

from comfy_host import DOUBLE, HIDDEN, REPO, SINGLE, comfy_nodes, folder_paths, load_extension, output_dir  # noqa: F401  (output_dir: a fixture)
from comfy_server import FIXTURE_LOADERS, FIXTURE_NODES, TINY_CHECKPOINT, with_fixture_models
from tiny_flux import official_state_dict
from workflow_files import FRONTEND_ONLY_TYPES, api_twin, load, ui_files, ui_widget_values

import execution  # noqa: E402  (ComfyUI's)
from lumix_comfy_models import prompt_executor  # noqa: E402  (on sys.path through tiny_comfy)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def all_nodes():
    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    return load_extension()


def is_output_node(node_class):
    if hasattr(node_class, "GET_NODE_INFO_V1"):
        return node_class.GET_NODE_INFO_V1()["output_node"]
    return getattr(node_class, "OUTPUT_NODE", False)


def input_schema(node_class):
    """(inputs by section, input names in order by section), as /object_info has them."""
    if hasattr(node_class, "GET_NODE_INFO_V1"):
        info = node_class.GET_NODE_INFO_V1()
        return info["input"], info["input_order"]
    inputs = node_class.INPUT_TYPES()
    return inputs, {k: list(v) for k, v in inputs.items()}


def ordered_inputs(node_class):
    """(name, is_widget) of every input in ComfyUI's order (required, then optional), as /object_info has them."""
    inputs, order = input_schema(node_class)
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs[section][name]
            yield name, isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def widget_specs(node_class):
    """(name, type or combo options, extra info) of every widget input, in the frontend's order."""
    inputs, order = input_schema(node_class)
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs[section][name]
            kind = spec[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if kind == "COMBO":  # V3 combos: options in the extra info
                    kind = list(extra.get("options", []))
                yield name, kind, extra


CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def frontend_extra_widget(name, kind, extra):
    """The widget the frontend inserts after this one, as it decides (its rule for numOriginalWidgets:
    control_after_generate, or an INT named seed/noise_seed; an image-upload combo gets an upload button)."""
    if extra.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed")):
        return "control"
    if extra.get("image_upload"):
        return "upload"
    return None


def widget_value_problems(node, node_class):
    """Every widget value of a UI-format node checked against the node's schema as the frontend lays the
    widgets out (the extra widgets included): a list of problems, empty when it fits."""
    values, problems = list(node.get("widgets_values") or []), []
    where = f"{node['type']} node {node['id']}"
    for name, kind, extra in widget_specs(node_class):
        if not values:
            problems.append(f"{where}: no value for {name}")
            break
        value = values.pop(0)
        if isinstance(kind, list):
            if value not in kind:
                problems.append(f"{where}: {name} = {value!r} is not one of its options")
        elif kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{where}: {name} = {value!r} is not an integer")
        elif kind == "FLOAT" and (not isinstance(value, (int, float)) or isinstance(value, bool) or value != value):
            problems.append(f"{where}: {name} = {value!r} is not a number")
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            problems.append(f"{where}: {name} = {value!r} is not a boolean")
        elif kind == "STRING" and not isinstance(value, str):
            problems.append(f"{where}: {name} = {value!r} is not a string")
        elif kind in ("INT", "FLOAT") and not (extra.get("min", value) <= value <= extra.get("max", value)):
            problems.append(f"{where}: {name} = {value!r} is outside {extra.get('min')}..{extra.get('max')}")
        added = frontend_extra_widget(name, kind, extra)
        if added and not values:
            problems.append(f"{where}: no value for the {added} widget after {name}")
        elif added:
            extra_value = values.pop(0)
            if added == "control" and extra_value not in CONTROL_VALUES:
                problems.append(f"{where}: the control widget after {name} holds {extra_value!r}")
    if values:
        problems.append(f"{where}: {len(values)} value(s) more than its widgets: {values!r}")
    return problems


@pytest.mark.parametrize("ui_path", ui_files(), ids=lambda p: p.name)
def test_every_widget_value_fits_its_schema_as_the_frontend_lays_it_out(all_nodes, placeholder_models, ui_path):
    problems = []
    for node in load(ui_path)["nodes"]:
        if node["type"] not in FRONTEND_ONLY_TYPES:
            problems += widget_value_problems(node, all_nodes[node["type"]])
    assert problems == []


def test_widget_value_check_catches_the_shifted_trainer_values(all_nodes, placeholder_models):
    # the trainer as shipped before: no control value after seed, so every later value sits one slot early
    trainer = next(n for n in load(ui_files()[0].parent / "lumix_train_then_sample.json")["nodes"]
                   if n["type"] == "LumiXTrainer")
    values = list(trainer["widgets_values"])
    seed_slot = widget_names(all_nodes["LumiXTrainer"]).index("seed")
    assert values[seed_slot + 1] == "fixed"
    shifted = dict(trainer, widgets_values=values[:seed_slot + 1] + values[seed_slot + 2:])
    problems = widget_value_problems(shifted, all_nodes["LumiXTrainer"])
    assert any("no value for the control widget" in p or "is not" in p for p in problems), problems
    out_of_range = dict(trainer, widgets_values=[*values[:seed_slot], -1, *values[seed_slot + 1:]])
    assert any("seed = -1 is outside" in p for p in widget_value_problems(out_of_range, all_nodes["LumiXTrainer"]))


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
    (inputs / "render_passes.exr").write_bytes(b"")  # the 3D workflow's pass file (validation checks the name)
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
        extras = {name for name, kind, extra in widget_specs(all_nodes[node["type"]])
                  if frontend_extra_widget(name, kind, extra)}
        widgets = ui_widget_values(node, widget_names(all_nodes[node["type"]]), lambda name: name in extras)
        for name, value in widgets.items():
            assert api[str(node["id"])]["inputs"][name] == value
        assert [i["name"] for i in node["inputs"]] == socket_names(all_nodes[node["type"]]), node["type"]


def test_comfyui_reads_the_registry_metadata():
    from comfy_config import config_parser
    config = config_parser.extract_node_configuration(str(REPO))
    assert config.project.name == "comfyui-lumix" and config.project.license.file == "LICENSE"
    assert config.tool_comfy.publisher_id == "lumix-comfyui" and config.tool_comfy.display_name
    assert len(config.tool_comfy.models) == 4


# ---- what reaches the model when the shipped API workflows run (in this process) -----------------

import math  # noqa: E402

import comfy.patcher_extension  # noqa: E402
import tiny_comfy  # noqa: E402

MODEL_CALLS = []  # one entry per diffusion-model call of the recording model


class RecordingFlux:
    """A loader standing in for UNETLoader: the tiny FLUX with a wrapper recording every model call
    (timesteps, guidance, batch, which conditions); the model itself is skipped (zeros) to stay fast."""
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "LumiX/tests"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        def record(executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                   transformer_options={}, **kwargs):
            MODEL_CALLS.append({"t": timestep.double().clone(), "guidance": guidance.clone(), "batch": x.shape[0],
                                "x": x.clone(), "conds": list(transformer_options.get("cond_or_uncond", []))})
            return torch.zeros_like(x)
        model = tiny_comfy.tiny_flux(seed=1)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "lumix_test_record", record)
        return (model,)


class StubServer:
    client_id = last_node_id = last_prompt_id = None

    def send_sync(self, *args, **kwargs):
        pass


def reference_timesteps(width, height, steps):
    """The reference's sigmas (its FLUX shift with image_seq_len = (W//8)*(H//8)//256), written out here."""
    n = (width // 8) * (height // 8) // 256
    mu = 0.5 + (1.15 - 0.5) * (n - 256) / (4096 - 256)
    return [math.exp(mu) / (math.exp(mu) + 1 / t - 1) for t in (1 - i / steps for i in range(steps))]


@pytest.fixture()
def run_shipped(placeholder_models, output_dir, tmp_path_factory):
    """Runs a shipped API workflow in this process with tiny models in place of the loaders."""
    comfy_nodes.NODE_CLASS_MAPPINGS["LumiXTestRecordingFlux"] = RecordingFlux
    import importlib.util
    spec = importlib.util.spec_from_file_location("lumix_test_fixtures", FIXTURE_NODES / "__init__.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    comfy_nodes.NODE_CLASS_MAPPINGS.update(fixtures.NODE_CLASS_MAPPINGS)
    lumix_dir = tmp_path_factory.mktemp("lumix_models")
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, scale=0.5),
              str(lumix_dir / TINY_CHECKPOINT))
    folder_paths.add_model_folder_path("lumix", str(lumix_dir))

    def run(name, edit=None, loaders=None, folder=REPO / "workflows" / "api"):
        prompt = load(Path(folder) / f"{name}_api.json")
        with_fixture_models(prompt, loaders or {**FIXTURE_LOADERS, "UNETLoader": "LumiXTestRecordingFlux"})
        if edit:
            edit(prompt)
        MODEL_CALLS.clear()
        tiny_comfy.TOKENIZE_CALLS.clear()
        executor = prompt_executor(StubServer())
        outputs = [k for k, v in prompt.items() if is_output_node(comfy_nodes.NODE_CLASS_MAPPINGS[v["class_type"]])]
        executor.execute(prompt, "lumix-test", {}, outputs)
        assert executor.success, json.dumps(executor.status_messages, default=str)[-3000:]
        return prompt, executor
    return run


def set_sampler(**values):
    def edit(prompt):
        for node in prompt.values():
            if node["class_type"] in ("LumiXSampler", "LumiXReferenceSigmas", "LumiXEmptyLatent"):
                node["inputs"].update({k: v for k, v in values.items() if k in node["inputs"]})
    return edit


def per_step(calls):
    """[(timestep of a generated map, guidance values, conds, batch)] per sampling step: the model
    calls of one step (ComfyUI may batch the positive and negative pass or run them one by one)
    merged, in order."""
    steps = []
    for c in calls:
        t = c["t"][0].item()
        if steps and steps[-1][0] == t:
            steps[-1][1].extend(c["guidance"].tolist())
            steps[-1][2].extend(c["conds"])
            steps[-1][3] += c["batch"]
        else:
            steps.append([t, c["guidance"].tolist(), list(c["conds"]), c["batch"]])
    return [tuple(s) for s in steps]


@pytest.mark.parametrize("name,width,height,steps", [
    ("lumix_text_to_intrinsic", 512, 512, 50), ("lumix_text_to_intrinsic", 512, 512, 30),
    ("lumix_text_to_intrinsic", 768, 512, 28), ("lumix_text_to_intrinsic", 1024, 1024, 30),
    ("lumix_composable_sampler_custom_advanced", 512, 512, 50),
    ("lumix_composable_sampler_custom_advanced", 768, 512, 28)])
def test_text_workflows_run_the_references_schedule_guidance_and_cfg(run_shipped, name, width, height, steps):
    edit = None if (width, height, steps) == (512, 512, 50) else set_sampler(width=width, height=height, steps=steps)
    run_shipped(name, edit)
    calls = per_step(MODEL_CALLS)
    assert len(calls) == steps
    torch.testing.assert_close(torch.tensor([c[0] for c in calls], dtype=torch.float64),
                               torch.tensor(reference_timesteps(width, height, steps), dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)
    for t, guidance, conds, batch in calls:
        assert batch == 10 and sorted(conds) == [0, 1]  # 5 maps x (positive, negative) per step: true CFG
        assert guidance == [3.5] * 10  # FluxGuidance 3.5 on both passes
    first = MODEL_CALLS[0]["x"]
    assert all(torch.equal(first[0], first[i]) for i in range(1, 5))  # one noise for the five maps
    assert tiny_comfy.TOKENIZE_CALLS and all(c["t5xxl_min_length"] == 512 for c in tiny_comfy.TOKENIZE_CALLS)


@pytest.mark.parametrize("photo_size,sampled", [((640, 480), (1536, 1152)), ((480, 640), (1152, 1536))])
def test_photo_workflow_runs_the_references_decomposition(run_shipped, placeholder_models, photo_size, sampled):
    from PIL import Image
    Image.new("RGB", photo_size, (90, 140, 200)).save(Path(folder_paths.get_input_directory()) / "photo_test.png")

    def edit(prompt):
        for node in prompt.values():
            if node["class_type"] == "LoadImage":
                node["inputs"]["image"] = "photo_test.png"
            if node["class_type"] == "LumiXSampler":
                node["inputs"]["steps"] = 28
    run_shipped("lumix_photo_decomposition", edit)
    calls = per_step(MODEL_CALLS)
    assert len(calls) == 28
    torch.testing.assert_close(torch.tensor([c[0] for c in calls], dtype=torch.float64),
                               torch.tensor(reference_timesteps(*sampled, 28), dtype=torch.float64), rtol=1e-6, atol=1e-7)
    for call in MODEL_CALLS:
        assert call["batch"] == 5 and call["conds"] == [0]  # no negative pass
        assert call["guidance"].tolist() == [1.0] * 5  # guidance embed 1.0
        assert call["t"][2] == 0  # the held photo at timestep 0
        assert call["x"].shape[-2:] == (sampled[1] // 8, sampled[0] // 8)  # the photo's aspect, 1536x1152 budget
    saved = sorted((Path(folder_paths.get_output_directory()) / "LumiX").glob("*.png"))
    assert len(saved) == 4 and all(Image.open(p).size == sampled for p in saved)


# ---- provenance: what Save Maps records, on the all-in-one and the composable route ---------------

LEGACY_DIR = REPO / "tests" / "legacy_workflows"


def with_save_maps(prefix, steps=3, size=64):
    """An edit: small fast run, and LumiX Save Maps on the maps (from the sampler or from Split Maps)."""
    def edit(prompt):
        set_sampler(width=size, height=size, steps=steps)(prompt)
        source = next(k for k, v in prompt.items() if v["class_type"] in ("LumiXSampler", "LumiXSplitMaps"))
        for k in [k for k, v in prompt.items() if v["class_type"] in ("SaveImage", "LumiXSaveMaps")]:
            del prompt[k]
        prompt["900"] = {"class_type": "LumiXSaveMaps", "inputs": {
            **{name: [source, i] for i, name in enumerate(MAP_NAMES)}, "filename_prefix": prefix, "fov_degrees": 60.0}}
    return edit


MAP_NAMES = ("albedo", "irradiance", "color", "depth", "normal")


def test_both_routes_save_the_same_scene_and_the_training_reader_takes_it(run_shipped, output_dir):
    from PIL import Image
    from provenance_reader import scan_dataset
    for name, prefix in (("lumix_text_to_intrinsic", "routes/all_in_one"),
                         ("lumix_composable_sampler_custom_advanced", "routes/composable")):
        run_shipped(name, with_save_maps(prefix), loaders=FIXTURE_LOADERS)  # the tiny FLUX really runs
    a, b = output_dir / "routes" / "all_in_one_00001", output_dir / "routes" / "composable_00001"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in a.iterdir():
        other = b / path.name
        if path.name == "lumix.json":
            ja, jb = json.loads(path.read_text()), json.loads(other.read_text())
            assert ja == jb
            generation = ja["generation"]
            assert generation["prompt"].startswith("a cozy living room") and generation["negative_prompt"].startswith("blurry")
            assert (generation["seed"], generation["steps"], generation["cfg"]) == (42, 3, 3.0)
            assert (generation["schedule"], generation["scenes"], generation["given_maps"]) == ("reference", 1, [])
            assert generation["lumix_checkpoint"] == TINY_CHECKPOINT and generation["lumix_strength"] == 1.0
        elif path.suffix == ".png":  # the pixels (the 8-bit files also embed each route's own workflow)
            pa, pb = numpy.asarray(Image.open(path)), numpy.asarray(Image.open(other))
            assert pa.dtype == pb.dtype and numpy.array_equal(pa, pb), path.name
            assert pa.std() > 0  # not a blank map
        else:
            assert path.read_bytes() == other.read_bytes(), path.name
    scan = scan_dataset(str(output_dir / "routes"))
    assert sorted(s.scene_id for s in scan.scenes) == ["all_in_one_00001", "composable_00001"] and not scan.skipped
    assert all(s.caption.startswith("a cozy living room") for s in scan.scenes)


def test_provenance_records_models_held_maps_and_legacy_values_as_keys(all_nodes):
    from provenance_reader import generation_info
    photo = load(LEGACY_DIR / "api" / "lumix_photo_decomposition_api.json")  # shipped before the option keys
    save = {"class_type": "LumiXSaveMaps", "inputs": {"albedo": ["10", 0]}}
    info = generation_info({**photo, "900": save}, "900")
    assert info["given_maps"] == ["color"] and info["held_maps_guidance"] == "reference"
    assert (info["held_maps_resize"], info["held_maps_size"], info["area_width"]) == ("stretch", "from_given", 1536)
    assert (info["base_model"], info["lumix_checkpoint"]) == ("flux1-dev.safetensors", "lumix.safetensors")
    new = load(REPO / "workflows" / "api" / "lumix_photo_decomposition_api.json")
    assert generation_info({**new, "900": save}, "900") == info
    assert generation_info({"1": {"class_type": "LoadImage", "inputs": {}}, "900": save}, "900") == {}


@pytest.mark.parametrize("name", [p.stem.replace("_api", "") for p in sorted((LEGACY_DIR / "api").glob("*_api.json"))])
def test_api_prompts_shipped_before_the_option_keys_still_validate(placeholder_models, name):
    prompt = load(LEGACY_DIR / "api" / f"{name}_api.json")
    valid, error, _outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid, f"{error} {json.dumps(node_errors)[:2000]}"
    bad = json.loads(json.dumps(prompt))
    for node in bad.values():
        if "held_maps_resize" in node["inputs"] or "depth_convention" in node["inputs"]:
            node["inputs"].update({k: "squash" for k in ("held_maps_resize", "depth_convention") if k in node["inputs"]})
            _valid, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt("test", bad, None))
            assert "unknown held_maps_resize 'squash'" in json.dumps(node_errors) or \
                "unknown depth_convention 'squash'" in json.dumps(node_errors)


def test_the_legacy_photo_workflow_runs_as_the_new_one(run_shipped):
    runs = []
    for folder in (LEGACY_DIR / "api", REPO / "workflows" / "api"):
        run_shipped("lumix_photo_decomposition", set_sampler(steps=2, area_width=64, area_height=48), folder=folder)
        runs.append([(c["t"], c["guidance"], c["conds"]) for c in MODEL_CALLS])
    assert runs[0] and len(runs[0]) == len(runs[1])
    for (ta, ga, ca), (tb, gb, cb) in zip(*runs):
        assert torch.equal(ta, tb) and torch.equal(ga, gb) and ca == cb == [0]  # guidance 1.0, no CFG, both
