#!/usr/bin/env python3
"""Run LumiX on a running ComfyUI server from the command line (standard library only).

    python scripts/lumix_client.py --prompt "a cozy living room" --out lumix_out
    python scripts/lumix_client.py --prompts prompts.txt --seed 7 --out lumix_out
    python scripts/lumix_client.py --photo room.jpg --prompt "a living room" --out lumix_out

Each scene's maps are written to their own folder under --out. Start ComfyUI first (in its
folder: python main.py --listen 127.0.0.1 --port 8188) with the models the README lists.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
WORKFLOWS = os.path.join(HERE, "..", "workflows", "api")
TEXT_WORKFLOW = os.path.join(WORKFLOWS, "lumix_text_to_intrinsic_api.json")
PHOTO_WORKFLOW = os.path.join(WORKFLOWS, "lumix_photo_decomposition_api.json")
POSITIVE_TITLE = "Positive prompt"
SAVE_PREFIX = "LumiX/"
# Which ComfyUI model folder a loader input reads, for "missing model file" messages.
MODEL_FOLDERS = {"unet_name": "diffusion_models", "clip_name1": "text_encoders", "clip_name2": "text_encoders",
                 "vae_name": "vae", "lumix_name": "lumix"}


class ClientError(Exception):
    """A failure reported to the user as one line."""


# ---- building the request -----------------------------------------------------------------------

def load_workflow(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _node_of(workflow: dict, class_type: str, title: str | None = None) -> str:
    for node_id, node in workflow.items():
        if node.get("class_type") == class_type and (title is None or node.get("_meta", {}).get("title") == title):
            return node_id
    raise ClientError(f"the workflow has no {class_type} node{f' titled {title!r}' if title else ''}; "
                      "use one of the files in workflows/api/.")


def build_prompt(workflow: dict, prompt: str, seed: int, width: int | None = None, height: int | None = None,
                 steps: int | None = None, cfg: float | None = None, image_name: str | None = None) -> dict:
    """A copy of an API-format LumiX workflow with this job's values set."""
    graph = json.loads(json.dumps(workflow))
    graph[_node_of(graph, "CLIPTextEncode", POSITIVE_TITLE)]["inputs"]["text"] = prompt
    sampler = graph[_node_of(graph, "LumiXSampler")]["inputs"]
    sampler["seed"] = seed
    for name, value in (("width", width), ("height", height), ("steps", steps), ("cfg", cfg)):
        if value is not None:
            sampler[name] = value
    for node in graph.values():  # keep the resolution shift in step with the size
        if node["class_type"] == "ModelSamplingFlux":
            node["inputs"]["width"], node["inputs"]["height"] = sampler["width"], sampler["height"]
    if image_name is not None:
        graph[_node_of(graph, "LoadImage")]["inputs"]["image"] = image_name
    return graph


def saved_maps(workflow: dict) -> dict[str, str]:
    """{SaveImage node id: map name} from the LumiX/<map> filename prefixes."""
    out = {}
    for node_id, node in workflow.items():
        prefix = node["inputs"].get("filename_prefix", "") if node["class_type"] == "SaveImage" else ""
        if prefix.startswith(SAVE_PREFIX):
            out[node_id] = prefix[len(SAVE_PREFIX):].split("/")[0]
    return out


