"""Loading an API-format LumiX workflow and setting a job's values in it by node class and input
name (never by node id: the shipped workflows change), plus the one LumiX Save Maps node whose
scene folders (maps + lumix.json) the client downloads."""
from __future__ import annotations

import copy
import json
import os

from .errors import ClientError

WORKFLOW_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "workflows"))
TEXT_WORKFLOW = "lumix_text_to_intrinsic"
PHOTO_WORKFLOW = "lumix_photo_decomposition"
MAP_NAMES = ("albedo", "irradiance", "color", "depth", "normal")  # the sampler's outputs, in order
SAVE_NODE = "LumiXSaveMaps"
SAMPLER = "LumiXSampler"
SAVE_PREFIX = "LumiX/batch/"
DEFAULT_FOV = 60.0
EXPLICIT_SIZE = "width x height"  # the sampler's held_maps_size choice that keeps --width/--height for a photo


def shipped_workflow(name: str) -> str:
    """The API twin of a shipped workflow: workflows/api/<name>_api.json, or the older place beside it."""
    for path in (os.path.join(WORKFLOW_DIR, "api", f"{name}_api.json"), os.path.join(WORKFLOW_DIR, f"{name}_api.json")):
        if os.path.isfile(path):
            return path
    raise ClientError(f"the shipped workflow {name}_api.json is missing from {WORKFLOW_DIR} (and its api/ folder); "
                      "restore the checkout or pass --workflow")


def load_workflow(path: str) -> dict:
    """An API-format graph from a file, or a ClientError saying what is wrong with it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ClientError(f"no workflow file at {path}") from None
    except OSError as exc:
        raise ClientError(f"cannot read the workflow {path}: {exc.strerror}") from None
    try:
        graph = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ClientError(f"the workflow {path} is not JSON ({str(exc).splitlines()[0]}); give an API-format "
                          "workflow (ComfyUI: Workflow > Export (API))") from None
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise ClientError(f"{path} is a UI-format workflow (the canvas file); export it with Workflow > Export (API) "
                          "or use one of workflows/api/*_api.json")
    if (not isinstance(graph, dict) or not graph
            or not all(isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs"), dict)
                       for n in graph.values())):
        raise ClientError(f"{path} is not an API-format workflow (an object of nodes with class_type and inputs)")
    return graph


def _link(value) -> str | None:
    return str(value[0]) if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) else None


def nodes_of(graph: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node["class_type"] == class_type]


def the_node(graph: dict, class_type: str, why: str) -> str:
    found = nodes_of(graph, class_type)
    if len(found) != 1:
        raise ClientError(f"the workflow has {len(found) or 'no'} {class_type} node{'s' if found else ''}; "
                          f"the client needs exactly one ({why})")
    return found[0]


def _chain(graph: dict, link) -> list[str]:
    """The nodes a CONDITIONING input comes through (FluxGuidance, ...), ending at the text node."""
    out, node_id = [], _link(link)
    while node_id is not None and node_id in graph and node_id not in out:
        out.append(node_id)
        node_id = _link(graph[node_id]["inputs"].get("conditioning"))
    return out


def _text_node(graph: dict, chain: list[str], which: str) -> str:
    for node_id in chain:
        inputs = graph[node_id]["inputs"]
        if isinstance(inputs.get("text"), str) or isinstance(inputs.get("t5xxl"), str):
            return node_id
    raise ClientError(f"cannot find the text encoder feeding {SAMPLER}.{which} (a CLIPTextEncode, directly or "
                      "through FluxGuidance); use one of the shipped workflows")


def _set_text(node: dict, text: str) -> None:
    for name in ("text", "clip_l", "t5xxl"):  # CLIPTextEncode, or CLIPTextEncodeFlux's two texts
        if isinstance(node["inputs"].get(name), str):
            node["inputs"][name] = text


def _set(node: dict, name: str, value, where: str) -> None:
    if name not in node["inputs"] or _link(node["inputs"][name]) is not None:
        raise ClientError(f"the workflow's {where} has no {name!r} value to set; use one of the shipped workflows")
    node["inputs"][name] = value


class Template:
    """A loaded workflow with the run's settings applied; `job()` makes one scene's graph."""

    def __init__(self, graph: dict, settings: dict, photo: bool):
        self.graph = copy.deepcopy(graph)
        g = self.graph
        self.sampler = the_node(g, SAMPLER, "its seed, size and settings are set per scene")
        sampler = g[self.sampler]
        self.positive = _text_node(g, _chain(g, sampler["inputs"].get("positive")), "positive")
        negative_chain = _chain(g, sampler["inputs"].get("negative"))
        for key, name in (("steps", "steps"), ("cfg", "cfg"), ("sampler", "sampler_name"), ("scheduler", "scheduler"),
                          ("width", "width"), ("height", "height")):
            if settings.get(key) is not None:
                _set(sampler, name, settings[key], f"{SAMPLER}")
        # A sampler that sizes a given photo itself (held_maps_size, area budget) is told the same thing
        if settings.get("area") is not None:
            for name, value in zip(("area_width", "area_height"), settings["area"]):
                if name in sampler["inputs"]:
                    sampler["inputs"][name] = value
        elif settings.get("explicit_size") and "held_maps_size" in sampler["inputs"]:
            sampler["inputs"]["held_maps_size"] = EXPLICIT_SIZE
        for node_id in nodes_of(g, "ModelSamplingFlux"):  # the resolution shift follows the size
            for name in ("width", "height"):
                if name in g[node_id]["inputs"] and _link(g[node_id]["inputs"][name]) is None:
                    g[node_id]["inputs"][name] = sampler["inputs"][name]
        if settings.get("negative_prompt") is not None:
            negative = _text_node(g, negative_chain, "negative")
            if negative == self.positive:
                raise ClientError("this workflow's negative conditioning comes from the positive prompt's node; "
                                  "--negative-prompt needs its own text node")
            _set_text(g[negative], settings["negative_prompt"])
        if settings.get("guidance") is not None:
            holders = [n for n in [self.sampler, *_chain(g, sampler["inputs"].get("positive")), *negative_chain]
                       if "guidance" in g[n]["inputs"] and _link(g[n]["inputs"]["guidance"]) is None]
            if not holders:
                raise ClientError("--guidance: the workflow has no FluxGuidance node (or guidance input) on the "
                                  "sampler's conditioning")
            for node_id in holders:
                g[node_id]["inputs"]["guidance"] = settings["guidance"]
        if settings.get("lora_strength") is not None:
            loader = the_node(g, "LumiXTensorLoRALoader", "--lora-strength sets its strength")
            _set(g[loader], "strength", settings["lora_strength"], "LumiXTensorLoRALoader")
        if "scenes" in sampler["inputs"]:
            sampler["inputs"]["scenes"] = 1  # one scene per job: scene s of a prompt is its own seed
        self.image = the_node(g, "LoadImage", "--photo is uploaded into it") if photo else None
        self.save = self._ensure_save_node()

    def _ensure_save_node(self) -> str:
        """The LumiX Save Maps node (added, fed by the sampler's five outputs, when the workflow has none;
        SaveImage nodes fed straight by the sampler are dropped so nothing is saved twice on the server)."""
        g = self.graph
        found = nodes_of(g, SAVE_NODE)
        if len(found) > 1:
            raise ClientError(f"the workflow has {len(found)} {SAVE_NODE} nodes; the client downloads one")
        if found:
            return found[0]
        for node_id in nodes_of(g, "SaveImage"):
            if _link(g[node_id]["inputs"].get("images")) == self.sampler:
                del g[node_id]
        node_id = str(max((int(k) for k in g if k.isdigit()), default=0) + 1)
        g[node_id] = {"class_type": SAVE_NODE, "_meta": {"title": "LumiX Save Maps (lumix_client)"},
                      "inputs": {**{name: [self.sampler, i] for i, name in enumerate(MAP_NAMES)},
                                 "filename_prefix": SAVE_PREFIX + "scene", "fov_degrees": DEFAULT_FOV}}
        return node_id

    def job(self, prompt: str, seed: int, scene_id: str, image_name: str | None = None) -> dict:
        g = copy.deepcopy(self.graph)
        _set_text(g[self.positive], prompt)
        g[self.sampler]["inputs"]["seed"] = seed
        g[self.save]["inputs"]["filename_prefix"] = SAVE_PREFIX + scene_id
        if self.image is not None:
            g[self.image]["inputs"]["image"] = image_name
        return g

    def recorded_settings(self) -> dict:
        """What the run folder records: every sampler and text value that is not per scene."""
        g = self.graph
        sampler = {k: v for k, v in g[self.sampler]["inputs"].items() if _link(v) is None and k != "seed"}
        return {"sampler": sampler}


MODEL_FOLDERS = {"unet_name": "diffusion_models", "clip_name": "text_encoders", "clip_name1": "text_encoders",
                 "clip_name2": "text_encoders", "clip_name3": "text_encoders", "vae_name": "vae",
                 "lumix_name": "lumix", "lora_name": "loras", "ckpt_name": "checkpoints"}


def missing_models_line(missing: list[str]) -> str:
    missing = sorted(set(missing))
    return (f"missing model file{'s' if len(missing) > 1 else ''}: {'; '.join(missing)}; put "
            f"{'them' if len(missing) > 1 else 'it'} there (see the README's model table) and try again")


def model_inputs(graph: dict):
    """(class_type, input name, file name) of every model file the graph's loaders ask for."""
    for node in graph.values():
        for name, value in node["inputs"].items():
            if name in MODEL_FOLDERS and isinstance(value, str):
                yield node["class_type"], name, value


