"""What the node menu and a hover show a user: every LumiX node sits in a LumiX sub-menu under a display
name, and every input and output carries a tooltip (checked on the V1 info ComfyUI serves at /object_info)."""
from comfy_host import load_extension  # first: skips this module where there is no ComfyUI

import nodes as comfy_nodes  # noqa: E402

NODES = load_extension()
SUBMENUS = {"LumiX/model", "LumiX/sampling", "LumiX/tools", "LumiX/training", "LumiX/3D"}
LUMIX = sorted(key for key, cls in NODES.items()
               if key.startswith("LumiX") and not key.startswith("LumiXTest"))


def _info(key):
    cls = NODES[key]
    return cls.GET_NODE_INFO_V1() if hasattr(cls, "GET_NODE_INFO_V1") else None


def test_every_node_in_a_submenu_with_a_display_name():
    assert len(LUMIX) >= 15, LUMIX
    for key in LUMIX:
        info = _info(key)
        assert info["category"] in SUBMENUS, (key, info["category"])
        name = comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.get(key) or info["display_name"]
        assert name and name != key and name.startswith("LumiX "), (key, name)
        assert info["description"], key


def test_every_input_and_output_has_a_tooltip():
    missing = []
    for key in LUMIX:
        info = _info(key)
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if len(spec) < 2 or not (spec[1] or {}).get("tooltip"):
                    missing.append(f"{key}.{name}")
        tips = info.get("output_tooltips") or []
        for i, name in enumerate(info["output_name"]):
            if i >= len(tips) or not tips[i]:
                missing.append(f"{key} -> {name}")
    assert not missing, missing
