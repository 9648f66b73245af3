"""Registry metadata, requirements and the README's two commands."""
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_has_what_comfy_node_publish_reads():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["name"] and re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["description"]
    assert project["license"] == {"file": "LICENSE"} and (REPO / "LICENSE").read_text().startswith(" " * 20 + "GNU GENERAL PUBLIC LICENSE")
    assert {"Repository", "Issues"} <= set(project["urls"])
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert all(m["location"].startswith("/") and m["model_url"].startswith("https://") for m in comfy["Models"])


def test_requirements_add_only_pypng_pygltflib_and_never_torch():
    lines = [l.split("#")[0].strip() for l in (REPO / "requirements.txt").read_text().splitlines()]
    assert [l for l in lines if l] == ["pypng", "pygltflib"], "ComfyUI ships everything else this extension needs"
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["dependencies"] == ["pypng", "pygltflib"] and data["project"]["optional-dependencies"]["exr"] == ["openexr"]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert block[0].startswith("python scripts/lumix_client.py ") and (REPO / "scripts" / "lumix_client.py").is_file()
    test_command = block[1].split("#")[0].strip()
    assert test_command == "python -m pytest"
    assert readme.index("```bash") < readme.index("LumiX (CVPR 2026")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    stripped = [line.strip() for line in ci]
    assert stripped.count(test_command) == 2, "CI runs the test command host-free, then in host_run"
    host_run = stripped.index(test_command, stripped.index(test_command) + 1)
    assert 'export COMFYUI_PATH="$copy" LUMIX_REQUIRE_HOST=1   # every host module must run' in stripped[:host_run]
    # host_run is called once per tested ComfyUI tree, each with its own environment
    calls = [line.split() for line in stripped if line.startswith("host_run ")]
    assert [(venv, tree.rsplit("/", 1)[-1].rstrip('"')) for _, venv, tree in calls] == [
        (".venv-host", "comfyui-0.3.64"), (".venv-host8", "comfyui-0.8.0")]


def _host_version_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("lumix_host_version", REPO / "nodes" / "host_version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports nothing of ComfyUI at module level
    return module


def test_tested_comfyui_versions_are_stated_in_pyproject_readme_and_ci():
    tested = _host_version_module().TESTED_COMFYUI
    assert tested == ("0.3.64", "0.8.0")
    comfy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["requires-comfyui"] == f">={tested[0]}"  # a floor: newer versions install and log a line
    readme = (REPO / "README.md").read_text()
    assert re.search(r"[Tt]ested on ComfyUI " + re.escape(tested[0]) + r" and " + re.escape(tested[1]), readme)
    ci = (REPO / ".ci" / "run").read_text()
    assert all(f"comfyui-{v}" in ci for v in tested)


def test_untested_comfyui_versions_get_one_clear_line_and_tested_ones_none():
    hv = _host_version_module()
    assert hv.untested_version_message("0.3.64") is None and hv.untested_version_message("0.8.0") is None
    newer = hv.untested_version_message("0.9.2")
    assert newer.startswith("LumiX: ComfyUI 0.9.2 is newer than") and "0.3.64 and 0.8.0" in newer
    assert "\n" not in newer and "report" in newer
    assert "between" in hv.untested_version_message("0.4.0")
    older = hv.untested_version_message("0.3.10")
    assert "older than" in older and "update ComfyUI to 0.3.64" in older
    assert "could not read" in hv.untested_version_message("")
    assert hv.parse_version("v1.10.3-rc1") == (1, 10, 3) and hv.parse_version("abc") is None


def test_every_model_file_the_workflows_use_is_in_the_readme_table():
    import json
    readme = (REPO / "README.md").read_text()
    for path in (REPO / "workflows" / "api").glob("*_api.json"):
        for node in json.loads(path.read_text()).values():
            for key in ("unet_name", "clip_name1", "clip_name2", "vae_name", "lumix_name"):
                if key in node["inputs"]:
                    assert f"`{node['inputs'][key]}`" in readme, f"{node['inputs'][key]} missing from the README"