def combo_options(spec) -> list | None:
    """The choices of an /object_info input spec: [[...], {...}] (V1) or ["COMBO", {"options": [...]}] (V3)."""
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return spec[0]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list):
            return spec[1]["options"]
    return None


def describe_rejection(status: int, body: bytes) -> str:
    """One line for a workflow ComfyUI refused: every missing model file at once, else the first error."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError
    except ValueError:
        return f"ComfyUI rejected the workflow (HTTP {status}): {body[:200].decode(errors='replace')!r}"
    missing, other = [], []
    node_errors = data.get("node_errors") if isinstance(data.get("node_errors"), dict) else {}
    for node_id, node in node_errors.items():
        errors = node.get("errors") if isinstance(node, dict) else None
        for err in errors if isinstance(errors, list) else []:
            if not isinstance(err, dict):
                continue
            info = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
            name = info.get("input_name") if isinstance(info.get("input_name"), str) else None
            if err.get("type") == "value_not_in_list" and name in MODEL_FOLDERS:
                missing.append(f"{info.get('received_value')!r} in ComfyUI/models/{MODEL_FOLDERS[name]}/ "
                               f"({node.get('class_type')}.{name})")
            elif err.get("type") == "value_not_in_list" and name == "image":
                other.append(f"ComfyUI has no input image {info.get('received_value')!r}: the upload failed or was removed")
            else:
                other.append(f"{node.get('class_type')} (node {node_id}): {err.get('message')}: {err.get('details')}")
    if missing:
        return missing_models_line(missing)
    if other:
        return "ComfyUI rejected the workflow: " + other[0]
    error = data.get("error") or {}
    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    hint = " Is the LumiX extension installed in ComfyUI/custom_nodes/?" if "does not exist" in message else ""
    return f"ComfyUI rejected the workflow: {message}{hint}"
