"""The batch client against two real ComfyUI servers running this extension with tiny random models
(the fixture nodes of server_fixture/ stand in for FLUX, CLIP and the VAE): a run over both servers
completes and resumes, photo mode is pixel-aligned, missing models are listed at once."""
import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from comfy_host import REPO  # skips this module without ComfyUI
from comfy_server import TINY_CHECKPOINT, start_server, stop_server, wait_ready, with_fixture_models  # noqa: E402

CLIENT = REPO / "scripts" / "lumix_client.py"
sys.path.insert(0, str(REPO / "scripts"))
from lumix_batch.workflow import PHOTO_WORKFLOW, TEXT_WORKFLOW, shipped_workflow  # noqa: E402

MAPS = ["albedo", "irradiance", "color", "depth", "normal"]
TINY = ["--width", "64", "--height", "64", "--steps", "2"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    made = [start_server(tmp_path_factory.mktemp(f"comfy{i}")) for i in range(2)]
    waits = [threading.Thread(target=wait_ready, args=(s,)) for s in made]
    for t in waits:
        t.start()
    for t in waits:
        t.join()
    yield made
    for s in made:
        stop_server(s)


def tiny_workflow(name, tmp_path):
    """A shipped API workflow with the fixture nodes in place of the model files."""
    path = tmp_path / f"{name}_tiny.json"
    path.write_text(json.dumps(with_fixture_models(json.loads(open(shipped_workflow(name)).read()))))
    return path


def run_client(*args):
    return subprocess.run([sys.executable, str(CLIENT), *map(str, args)], capture_output=True, text=True, timeout=300)


def logs(servers):
    return "".join((s["base"] / "server.log").read_text()[-1500:] for s in servers)


def test_object_info_lists_the_lumix_nodes(servers):
    info = json.loads(urllib.request.urlopen(f"http://{servers[0]['address']}/object_info").read())
    for key, name in (("LumiXTensorLoRALoader", "LumiX Tensor LoRA Loader"),
                      ("LumiXQueryBroadcast", "LumiX Query-Broadcast Attention"),
                      ("LumiXSampler", "LumiX Intrinsic Sampler"), ("LumiXConsistency", "LumiX Map Consistency"),
                      ("LumiXRelight", "LumiX Relight"), ("LumiXSaveMaps", "LumiX Save Maps"),
                      ("LumiXDepthColormap", "LumiX Depth Colormap"),
                      ("LumiXNormalFlip", "LumiX Normal OpenGL <-> DirectX")):
        assert info[key]["display_name"] == name
    assert TINY_CHECKPOINT in info["LumiXTensorLoRALoader"]["input"]["required"]["lumix_name"][1]["options"]


def test_two_servers_complete_and_resume(servers, tmp_path):
    from PIL import Image
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a tiny test room\na tiny test hall\n", encoding="utf-8")
    wf = tiny_workflow(TEXT_WORKFLOW, tmp_path)
    out = tmp_path / "out"
    args = ["--prompts", prompts, "--scenes-per-prompt", 2, "--seed", 3, *TINY, "--workflow", wf, "--out", out,
            "--server", servers[0]["address"], "--server", servers[1]["address"], "--idle-timeout", 120]
    result = run_client(*args)
    assert result.returncode == 0, result.stderr + logs(servers)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["scene"], r["status"]) for r in records] == [
        ("00000_s0_seed3", "done"), ("00000_s1_seed4", "done"), ("00001_s0_seed5", "done"), ("00001_s1_seed6", "done")]
    assert {r["server"] for r in records} == {s["address"] for s in servers}, "both servers took scenes"
    for r in records:
        folder = out / r["scene"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(r["files"])
        for name in MAPS:
            with Image.open(folder / f"{name}.png") as im:
                assert im.size == (64, 64)
        sidecar = json.loads((folder / "lumix.json").read_text())
        assert sidecar["format"] == "lumix-maps" and sidecar["generation"]["prompt"] == r["prompt"]
        assert sidecar["generation"]["seed"] == r["seed"] and sidecar["generation"]["steps"] == 2
        assert set(r["metrics"]) == {"photometric", "geometric", "structural"} == set(sidecar["metrics"])
    assert "step 2/2" in result.stderr  # progress came over the websocket
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lumix_lock"}
    again = run_client(*args)
    assert again.returncode == 0, again.stderr
    assert "all 4 scenes" in again.stderr and "already finished" in again.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lumix_lock"} == before


def test_photo_scene_is_pixel_aligned_at_the_photos_aspect(servers, tmp_path):
    from PIL import Image
    photo = tmp_path / "room.png"
    Image.new("RGB", (128, 64), (30, 120, 200)).save(photo)
    wf = tiny_workflow(PHOTO_WORKFLOW, tmp_path)
    result = run_client("--photo", photo, "--prompt", "a blue room", "--size-from-photo", "--width", 64, "--height", 64,
                        "--steps", 2, "--server", servers[0]["address"], "--workflow", wf, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr + logs(servers)
    folder = tmp_path / "out" / "00000_s0_seed42"
    for name in MAPS:  # color too: the photo as the sampler held it, not the original file
        with Image.open(folder / f"{name}.png") as im:
            assert im.size == (80, 32), name
    assert not list(folder.glob("color.jp*"))
    color = Image.open(folder / "color.png").convert("RGB").getpixel((40, 16))
    assert max(abs(a - b) for a, b in zip(color, (30, 120, 200))) <= 2


def test_missing_models_are_listed_at_once(servers, tmp_path):
    path = shipped_workflow(TEXT_WORKFLOW)  # real model names: none of them is on the test servers
    result = run_client("--prompt", "x", "--server", servers[1]["address"], "--workflow", path, "--out", tmp_path / "o")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    for name in ("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors",
                 "lumix.safetensors"):
        assert name in line


def test_tools_workflow_keeps_its_own_save_node(servers, tmp_path):
    wf = tiny_workflow("lumix_text_to_intrinsic_tools", tmp_path)
    result = run_client("--prompt", "a tiny room", "--seed", 9, *TINY, "--server", servers[0]["address"],
                        "--workflow", wf, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr + logs(servers)
    sidecar = json.loads((tmp_path / "out" / "00000_s0_seed9" / "lumix.json").read_text())
    assert sidecar["generation"]["prompt"] == "a tiny room" and sidecar["generation"]["seed"] == 9
    assert set(sidecar["metrics"]) == {"photometric", "geometric", "structural"}
