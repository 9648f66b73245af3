"""What generated a set of maps, read from ComfyUI's API-format prompt graph (for sidecars).

The same record on both routes: the all-in-one LumiX Intrinsic Sampler, and the composable nodes with
a core sampler (SamplerCustomAdvanced with its noise, guider, sampler and sigmas nodes, or KSampler):
prompt, negative prompt, seed, steps, cfg, sampler, size, scenes, shared noise, schedule, held maps and
their settings, the base model and the LumiX checkpoint. Only values set on the nodes themselves are
recorded (a value linked from another node is left out)."""
from __future__ import annotations

from ..lumix_core.maps import MAP_NAMES
from ..lumix_core.options import LEGACY_VALUES, SCHEDULE_MODEL, SCHEDULE_REFERENCE

SAMPLING_NODES = ("LumiXSampler", "SamplerCustomAdvanced", "SamplerCustom", "KSampler", "KSamplerAdvanced")
# node type -> {its input: the record's key}; nodes of the model chain
MODEL_LOADERS = {"UNETLoader": ("unet_name", "base_model"), "CheckpointLoaderSimple": ("ckpt_name", "base_model"),
                 "UnetLoaderGGUF": ("unet_name", "base_model")}


def _linked(value) -> str | None:
    return str(value[0]) if isinstance(value, list) and len(value) == 2 else None


def _literal(inputs: dict, name: str):
    value = inputs.get(name)
    return None if value is None or _linked(value) is not None else value


def _key(option: str, value):
    """An option's key (values saved before the keys are translated), so both routes record the same."""
    return LEGACY_VALUES.get(option, {}).get(value, value)


def _node(graph: dict, link) -> tuple[str | None, dict]:
    node_id = _linked(link)
    if node_id is None or node_id not in graph:
        return None, {}
    return graph[node_id].get("class_type"), graph[node_id].get("inputs", {})


def _prompt_text(graph: dict, link) -> str | None:
    """Follow a CONDITIONING link back through FluxGuidance-like nodes to the text that made it."""
    seen = set()
    node_id = _linked(link)
    while node_id is not None and node_id in graph and node_id not in seen:
        seen.add(node_id)
        inputs = graph[node_id].get("inputs", {})
        if isinstance(inputs.get("text"), str):
            return inputs["text"]
        node_id = _linked(inputs.get("conditioning"))
    return None


def upstream_sampler(graph: dict, node_id: str) -> str | None:
    """The nearest sampling node (SAMPLING_NODES) feeding `node_id` (breadth-first over its inputs)."""
    queue, seen = [str(node_id)], set()
    while queue:
        current = queue.pop(0)
        if current in seen or current not in graph:
            continue
        seen.add(current)
        if graph[current].get("class_type") in SAMPLING_NODES and current != str(node_id):
            return current
        queue += [src for src in map(_linked, graph[current].get("inputs", {}).values()) if src]
    return None


def _model_chain(graph: dict, link) -> dict:
    """The base model file, the LumiX checkpoint and strength (and a trainer's output) behind a MODEL link."""
    info, seen = {}, set()
    while (node_id := _linked(link)) is not None and node_id in graph and node_id not in seen:
        seen.add(node_id)
        kind, inputs = graph[node_id].get("class_type"), graph[node_id].get("inputs", {})
        if kind in MODEL_LOADERS:
            name, key = MODEL_LOADERS[kind]
            if _literal(inputs, name) is not None:
                info.setdefault(key, inputs[name])
            break
        if kind == "LumiXTensorLoRALoader":
            for name, key in (("lumix_name", "lumix_checkpoint"), ("strength", "lumix_strength")):
                if _literal(inputs, name) is not None:
                    info.setdefault(key, inputs[name])
        if kind == "LumiXTrainer" and _literal(inputs, "output_name") is not None:
            info.setdefault("trained_adapter", inputs["output_name"])
        link = inputs.get("model")
    return info


def _held_maps(inputs: dict, given: list[str]) -> dict:
    if not given:
        return {"given_maps": []}
    info = {"given_maps": given}
    for option, default in (("held_maps_guidance", "reference"), ("held_maps_resize", "stretch")):
        value = inputs.get(option, default)
        if _linked(value) is None:
            info[option] = _key(option, value)
    return info


def _from_lumix_sampler(graph: dict, inputs: dict) -> dict:
    info = {k: inputs[k] for k in ("seed", "steps", "cfg", "sampler_name", "width", "height", "scenes",
                                   "shared_noise") if _literal(inputs, k) is not None}
    schedule = _key("schedule", inputs.get("schedule", SCHEDULE_REFERENCE))
    info["schedule"] = schedule
    if schedule == SCHEDULE_MODEL and _literal(inputs, "scheduler") is not None:
        info["scheduler"] = inputs["scheduler"]
    info["prompt"] = _prompt_text(graph, inputs.get("positive"))
    info["negative_prompt"] = _prompt_text(graph, inputs.get("negative"))
    given = [name for name in MAP_NAMES if name in inputs]
    info.update(_held_maps(inputs, given))
    if given:
        info["held_maps_size"] = _key("held_maps_size", inputs.get("held_maps_size", "from_given"))
        if info["held_maps_size"] == "from_given":
            info.update({k: inputs[k] for k in ("area_width", "area_height") if _literal(inputs, k) is not None})
    info.update(_model_chain(graph, inputs.get("model")))
    return info


