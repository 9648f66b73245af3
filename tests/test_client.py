"""scripts/lumix_client.py against a local stub HTTP server (host-free)."""
import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lumix_client", REPO / "scripts" / "lumix_client.py")
client = importlib.util.module_from_spec(spec)
sys.modules["lumix_client"] = client
spec.loader.exec_module(client)

TEXT_WF = json.loads((REPO / "workflows" / "api" / "lumix_text_to_intrinsic_api.json").read_text())
PHOTO_WF = json.loads((REPO / "workflows" / "api" / "lumix_photo_decomposition_api.json").read_text())
PNG = b"\x89PNG\r\n\x1a\n" + b"fake"


class Stub:
    """A tiny stand-in ComfyUI HTTP API: records requests, answers as configured."""

    def __init__(self, reject=None, error=None):
        self.requests, self.prompts, self.uploads = [], [], []
        self.reject, self.error = reject, error
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                stub.requests.append(("GET", self.path))
                if self.path == "/system_stats":
                    return self._reply(200, {"system": {}})
                if self.path.startswith("/history/"):
                    pid = self.path.rsplit("/", 1)[1]
                    index = int(pid.split("-")[1])
                    graph = stub.prompts[index]
                    if stub.error:
                        return self._reply(200, {pid: {"status": {"status_str": "error", "messages": [
                            ["execution_error", {"node_type": "LumiXSampler", "exception_message": stub.error}]]},
                            "outputs": {}}})
                    outputs = {nid: {"images": [{"filename": f"{n['inputs']['filename_prefix'].split('/')[1]}_{index}_{s}.png",
                                                  "subfolder": "LumiX", "type": "output"} for s in range(graph["10"]["inputs"]["scenes"])]}
                               for nid, n in graph.items() if n["class_type"] == "SaveImage"}
                    return self._reply(200, {pid: {"status": {"status_str": "success"}, "outputs": outputs}})
                if self.path.startswith("/view?"):
                    return self._reply(200, PNG + self.path.encode(), "image/png")
                return self._reply(404, {"error": "not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests.append(("POST", self.path))
                if self.path == "/prompt":
                    if stub.reject:
                        return self._reply(400, stub.reject)
                    stub.prompts.append(json.loads(body)["prompt"])
                    return self._reply(200, {"prompt_id": f"p-{len(stub.prompts) - 1}", "number": 0, "node_errors": {}})
                if self.path == "/upload/image":
                    stub.uploads.append(body)
                    return self._reply(200, {"name": "room.png", "subfolder": "", "type": "input"})
                return self._reply(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


def test_build_prompt_sets_the_job_values_and_leaves_the_template():
    before = json.dumps(TEXT_WF)
    graph = client.build_prompt(TEXT_WF, "a red kitchen", 7, width=640, height=384, steps=20, cfg=2.5)
    assert json.dumps(TEXT_WF) == before
    positive = [n for n in graph.values() if n["_meta"]["title"] == "Positive prompt"]
    assert positive[0]["inputs"]["text"] == "a red kitchen"
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "LumiXSampler")
    assert (sampler["seed"], sampler["width"], sampler["height"], sampler["steps"], sampler["cfg"]) == (7, 640, 384, 20, 2.5)
    assert not any(n["class_type"] == "ModelSamplingFlux" for n in graph.values())  # the sampler's own schedule
    negative = [n for n in graph.values() if n["class_type"] == "CLIPTextEncode" and n["_meta"]["title"] != "Positive prompt"]
    assert "blurry" in negative[0]["inputs"]["text"]
    photo = client.build_prompt(PHOTO_WF, "a room", 1, image_name="room.png")
    assert next(n for n in photo.values() if n["class_type"] == "LoadImage")["inputs"]["image"] == "room.png"


def test_saved_maps_reads_the_prefixes():
    assert sorted(client.saved_maps(TEXT_WF).values()) == ["albedo", "color", "depth", "irradiance", "normal"]
    assert sorted(client.saved_maps(PHOTO_WF).values()) == ["albedo", "depth", "irradiance", "normal"]


def test_missing_model_file_is_one_clear_line():
    body = json.dumps({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
                       "node_errors": {"1": {"class_type": "UNETLoader", "errors": [{
                           "type": "value_not_in_list", "message": "Value not in list",
                           "details": "unet_name: 'flux1-dev.safetensors' not in []",
                           "extra_info": {"input_name": "unet_name", "received_value": "flux1-dev.safetensors"}}]}}}).encode()
    line = client.describe_rejection(400, body)
    assert "\n" not in line and "flux1-dev.safetensors" in line and "models/diffusion_models/" in line
    body = json.dumps({"error": {"type": "invalid_prompt", "message": "Cannot execute because node LumiXSampler does not exist."},
                       "node_errors": {}}).encode()
    assert "custom_nodes" in client.describe_rejection(400, body)
    assert "HTTP 500" in client.describe_rejection(500, b"<html>oops</html>")


def test_server_down_is_one_line(capsys, tmp_path):
    rc = client.main(["--prompt", "x", "--server", "127.0.0.1:9", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "cannot reach ComfyUI at http://127.0.0.1:9" in err and "python main.py" in err


def test_text_job_writes_each_scene_folder(stub, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my scenes\na red kitchen\n\na blue bedroom\n")
    rc = client.main(["--prompts", str(prompts), "--seed", "42", "--server", stub.address, "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    assert [p["6"]["inputs"]["text"] for p in stub.prompts] == ["a red kitchen", "a blue bedroom"]
    assert [p["10"]["inputs"]["seed"] for p in stub.prompts] == [42, 43]
    for job, seed in (("000", 42), ("001", 43)):
        folder = tmp_path / "out" / f"{job}_s0_seed{seed}"
        assert sorted(p.name for p in folder.iterdir()) == ["albedo.png", "color.png", "depth.png", "irradiance.png", "normal.png"]
        assert (folder / "depth.png").read_bytes().startswith(PNG) and b"depth_" in (folder / "depth.png").read_bytes()
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "000_s0_seed42"), str(tmp_path / "out" / "001_s0_seed43")]


def test_photo_job_uploads_and_decomposes(stub, tmp_path):
    photo = tmp_path / "room.png"
    photo.write_bytes(PNG)
    rc = client.main(["--photo", str(photo), "--prompt", "a living room", "--server", stub.address, "--out", str(tmp_path / "o")])
    assert rc == 0
    assert stub.uploads and b'filename="room.png"' in stub.uploads[0] and PNG in stub.uploads[0]
    graph = stub.prompts[0]
    assert next(n for n in graph.values() if n["class_type"] == "LoadImage")["inputs"]["image"] == "room.png"
    folder = tmp_path / "o" / "000_s0_seed42"
    assert sorted(p.name for p in folder.iterdir()) == ["albedo.png", "color.png", "depth.png", "irradiance.png", "normal.png"]
    assert (folder / "color.png").read_bytes() == PNG  # the given photo itself


def test_rejected_workflow_and_failed_run(tmp_path, capsys):
    reject = {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {"4": {
        "class_type": "LumiXTensorLoRALoader", "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                                           "details": "", "extra_info": {"input_name": "lumix_name", "received_value": "lumix.safetensors"}}]}}}
    s = Stub(reject=reject)
    try:
        assert client.main(["--prompt", "x", "--server", s.address, "--out", str(tmp_path)]) == 2
    finally:
        s.close()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ComfyUI/models/lumix/" in err
    s = Stub(error="CUDA out of memory")
    try:
        assert client.main(["--prompt", "x", "--server", s.address, "--out", str(tmp_path)]) == 2
    finally:
        s.close()
    err = capsys.readouterr().err.strip()
    assert "ComfyUI failed while running LumiXSampler: CUDA out of memory" in err


def test_usage_errors(capsys):
    with pytest.raises(SystemExit):
        client.main([])
    assert "give --prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        client.main(["--prompt", "x", "--width", "500"])
    assert "multiple of 16" in capsys.readouterr().err