def describe_rejection(status: int, body: bytes) -> str:
    """One line for a workflow ComfyUI refused, naming a missing model file where that is the cause."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"ComfyUI rejected the workflow (HTTP {status}): {body[:200].decode(errors='replace')}"
    for node_id, node in (data.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            info = err.get("extra_info", {})
            name = info.get("input_name")
            if err.get("type") == "value_not_in_list" and name in MODEL_FOLDERS:
                return (f"missing model file {info.get('received_value')!r} ({node.get('class_type')}.{name}): put it "
                        f"in ComfyUI/models/{MODEL_FOLDERS[name]}/ (see the README's model table) and try again.")
            if err.get("type") == "value_not_in_list" and name == "image":
                return f"ComfyUI has no input image {info.get('received_value')!r}: the upload failed or was removed."
            return f"ComfyUI rejected the workflow: {node.get('class_type')} (node {node_id}): {err.get('message')}: {err.get('details')}"
    error = data.get("error") or {}
    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    hint = " Is the LumiX extension installed in ComfyUI/custom_nodes/?" if "does not exist" in message else ""
    return f"ComfyUI rejected the workflow: {message}{hint}"


# ---- talking to the server ----------------------------------------------------------------------

class Server:
    def __init__(self, address: str, timeout: float = 30.0):
        address = address if "://" in address else "http://" + address
        parts = urllib.parse.urlsplit(address)
        self.base, self.host, self.port = address.rstrip("/"), parts.hostname, parts.port or 80
        self.timeout = timeout
        self.client_id = str(uuid.uuid4())

    def _open(self, path, data=None, headers=None):
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise exc
        except (urllib.error.URLError, ConnectionError, socket.timeout) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach ComfyUI at {self.base} ({reason}). Start it in your ComfyUI folder "
                              f"with: python main.py --listen {self.host} --port {self.port}") from None

    def get_json(self, path):
        return json.loads(self._open(path))

    def queue(self, graph: dict) -> str:
        body = json.dumps({"prompt": graph, "client_id": self.client_id}).encode()
        try:
            reply = json.loads(self._open("/prompt", body, {"Content-Type": "application/json"}))
        except urllib.error.HTTPError as exc:
            raise ClientError(describe_rejection(exc.code, exc.read())) from None
        if reply.get("node_errors"):
            raise ClientError(describe_rejection(200, json.dumps(reply).encode()))
        return reply["prompt_id"]

    def upload_image(self, path: str) -> str:
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        name = os.path.basename(path)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + \
               f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n--{boundary}--\r\n".encode()
        try:
            reply = json.loads(self._open("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        except urllib.error.HTTPError as exc:
            raise ClientError(f"ComfyUI refused the photo {path} (HTTP {exc.code}); is it an image file?") from None
        return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]

    def download(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._open(f"/view?{query}")


class MiniWebSocket:
    """Just enough of RFC 6455 to read ComfyUI's progress messages."""

    def __init__(self, host, port, path, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError("no websocket upgrade")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode, payload=b""):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def recv(self):
        """(opcode, payload) of the next data frame; answers pings, raises on close."""
        while True:
            b0, b1 = self._read(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._send(0xA, payload[:125])
            elif opcode == 0x8:
                raise ConnectionError("websocket closed by server")
            elif opcode in (0x1, 0x2):
                return opcode, payload

    def close(self):
        try:
            self._send(0x8)
        finally:
            self.sock.close()


def wait_for(server: Server, prompt_id: str, label: str, ws: MiniWebSocket | None, log=sys.stderr) -> dict:
    """Follow the job (websocket progress, or polling without one) and return its history entry."""
    if ws is not None:
        while True:
            opcode, payload = ws.recv()
            if opcode != 0x1:
                continue  # binary frames are latent previews
            msg = json.loads(payload)
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = msg.get("type")
            if kind == "progress":
                log.write(f"\r{label}: step {data['value']}/{data['max']}   ")
                log.flush()
            elif kind == "execution_error":
                log.write("\n")
                raise ClientError(f"ComfyUI failed while running {data.get('node_type')}: "
                                  f"{data.get('exception_message', '').strip()}")
            elif kind == "execution_interrupted":
                log.write("\n")
                raise ClientError("the job was cancelled in ComfyUI.")
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                                 and data.get("prompt_id") == prompt_id):
                log.write("\n")
                break
    while True:
        history = server.get_json(f"/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            status = entry.get("status", {})
            if status.get("status_str") == "error":
                messages = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                detail = messages[0] if messages else {}
                raise ClientError(f"ComfyUI failed while running {detail.get('node_type')}: "
                                  f"{str(detail.get('exception_message', '')).strip()}")
            return entry
        time.sleep(0.5)


def _saved_images(entry: dict, workflow: dict):
    """(scene, map name, image ref) for every map the job saved: SaveImage nodes with a LumiX/<map>
    prefix (one image per scene), and LumiX Save Maps nodes (one folder per scene, <map>.png)."""
    outputs = entry.get("outputs", {})
    for node_id, map_name in saved_maps(workflow).items():
        for scene, image in enumerate(outputs.get(node_id, {}).get("images", [])):
            yield scene, map_name, image
    for node_id, node in workflow.items():
        if node["class_type"] == "LumiXSaveMaps":
            folders: list[str] = []
            for image in outputs.get(node_id, {}).get("images", []):
                if image["subfolder"] not in folders:
                    folders.append(image["subfolder"])
                yield folders.index(image["subfolder"]), os.path.splitext(image["filename"])[0], image


def write_maps(server: Server, entry: dict, workflow: dict, out_dir: str, job: str, seed: int,
               photo: str | None = None) -> list[str]:
    """Download every saved map and write scene folders <job>_s<scene>_seed<seed+scene>/<map>.png."""
    folders = []
    for scene, map_name, image in _saved_images(entry, workflow):
        folder = os.path.join(out_dir, f"{job}_s{scene}_seed{seed + scene}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{map_name}.png"), "wb") as f:
            f.write(server.download(image))
        if folder not in folders:
            folders.append(folder)
    if photo is not None:
        for folder in folders:
            shutil.copyfile(photo, os.path.join(folder, "color" + os.path.splitext(photo)[1].lower()))
    if not folders:
        raise ClientError("the job finished but saved no LumiX maps; check the SaveImage nodes of the workflow.")
    return folders


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompts", help="a text file with one prompt per line (blank lines and # comments skipped)")
    p.add_argument("--prompt", help="the scene to generate (with --photo: a description of the photo)")
    p.add_argument("--photo", help="decompose this photo into albedo, irradiance, depth and normal")
    p.add_argument("--seed", type=int, default=42, help="seed of the first prompt; prompt i uses seed + i")
    p.add_argument("--width", type=int, default=None, help="default: the workflow's (512)")
    p.add_argument("--height", type=int, default=None, help="default: the workflow's (512)")
    p.add_argument("--steps", type=int, default=None, help="default: the workflow's (50)")
    p.add_argument("--cfg", type=float, default=None, help="default: the workflow's (3.0 text, 1.0 photo)")
    p.add_argument("--server", default="127.0.0.1:8188", help="ComfyUI address (default 127.0.0.1:8188)")
    p.add_argument("--workflow", help="an API-format workflow to use instead of the shipped one")
    p.add_argument("--out", default="lumix_out", help="output folder (default lumix_out)")
    args = p.parse_args(argv)
    if not args.prompt and not args.prompts and not args.photo:
        p.error("give --prompt TEXT, --prompts FILE or --photo IMAGE")
    if args.photo and args.prompts:
        p.error("--photo takes one --prompt, not --prompts")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and value % 16:
            p.error(f"--{name} must be a multiple of 16 (got {value})")
    return args


def read_prompts(args) -> list[str]:
    if args.prompts:
        try:
            with open(args.prompts) as f:
                prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except OSError as exc:
            raise ClientError(f"cannot read prompts file {args.prompts}: {exc.strerror}") from None
        if not prompts:
            raise ClientError(f"{args.prompts} holds no prompts.")
        return prompts
    return [args.prompt or ""]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        prompts = read_prompts(args)
        if args.photo and not os.path.isfile(args.photo):
            raise ClientError(f"no photo at {args.photo}")
        workflow_path = args.workflow or (PHOTO_WORKFLOW if args.photo else TEXT_WORKFLOW)
        workflow = load_workflow(workflow_path)
        server = Server(args.server)
        server.get_json("/system_stats")  # fails fast, in one line, when the server is down
        image_name = server.upload_image(args.photo) if args.photo else None
        try:
            ws = MiniWebSocket(server.host, server.port, f"/ws?clientId={server.client_id}", server.timeout)
            ws.sock.settimeout(None)
        except OSError:
            ws = None  # progress by polling instead
        for i, prompt in enumerate(prompts):
            seed = args.seed + i
            graph = build_prompt(workflow, prompt, seed, args.width, args.height, args.steps, args.cfg, image_name)
            prompt_id = server.queue(graph)
            label = f"[{i + 1}/{len(prompts)}] {prompt[:40]!r}"
            entry = wait_for(server, prompt_id, label, ws)
            for folder in write_maps(server, entry, graph, args.out, f"{i:03d}", seed, args.photo):
                print(folder)
        if ws is not None:
            ws.close()
    except ClientError as exc:
        print(f"lumix_client: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
