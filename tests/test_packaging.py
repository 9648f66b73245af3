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
    assert ci.count(test_command) == 2, "CI runs the test command host-free, then with the host"
    host_run = ci.index(test_command, ci.index(test_command) + 1)
    assert 'export COMFYUI_PATH="$SCRATCH/ComfyUI" LUMIX_REQUIRE_HOST=1' in ci[:host_run]


def test_every_model_file_the_workflows_use_is_in_the_readme_table():
    import json
    readme = (REPO / "README.md").read_text()
    for path in (REPO / "workflows" / "api").glob("*_api.json"):
        for node in json.loads(path.read_text()).values():
            for key in ("unet_name", "clip_name1", "clip_name2", "vae_name", "lumix_name"):
                if key in node["inputs"]:
                    assert f"`{node['inputs'][key]}`" in readme, f"{node['inputs'][key]} missing from the README"
