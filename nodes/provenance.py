"""What generated a set of maps, read from ComfyUI's API-format prompt graph (for sidecars)."""
from __future__ import annotations

SAMPLER_SETTINGS = ("seed", "steps", "cfg", "sampler_name", "scheduler", "width", "height", "shared_noise")


def _linked(value) -> str | None:
    return str(value[0]) if isinstance(value, list) and len(value) == 2 else None


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
    """The nearest LumiXSampler feeding `node_id` (breadth-first over its inputs)."""
    queue, seen = [str(node_id)], set()
    while queue:
        current = queue.pop(0)
        if current in seen or current not in graph:
            continue
        seen.add(current)
        if graph[current].get("class_type") == "LumiXSampler" and current != str(node_id):
            return current
        queue += [src for src in map(_linked, graph[current].get("inputs", {}).values()) if src]
    return None


def generation_info(graph: dict | None, node_id: str | None) -> dict:
    """Prompt, negative prompt and sampler settings behind the maps reaching `node_id`."""
    if not graph or node_id is None:
        return {}
    sampler_id = upstream_sampler(graph, node_id)
    if sampler_id is None:
        return {}
    inputs = graph[sampler_id]["inputs"]
    info = {k: inputs[k] for k in SAMPLER_SETTINGS if k in inputs and _linked(inputs[k]) is None}
    info["prompt"] = _prompt_text(graph, inputs.get("positive"))
    info["negative_prompt"] = _prompt_text(graph, inputs.get("negative"))
    info["given_maps"] = [name for name in ("albedo", "irradiance", "color", "depth", "normal") if name in inputs]
    return info
