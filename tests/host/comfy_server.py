"""A real ComfyUI server on loopback for host tests: its own base directory with this extension and the
tiny fixture nodes of server_fixture/ (standing in for FLUX, CLIP and the VAE) as custom nodes, and a
tiny LumiX checkpoint in models/lumix."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import COMFYUI, DOUBLE, HIDDEN, REPO, SINGLE  # skips the importing module without ComfyUI
from tiny_flux import official_state_dict

FIXTURE_NODES = REPO / "tests" / "host" / "server_fixture" / "lumix_test_fixtures"
TINY_CHECKPOINT = "tiny_lumix.safetensors"
FIXTURE_LOADERS = {"UNETLoader": "LumiXTestTinyFlux", "DualCLIPLoader": "LumiXTestTinyCLIP",
                   "VAELoader": "LumiXTestTinyVAE"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base):
    """Starts ComfyUI on a free port with `base` as its base directory; returns the server's record
    (call wait_ready before using it, stop_server after)."""
    (base / "custom_nodes").mkdir(parents=True)
    os.symlink(REPO, base / "custom_nodes" / "comfyui-lumix")
    os.symlink(FIXTURE_NODES, base / "custom_nodes" / "lumix_test_fixtures")
    (base / "models" / "lumix").mkdir(parents=True)
    save_file(official_state_dict(hidden=HIDDEN, R=4, double=DOUBLE, single=SINGLE, scale=0.5),
              str(base / "models" / "lumix" / TINY_CHECKPOINT))
    port = free_port()
    cmd = [sys.executable, str(COMFYUI / "main.py"), "--base-directory", str(base), "--listen", "127.0.0.1",
           "--port", str(port), "--disable-auto-launch"]
    if not torch.cuda.is_available():
        cmd.append("--cpu")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=str(COMFYUI), stdout=log, stderr=subprocess.STDOUT)
    return {"proc": proc, "log": log, "address": f"127.0.0.1:{port}", "base": base}


def wait_ready(server, timeout=240):
    """Returns once the server answers; fails the test with its log if it exits or times out."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://{server['address']}/system_stats", timeout=2).read()
            return
        except OSError:
            if server["proc"].poll() is not None or time.time() > deadline:
                server["proc"].kill()
                pytest.fail(f"ComfyUI did not start: {(server['base'] / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)


def stop_server(server):
    server["proc"].terminate()
    try:
        server["proc"].wait(timeout=20)
    except subprocess.TimeoutExpired:
        server["proc"].kill()
    server["log"].close()


def with_fixture_models(workflow, loaders=FIXTURE_LOADERS):
    """An API workflow (dict, changed in place and returned) loading the fixture nodes' tiny models
    (`loaders`: model loader class -> fixture node) in place of the model files, and the tiny LumiX
    checkpoint."""
    for node in workflow.values():
        if node["class_type"] in loaders:
            node["class_type"], node["inputs"] = loaders[node["class_type"]], {}
        if node["class_type"] == "LumiXTensorLoRALoader":
            node["inputs"]["lumix_name"] = TINY_CHECKPOINT
    return workflow
