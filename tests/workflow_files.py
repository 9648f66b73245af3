"""Reading the shipped workflow files for tests: UI widgets by name, links, API twins; the extension's node ids."""
import ast
import json
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parents[1] / "workflows"
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote"}
# Widgets the frontend adds after a widget, present in UI widgets_values but not in the API format: "control
# after generate" after every INT named seed/noise_seed (whatever the schema says) and "upload" after an
# image-upload combo. The host tests take the same from the real schemas (control_after_generate, image_upload).
CONTROLLED_NAMES = ("seed", "noise_seed")
UI_ONLY_AFTER = {("LoadImage", "image"): "upload"}


def frontend_adds_after(node_type, name):
    return name in CONTROLLED_NAMES or (node_type, name) in UI_ONLY_AFTER


def our_node_ids():
    """node_id="..." literals of the extension's io.Schema definitions (read from nodes/, no import)."""
    ids = set()
    for path in (WORKFLOW_DIR.parent / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "node_id" and isinstance(node.value, ast.Constant):
                ids.add(node.value.value)
    return ids


def ui_files():
    """The UI-format workflows: every .json at the top of workflows/ (the template browser lists those)."""
    return sorted(WORKFLOW_DIR.glob("*.json"))


def api_twin(ui_path):
    return WORKFLOW_DIR / "api" / (Path(ui_path).stem + "_api.json")


def load(path):
    return json.loads(Path(path).read_text())


def ui_widget_values(node, widget_names, adds_after=None):
    """{widget name: value} of a UI-format node, given its widget names in order; `adds_after(name)` says
    whether the frontend puts a widget of its own after that one (default: frontend_adds_after)."""
    adds_after = adds_after or (lambda name: frontend_adds_after(node["type"], name))
    values = list(node.get("widgets_values", []))
    named = {}
    for name in widget_names:
        if not values:
            break
        named[name] = values.pop(0)
        if adds_after(name) and values:
            values.pop(0)
    assert not values, f"{node['type']} node {node['id']} has more widget values than widgets {widget_names}"
    return named
