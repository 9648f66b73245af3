"""scripts/lumix_client.py (the batch client) against stub ComfyUI servers on 127.0.0.1 (host-free)."""
import importlib.util
import io
import json
import os
import random
import struct
import sys
from pathlib import Path

import pytest

from client_stub import Stub, expected_metrics, tiny_png

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lumix_client", REPO / "scripts" / "lumix_client.py")
client = importlib.util.module_from_spec(spec)
sys.modules["lumix_client"] = client
spec.loader.exec_module(client)

from lumix_batch import output, workflow  # noqa: E402  (put on sys.path by lumix_client)
from lumix_batch.filters import judge  # noqa: E402
from lumix_batch.progress import Progress  # noqa: E402

TEXT_WF = workflow.load_workflow(workflow.shipped_workflow(workflow.TEXT_WORKFLOW))
PHOTO_WF = workflow.load_workflow(workflow.shipped_workflow(workflow.PHOTO_WORKFLOW))
MAP_FILES = ["albedo.png", "color.png", "depth.png", "depth_16bit.png", "irradiance.png", "lumix.json", "normal.png"]
FAST = ["--retries", "0", "--backoff", "0.05", "--idle-timeout", "2"]


def renumbered(graph, seed=0):
    """The same graph under other node ids (the client must not rely on ids)."""
    ids = list(graph)
    new = [str(1000 + i) for i in random.Random(seed).sample(range(len(ids)), len(ids))]
    mapping = dict(zip(ids, new))
    out = {}
    for old_id, node in graph.items():
        node = json.loads(json.dumps(node))
        for k, v in node["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                node["inputs"][k] = [mapping[str(v[0])], v[1]]
        out[mapping[old_id]] = node
    return out


def of_class(graph, class_type):
    return [n for n in graph.values() if n["class_type"] == class_type]


def run(capsys, *args):
    rc = client.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err


def last_line(err):
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def manifest(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def stable(records):
    return [{k: v for k, v in r.items() if k not in ("server", "seconds", "attempts", "finished_at")} for r in records]


def tree(out):
    """{relative path: bytes} of every file under out except the run's own records."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("manifest.jsonl", "lumix_run.json", ".lumix_lock")}


# ---- the workflow ---------------------------------------------------------------------------------

def test_template_sets_values_by_class_and_input_never_by_id():
    graph = renumbered(TEXT_WF)
    before = json.dumps(graph)
    t = workflow.Template(graph, {"steps": 7, "cfg": 2.5, "guidance": 4.0, "sampler": "dpmpp_2m", "scheduler": "beta",
                                  "width": 640, "height": 384, "negative_prompt": "ugly", "lora_strength": 0.5}, photo=False)
    job = t.job("a red kitchen", 1234, "00003_s0_seed1234")
    assert json.dumps(graph) == before, "the loaded workflow is never changed"
    sampler = of_class(job, "LumiXSampler")[0]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"],
            sampler["width"], sampler["height"], sampler["scenes"]) == (1234, 7, 2.5, "dpmpp_2m", "beta", 640, 384, 1)
    for shift in of_class(job, "ModelSamplingFlux"):  # the resolution shift, where the workflow has one
        assert (shift["inputs"]["width"], shift["inputs"]["height"]) == (640, 384)
    texts = {n["inputs"]["text"] for n in of_class(job, "CLIPTextEncode")}
    assert texts == {"a red kitchen", "ugly"}
    assert job[sampler["positive"][0]]["inputs"]["guidance"] == 4.0
    assert job[sampler["negative"][0]]["inputs"]["guidance"] == 4.0
    assert of_class(job, "LumiXTensorLoRALoader")[0]["inputs"]["strength"] == 0.5
    # one Save Maps node fed by the sampler's five outputs replaces the five SaveImage nodes
    assert of_class(job, "SaveImage") == []
    save = of_class(job, "LumiXSaveMaps")[0]["inputs"]
    sampler_id = next(k for k, n in job.items() if n["class_type"] == "LumiXSampler")
    assert [save[m] for m in workflow.MAP_NAMES] == [[sampler_id, i] for i in range(5)]
    assert save["filename_prefix"] == "LumiX/batch/00003_s0_seed1234"


def test_photo_template_saves_the_sampler_color_not_the_photo():
    t = workflow.Template(renumbered(PHOTO_WF, 3), {}, photo=True)
    job = t.job("a room", 5, "x", image_name="up/photo.png")
    assert of_class(job, "LoadImage")[0]["inputs"]["image"] == "up/photo.png"
    sampler_id = next(k for k, n in job.items() if n["class_type"] == "LumiXSampler")
    # color comes from the sampler (the photo as held at the sampled size), so every map is pixel-aligned
    assert of_class(job, "LumiXSaveMaps")[0]["inputs"]["color"] == [sampler_id, 2]


def test_a_sampler_that_sizes_the_photo_itself_gets_the_same_budget():
    graph = json.loads(json.dumps(PHOTO_WF))
    sampler = of_class(graph, "LumiXSampler")[0]["inputs"]
    sampler.update(held_maps_size="from the given map (aspect kept, area budget)", area_width=1536, area_height=1152)
    job = workflow.Template(graph, {"width": 576, "height": 432, "area": (512, 512)}, photo=True).job("a", 1, "x", "p.png")
    s = of_class(job, "LumiXSampler")[0]["inputs"]
    assert (s["area_width"], s["area_height"], s["width"], s["height"]) == (512, 512, 576, 432)
    assert s["held_maps_size"] == "from the given map (aspect kept, area budget)"
    job = workflow.Template(graph, {"width": 256, "height": 128, "explicit_size": True}, photo=True).job("a", 1, "x", "p.png")
    s = of_class(job, "LumiXSampler")[0]["inputs"]
    assert (s["held_maps_size"], s["width"], s["height"], s["area_width"]) == ("width x height", 256, 128, 1536)


def test_every_generation_option_reaches_the_server(stubs, tmp_path, capsys):
    s = stubs()
    rc, _, err = run(capsys, "--prompt", "a room", "--negative-prompt", "dull", "--steps", 12, "--cfg", 2.0, "--guidance", 2.5,
                     "--sampler", "dpmpp_2m", "--scheduler", "beta", "--lora-strength", 0.75, "--width", 320, "--height", 256,
                     "--seed", 7, "--server", s.address, "--out", tmp_path / "o")
    assert rc == 0, err
    (graph,) = s.prompts
    sampler = of_class(graph, "LumiXSampler")[0]["inputs"]
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"], sampler["width"],
            sampler["height"], sampler["seed"]) == (12, 2.0, "dpmpp_2m", "beta", 320, 256, 7)
    assert sorted(n["inputs"]["text"] for n in of_class(graph, "CLIPTextEncode")) == ["a room", "dull"]
    assert [n["inputs"]["guidance"] for n in of_class(graph, "FluxGuidance")] == [2.5, 2.5]
    assert of_class(graph, "LumiXTensorLoRALoader")[0]["inputs"]["strength"] == 0.75
    (record,) = manifest(tmp_path / "o")
    assert record["negative_prompt"] == "dull" and record["settings"]["guidance"] == 2.5


def test_workflow_found_in_either_place(tmp_path, monkeypatch):
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "lumix_text_to_intrinsic_api.json").write_text("{}")
    (tmp_path / "lumix_photo_decomposition_api.json").write_text("{}")
    monkeypatch.setattr(workflow, "WORKFLOW_DIR", str(tmp_path))
    assert workflow.shipped_workflow("lumix_text_to_intrinsic") == str(tmp_path / "api" / "lumix_text_to_intrinsic_api.json")
    assert workflow.shipped_workflow("lumix_photo_decomposition") == str(tmp_path / "lumix_photo_decomposition_api.json")
    with pytest.raises(client.__dict__.get("ClientError", Exception)):
        workflow.shipped_workflow("nothing")


def test_template_errors_name_what_is_missing():
    no_guidance = {k: v for k, v in TEXT_WF.items() if v["class_type"] != "FluxGuidance"}
    sampler = of_class(no_guidance, "LumiXSampler")[0]
    sampler["inputs"]["positive"], sampler["inputs"]["negative"] = ["6", 0], ["7", 0]
    with pytest.raises(Exception, match="FluxGuidance"):
        workflow.Template(no_guidance, {"guidance": 2.0}, photo=False)
    workflow.Template(no_guidance, {}, photo=False)  # fine without --guidance
    no_sampler = {k: v for k, v in TEXT_WF.items() if v["class_type"] != "LumiXSampler"}
    with pytest.raises(Exception, match="no LumiXSampler"):
        workflow.Template(no_sampler, {}, photo=False)
    with pytest.raises(Exception, match="LoadImage"):
        workflow.Template(TEXT_WF, {}, photo=True)


def test_every_missing_model_is_listed_at_once():
    body = json.dumps({"error": {"message": "Prompt outputs failed validation"}, "node_errors": {
        "1": {"class_type": "UNETLoader", "errors": [{"type": "value_not_in_list", "message": "Value not in list",
              "details": "", "extra_info": {"input_name": "unet_name", "received_value": "flux1-dev.safetensors"}}]},
        "2": {"class_type": "DualCLIPLoader", "errors": [
            {"type": "value_not_in_list", "extra_info": {"input_name": "clip_name1", "received_value": "clip_l.safetensors"}},
            {"type": "value_not_in_list", "extra_info": {"input_name": "clip_name2", "received_value": "t5xxl_fp16.safetensors"}}]},
        "4": {"class_type": "LumiXTensorLoRALoader", "errors": [{"type": "value_not_in_list", "extra_info": {
            "input_name": "lumix_name", "received_value": "lumix.safetensors"}}]}}}).encode()
    line = workflow.describe_rejection(400, body)
    assert "\n" not in line
    for name, folder in (("flux1-dev.safetensors", "diffusion_models"), ("clip_l.safetensors", "text_encoders"),
                         ("t5xxl_fp16.safetensors", "text_encoders"), ("lumix.safetensors", "lumix")):
        assert f"'{name}' in ComfyUI/models/{folder}/" in line
    assert "custom_nodes" in workflow.describe_rejection(400, json.dumps(
        {"error": {"message": "Cannot execute because node LumiXSampler does not exist."}, "node_errors": {}}).encode())
    assert "HTTP 500" in workflow.describe_rejection(500, b"<html>oops</html>")


# ---- happy paths ----------------------------------------------------------------------------------

def test_batch_over_two_servers_writes_scene_folders_manifest_and_run_record(stubs, tmp_path, capsys):
    a, b = stubs(service_time=0.1), stubs(service_time=0.1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my scenes\na red kitchen\n\na blue bedroom\n", encoding="utf-8")
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "--prompts", prompts, "--scenes-per-prompt", 2, "--seed", 10, "--steps", 9,
                          "--server", a.address, "--server", b.address, "--out", out)
    assert rc == 0, err
    ids = ["00000_s0_seed10", "00000_s1_seed11", "00001_s0_seed12", "00001_s1_seed13"]
    assert sorted(stdout.split()) == sorted(str(out / i) for i in ids)
    assert len(a.prompts) >= 1 and len(b.prompts) >= 1 and len(a.prompts) + len(b.prompts) == 4
    records = manifest(out)
    assert [r["scene"] for r in records] == ids
    for r, (prompt, seed) in zip(records, [("a red kitchen", 10), ("a red kitchen", 11), ("a blue bedroom", 12),
                                            ("a blue bedroom", 13)]):
        assert (r["status"], r["prompt"], r["seed"], r["files"]) == ("done", prompt, seed, MAP_FILES)
        assert r["metrics"] == expected_metrics(seed) and r["server"] in (a.address, b.address)
        assert r["settings"]["steps"] == 9
        folder = out / r["scene"]
        assert sorted(p.name for p in folder.iterdir()) == MAP_FILES
        assert (folder / "color.png").read_bytes() == tiny_png(f"{prompt}|{seed}|color|512".encode())
        sidecar = json.loads((folder / "lumix.json").read_text())
        assert sidecar["format"] == "lumix-maps" and sidecar["generation"]["prompt"] == prompt
    for graph in a.prompts + b.prompts:
        assert of_class(graph, "LumiXSampler")[0]["inputs"]["steps"] == 9
    run_record = json.loads((out / "lumix_run.json").read_text())
    assert run_record["settings"]["steps"] == 9 and of_class(run_record["workflow"], "LumiXSampler")
    assert not (out / output.STAGING).exists()
    assert "[4/4]" in err and "scenes/min" in err


def test_servers_file_and_depth_keep_several_jobs_in_flight(stubs, tmp_path, capsys):
    a, b = stubs(service_time=0.3), stubs(service_time=0.3)
    servers = tmp_path / "servers.txt"
    servers.write_text(f"# GPUs\n{a.address}\nhttp://{b.address}/\n")
    rc, _, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 4, "--servers", servers, "--depth", 2,
                     "--out", tmp_path / "o")
    assert rc == 0, err
    assert len(a.prompts) == 2 and len(b.prompts) == 2 and a.peak == b.peak == 2, "two jobs on each server at once"
    assert f"scenes per server:\n  {a.address}: 2 done\n  {b.address}: 2 done\n" in err


def test_polling_without_a_websocket(stubs, tmp_path, capsys):
    s = stubs(ws="none")
    rc, stdout, err = run(capsys, "--prompt", "a room", "--server", s.address, "--out", tmp_path / "o")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "o" / "00000_s0_seed42").iterdir()) == MAP_FILES


def test_rerun_skips_finished_scenes_and_refuses_to_overwrite(stubs, tmp_path, capsys):
    s = stubs()
    out = tmp_path / "out"
    assert run(capsys, "--prompt", "a room", "--scenes-per-prompt", 2, "--server", s.address, "--out", out)[0] == 0
    first = tree(out)
    rc, _, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 2, "--server", s.address, "--out", out)
    assert rc == 0 and len(s.prompts) == 2 and "already finished" in err and tree(out) == first
    # other settings into the same folder: refused, in one line, nothing queued
    rc, _, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 2, "--steps", 3, "--server", s.address, "--out", out)
    assert rc == 2 and len(s.prompts) == 2 and err.count("\n") == 1 and "other settings" in err and "--overwrite" in err
    # another prompt for the same scene: refused
    rc, _, err = run(capsys, "--prompt", "a hall", "--scenes-per-prompt", 2, "--server", s.address, "--out", out)
    assert rc == 2 and "made from prompt 'a room'" in err
    # a folder that is not this run's: refused
    other = tmp_path / "other"
    (other / "00000_s0_seed42").mkdir(parents=True)
    (other / "00000_s0_seed42" / "color.png").write_bytes(b"mine")
    rc, _, err = run(capsys, "--prompt", "a room", "--server", s.address, "--out", other)
    assert rc == 2 and "already exists" in err and len(s.prompts) == 2
    assert (other / "00000_s0_seed42" / "color.png").read_bytes() == b"mine"
    # --overwrite replaces it
    rc, _, err = run(capsys, "--prompt", "a room", "--server", s.address, "--out", other, "--overwrite")
    assert rc == 0 and sorted(p.name for p in (other / "00000_s0_seed42").iterdir()) == MAP_FILES


def test_a_scene_folder_finished_just_before_a_kill_is_adopted(stubs, tmp_path, capsys):
    s = stubs()
    out = tmp_path / "out"
    assert run(capsys, "--prompt", "a room", "--scenes-per-prompt", 2, "--server", s.address, "--out", out)[0] == 0
    whole = manifest(out)
    # the client died after moving the second folder into place, before its manifest line
    (out / "manifest.jsonl").write_text(json.dumps(whole[0]) + "\n")
    rc, _, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 2, "--server", s.address, "--out", out)
    assert rc == 0 and len(s.prompts) == 2, "nothing made twice"
    assert stable(manifest(out)) == stable(whole)
    # a folder of the same prompt and seed made with other steps is not adopted
    (out / "manifest.jsonl").write_text(json.dumps(whole[0]) + "\n")
    sidecar = json.loads((out / whole[1]["scene"] / "lumix.json").read_text())
    sidecar["generation"]["steps"] = 4
    (out / whole[1]["scene"] / "lumix.json").write_text(json.dumps(sidecar))
    rc, _, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 2, "--server", s.address, "--out", out)
    assert rc == 2 and "is not a finished scene of this run" in err


def test_waiting_behind_other_jobs_is_not_idle(stubs, tmp_path, capsys, monkeypatch):
    from lumix_batch import batch
    monkeypatch.setattr(batch, "QUEUE_CHECK", 0.1)
    s = stubs(service_time=0.8)
    s._enqueue(workflow.Template(TEXT_WF, {}, False).job("other user", 1, "x"), "someone")
    rc, _, err = run(capsys, "--prompt", "a room", "--server", s.address, "--out", tmp_path / "o", "--idle-timeout", 0.5,
                     "--retries", 0)
    assert rc == 0, err


def test_two_clients_never_write_into_one_folder(stubs, tmp_path, capsys):
    s = stubs()
    out = tmp_path / "out"
    out.mkdir()
    held = output.lock_out(str(out))  # as another running client holds it
    try:
        rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", out)
        assert rc == 2 and err.count("\n") == 1 and f"(pid {os.getpid()}) is writing into" in err and s.prompts == []
    finally:
        held.close()
    assert run(capsys, "--prompt", "x", "--server", s.address, "--out", out)[0] == 0


def test_a_refused_photo_upload_is_one_line(stubs, tmp_path, capsys):
    s = stubs(upload="400")
    photo = tmp_path / "room.png"
    photo.write_bytes(tiny_png(b"p"))
    rc, _, err = run(capsys, "--photo", photo, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and "refused the photo" in err and s.prompts == []


def test_failed_scenes_are_recorded_then_redone(stubs, tmp_path, capsys):
    bad = stubs(error="CUDA out of memory")
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "--prompt", "x", "--server", bad.address, "--out", out, *FAST)
    assert rc == 1 and stdout == ""
    assert "1 of 1 scenes failed" in last_line(err) and "ComfyUI failed while running LumiXSampler: CUDA out of memory" in last_line(err)
    (record,) = manifest(out)
    assert record["status"] == "failed" and "CUDA out of memory" in record["error"]
    assert not (out / "00000_s0_seed42").exists()
    good = stubs()
    rc, _, err = run(capsys, "--prompt", "x", "--server", good.address, "--out", out)
    assert rc == 0 and [r["status"] for r in manifest(out)] == ["done"]


def test_consistency_filter_drops_and_records(stubs, tmp_path, capsys):
    s = stubs()
    out = tmp_path / "out"
    # structural alignment of the stub is (seed % 10) / 10: seeds 42..45 -> 0.2, 0.3, 0.4, 0.5
    rc, stdout, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 4, "--min-alignment", 0.35,
                          "--server", s.address, "--out", out)
    assert rc == 0, err
    records = {r["seed"]: r for r in manifest(out)}
    assert {seed: r["status"] for seed, r in records.items()} == {42: "filtered", 43: "filtered", 44: "done", 45: "done"}
    assert records[42]["filter"] == ["structural alignment (mean edge correlation with color) 0.2 < 0.35"]
    assert records[42]["metrics"] == expected_metrics(42)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00000_s2_seed44", "00000_s3_seed45"]
    rc, _, _ = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 4, "--min-alignment", 0.35,
                   "--server", s.address, "--out", out)
    assert rc == 0 and len(s.prompts) == 4, "filtered scenes count as finished"


def test_filter_judges_each_metric():
    m = expected_metrics(45)  # residual 0.03, 6 degrees, alignment 0.5
    assert judge(m, {"max_photometric": 0.05, "max_geometric": 10.0, "min_alignment": 0.4}) == []
    assert len(judge(m, {"max_photometric": 0.02, "max_geometric": 5.0, "min_alignment": 0.6})) == 3
    assert judge({}, {"min_alignment": 0.1}) == ["structural alignment (mean edge correlation with color) not computed"]
    assert judge({"geometric": {"mean_degrees": float("nan")}}, {"max_geometric": 5.0})[0].endswith("not computed")


def test_photo_mode_uploads_to_each_server_and_sizes_from_the_photo(stubs, tmp_path, capsys):
    a, b = stubs(), stubs()
    photo = tmp_path / "room.png"
    photo.write_bytes(tiny_png(b"photo", size=4)[:16] + struct.pack(">II", 1536, 1152) + tiny_png(b"photo")[24:])
    out = tmp_path / "o"
    rc, _, err = run(capsys, "--photo", photo, "--prompt", "a living room", "--size-from-photo", "--scenes-per-prompt", 2,
                     "--server", a.address, "--server", b.address, "--out", out)
    assert rc == 0, err
    assert len(a.uploads) == 1 and len(b.uploads) == 1 and b'filename="room.png"' in a.uploads[0]
    for graph in a.prompts + b.prompts:
        sampler = of_class(graph, "LumiXSampler")[0]["inputs"]
        assert (sampler["width"], sampler["height"]) == (576, 432)  # 4:3 within 512x512, multiples of 16
        assert of_class(graph, "LoadImage")[0]["inputs"]["image"] == "photo.png"
    for folder in ("00000_s0_seed42", "00000_s1_seed43"):
        assert sorted(p.name for p in (out / folder).iterdir()) == MAP_FILES  # no color.jpg beside color.png
    assert json.loads((out / "lumix_run.json").read_text())["settings"]["photo"]["size"] == [1536, 1152]


def test_image_size_reads_common_headers(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(tiny_png(b"x", size=4))
    assert output.image_size(str(png)) == (4, 4)
    jpeg = tmp_path / "a.jpg"  # SOI, an APP0 segment, then SOF0 with height 300, width 400
    jpeg.write_bytes(b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
                     + b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 300, 400, 3) + b"\x00" * 9 + b"\xff\xd9")
    assert output.image_size(str(jpeg)) == (400, 300)
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a" + struct.pack("<HH", 33, 17) + b"\x00" * 10)
    assert output.image_size(str(gif)) == (33, 17)
    bad = tmp_path / "a.txt"
    bad.write_text("hello")
    with pytest.raises(Exception, match="--width and --height"):
        output.image_size(str(bad))
    assert output.size_from_photo((1000, 1000), 512 * 512) == (512, 512)
    assert output.size_from_photo((1920, 1080), 512 * 512) == (672, 384)
    assert output.size_from_photo((1536, 1152), 1536 * 1152) == (1536, 1152)
    assert output.size_from_photo((10, 1000), 64 * 64) == (16, 640)


def test_progress_bar_on_a_terminal_and_lines_otherwise(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    tty, plain = io.StringIO(), io.StringIO()
    made = {}
    for stream, is_tty in ((tty, True), (plain, False)):
        p = made[is_tty] = Progress(total=10, already=4, stream=stream, tty=is_tty)
        p.server_state("gpu0:8188", "00004 step 3/50")
        p.start -= 60  # two scenes in the last minute
        p.scene("done", "00004", "gpu0:8188")
        p.scene("done", "00005", "gpu0:8188")
        p.tick()
        p.close()
    lines = plain.getvalue().splitlines()
    assert lines[-1].startswith("[6/10] 00005 done on gpu0:8188 | 6/10 scenes | 2.0 scenes/min | ETA 2m00s")
    assert "\r" not in plain.getvalue() and "[" + "#" not in plain.getvalue()
    assert "\r\x1b[K[##############..........] 6/10 scenes" in tty.getvalue()
    assert "gpu0:8188: 00004 step 3/50" in tty.getvalue()
    assert "\n" not in tty.getvalue()[:-1], "on a terminal a finished scene only moves the bar"
    # a result on stdout clears the bar first, then the bar comes back; the bar never wraps
    monkeypatch.setenv("COLUMNS", "40")
    stdout = io.StringIO()
    made[True].result("out/00005", out=stdout)
    assert stdout.getvalue() == "out/00005\n" and tty.getvalue().endswith("\r\x1b[K" + "\r\x1b[K[##############..........] 6/10 scenes ")


# ---- every failure in one line --------------------------------------------------------------------

def test_server_down_is_one_line(tmp_path, capsys):
    rc, _, err = run(capsys, "--prompt", "x", "--server", "127.0.0.1:9", "--out", tmp_path)
    assert rc == 2 and err.count("\n") == 1
    assert "cannot reach ComfyUI at http://127.0.0.1:9" in err and "python main.py" in err


@pytest.mark.parametrize("mode", ["500", "html", "cut"])
def test_bad_system_stats_is_one_line(stubs, tmp_path, capsys, mode):
    s = stubs(stats=mode)
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and "/system_stats" in err and s.prompts == []


@pytest.mark.parametrize("fault, words", [
    ({"history": "500"}, "/history answered HTTP 500"),
    ({"history": "html"}, "/history answered something that is not JSON"),
    ({"history": "cut"}, "/history was cut off"),
    ({"prompt": "noid"}, "sent no prompt_id"),
    ({"prompt": "500"}, "/prompt answered HTTP 500"),
    ({"ws": "close_mid_run"}, "websocket closed while the job ran"),
    ({"ws": "silent"}, "no word about the job for 2s"),
    ({"view": "partial"}, "cut off"),
    ({"view": "truncated"}, "the download of lumix.json is cut off or not JSON"),
    ({"history": "never"}, "vanished"),
    ({"history": "never", "queue_keeps": True}, "did not reach /history"),
])
def test_server_failures_end_in_one_line_and_leave_no_file(stubs, tmp_path, capsys, fault, words):
    s = stubs(**fault)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", out, *FAST)
    assert rc == 1 and stdout == ""
    assert last_line(err).startswith("lumix_client: 1 of 1 scenes failed") and words in last_line(err), err
    assert [r["status"] for r in manifest(out)] == ["failed"]
    assert sorted(p.name for p in out.rglob("*")) == [".lumix_lock", "lumix_run.json", "manifest.jsonl"], \
        "no partial file anywhere"
    if fault.get("ws") == "silent" or fault.get("queue_keeps"):
        assert s.deletes == ["p-0"] and s.interrupts == ["p-0"], "the stalled job is cancelled on its server"


def test_missing_models_refused_in_one_line(stubs, tmp_path, capsys):
    body = {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {
        "1": {"class_type": "UNETLoader", "errors": [{"type": "value_not_in_list", "extra_info": {
            "input_name": "unet_name", "received_value": "flux1-dev.safetensors"}}]},
        "3": {"class_type": "VAELoader", "errors": [{"type": "value_not_in_list", "extra_info": {
            "input_name": "vae_name", "received_value": "ae.safetensors"}}]}}}
    s = stubs(prompt="reject", reject_body=body)
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1
    assert "flux1-dev.safetensors" in err and "ae.safetensors" in err and "ComfyUI/models/vae/" in err


def test_missing_models_found_before_queueing_all_at_once(stubs, tmp_path, capsys):
    s = stubs(models=["clip_l.safetensors", "other.safetensors"])
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and s.prompts == []
    for name, folder in (("flux1-dev.safetensors", "diffusion_models"), ("t5xxl_fp16.safetensors", "text_encoders"),
                         ("ae.safetensors", "vae"), ("lumix.safetensors", "lumix")):
        assert f"'{name}' in ComfyUI/models/{folder}/" in err
    assert "clip_l" not in err
    everything = stubs(models=["flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors",
                               "ae.safetensors", "lumix.safetensors"])
    assert run(capsys, "--prompt", "x", "--server", everything.address, "--out", tmp_path / "o2")[0] == 0


def test_bad_inputs_are_one_line_before_any_job(stubs, tmp_path, capsys):
    s = stubs()
    cases = []
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("une cuisine d\xe9cor\xe9e\n".encode("latin-1"))
    cases.append((["--prompts", latin], "not UTF-8"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases.append((["--prompt", "x", "--out", a_file], "is a file"))
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    cases.append((["--prompt", "x", "--workflow", ui], "UI-format"))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    cases.append((["--prompt", "x", "--workflow", garbage], "is not JSON"))
    cases.append((["--prompt", "x", "--workflow", tmp_path / "missing.json"], "no workflow file"))
    cases.append((["--prompts", tmp_path / "missing.txt"], "no prompts file"))
    cases.append((["--photo", tmp_path / "missing.png", "--prompt", "x"], "no photo"))
    for args, words in cases:
        if "--out" not in args:
            args = args + ["--out", tmp_path / "o"]
        rc, _, err = run(capsys, *args, "--server", s.address)
        assert rc == 2 and err.count("\n") == 1 and words in err, (args, err)
    assert s.prompts == []


def test_overall_timeout_stops_and_cancels(stubs, tmp_path, capsys):
    s = stubs(hang=True)
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o", "--timeout", 0.5)
    assert rc == 2 and "ran past --timeout" in last_line(err)
    assert s.interrupts == ["p-0"]


def test_usage_errors(capsys):
    with pytest.raises(SystemExit):
        client.main([])
    assert "give --prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        client.main(["--prompt", "x", "--width", "500"])
    assert "multiple of 16" in capsys.readouterr().err


# ---- servers dying --------------------------------------------------------------------------------

def test_a_server_that_dies_mid_batch_hands_its_job_to_another(stubs, tmp_path, capsys):
    dying, healthy = stubs(die_at_job=0, service_time=0.2), stubs(service_time=0.2)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 3, "--server", dying.address,
                          "--server", healthy.address, "--out", out, "--backoff", "0.1", "--idle-timeout", "30")
    assert rc == 0, err
    died_on = of_class(dying.prompts[0], "LumiXSampler")[0]["inputs"]["seed"]
    records = {r["seed"]: r for r in manifest(out)}
    assert all(r["status"] == "done" and r["server"] == healthy.address for r in records.values())
    assert records[died_on]["attempts"] == 2
    assert f"server {dying.address}" in err
    assert sorted(p.name for p in (out / f"00000_s{died_on - 42}_seed{died_on}").iterdir()) == MAP_FILES


def test_all_servers_gone_for_the_idle_timeout_ends_in_one_line(stubs, tmp_path, capsys):
    s = stubs(die_at_job=0)
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o",
                     "--backoff", "0.05", "--idle-timeout", "1", "--retries", "5")
    assert rc == 2 and "no server has answered for" in last_line(err)


def test_a_cut_off_download_never_gets_its_final_name(tmp_path):
    png = tiny_png(b"whole", size=8)

    def cut(ref, dest, limit):
        dest.write(png[:-5])

    def whole(ref, dest, limit):
        dest.write(png)

    with pytest.raises(Exception, match="cut off or not a PNG"):
        output.fetch_file(cut, {}, str(tmp_path), "color.png", "gpu0")
    assert not (tmp_path / "color.png").exists()
    output.fetch_file(whole, {}, str(tmp_path), "color.png", "gpu0")
    assert (tmp_path / "color.png").read_bytes() == png