def _latent_chain(graph: dict, link, info: dict) -> None:
    """Size, scenes and held maps from LumiX Empty Latent / LumiX Hold Maps behind a LATENT link."""
    seen = set()
    while (node_id := _linked(link)) is not None and node_id in graph and node_id not in seen:
        seen.add(node_id)
        kind, inputs = graph[node_id].get("class_type"), graph[node_id].get("inputs", {})
        if kind == "LumiXHoldMaps":
            info.update(_held_maps(inputs, [name for name in MAP_NAMES if name in inputs]))
            info.setdefault("_model_link", inputs.get("model"))
        elif kind in ("LumiXEmptyLatent", "EmptyLatentImage", "EmptySD3LatentImage"):
            for k in ("width", "height"):
                if _literal(inputs, k) is not None:
                    info[k] = inputs[k]
            if _literal(inputs, "scenes") is not None:
                info["scenes"] = inputs["scenes"]
            if "photo" in inputs and info.get("given_maps"):
                info["held_maps_size"] = "from_given"
                info.update({k: inputs[k] for k in ("area_width", "area_height") if _literal(inputs, k) is not None})
            elif info.get("given_maps"):
                info["held_maps_size"] = "explicit"
            return
        link = inputs.get("latent") if "latent" in inputs else inputs.get("samples")


def _from_core_sampler(graph: dict, kind: str, inputs: dict) -> dict:
    info: dict = {}
    if kind == "SamplerCustomAdvanced":
        noise_kind, noise = _node(graph, inputs.get("noise"))
        if noise_kind == "LumiXNoise":
            info.update({k: noise[k] for k in ("seed", "shared_noise") if _literal(noise, k) is not None})
        elif _literal(noise, "noise_seed") is not None:
            info["seed"] = noise["noise_seed"]
        guider_kind, guider = _node(graph, inputs.get("guider"))
        positive = guider.get("positive", guider.get("conditioning"))
        negative = guider.get("negative")
        cfg = _literal(guider, "cfg") if guider_kind != "BasicGuider" else 1.0
        model_link = guider.get("model")
        sampler_kind, sampler = _node(graph, inputs.get("sampler"))
        sampler_name = _literal(sampler, "sampler_name")
        sigmas_kind, sigmas = _node(graph, inputs.get("sigmas"))
        steps = _literal(sigmas, "steps")
        schedule = SCHEDULE_REFERENCE if sigmas_kind == "LumiXReferenceSigmas" else SCHEDULE_MODEL
        scheduler = _literal(sigmas, "scheduler")
    else:  # KSampler, KSamplerAdvanced, SamplerCustom
        info.update({"seed": v for v in (_literal(inputs, "seed"), _literal(inputs, "noise_seed")) if v is not None})
        positive, negative, cfg, model_link = inputs.get("positive"), inputs.get("negative"), _literal(inputs, "cfg"), \
            inputs.get("model")
        sampler_name, steps, scheduler = _literal(inputs, "sampler_name"), _literal(inputs, "steps"), \
            _literal(inputs, "scheduler")
        schedule = SCHEDULE_MODEL
    info.update({k: v for k, v in (("steps", steps), ("cfg", cfg), ("sampler_name", sampler_name)) if v is not None})
    info["schedule"] = schedule
    if schedule == SCHEDULE_MODEL and scheduler is not None:
        info["scheduler"] = scheduler
    info["prompt"] = _prompt_text(graph, positive)
    info["negative_prompt"] = _prompt_text(graph, negative)
    info["given_maps"] = []
    _latent_chain(graph, inputs.get("latent_image"), info)
    info.update(_model_chain(graph, model_link if model_link is not None else info.get("_model_link")))
    info.pop("_model_link", None)
    return info


# The order of the record's keys (both routes write them in this order).
ORDER = ("prompt", "negative_prompt", "seed", "steps", "cfg", "sampler_name", "scheduler", "schedule", "width",
         "height", "scenes", "shared_noise", "given_maps", "held_maps_guidance", "held_maps_resize", "held_maps_size",
         "area_width", "area_height", "base_model", "lumix_checkpoint", "lumix_strength", "trained_adapter")


def generation_info(graph: dict | None, node_id: str | None) -> dict:
    """Prompt, negative prompt, sampling settings, held maps and models behind the maps reaching `node_id`."""
    if not graph or node_id is None:
        return {}
    sampler_id = upstream_sampler(graph, node_id)
    if sampler_id is None:
        return {}
    kind, inputs = graph[sampler_id]["class_type"], graph[sampler_id].get("inputs", {})
    info = _from_lumix_sampler(graph, inputs) if kind == "LumiXSampler" else _from_core_sampler(graph, kind, inputs)
    return {k: info[k] for k in ORDER if k in info}
