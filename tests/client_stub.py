"""A stand-in ComfyUI server for the client tests (threads on 127.0.0.1): the HTTP API, a minimal
websocket, jobs run one at a time with a fixed service time, and switches for every failure mode,
hostile ones included (endless, huge and trickling bodies, garbage in lumix.json). Every stub stops
by itself after `lifetime` seconds, and every endless or trickling answer after STREAM_SECONDS."""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAPS = ("albedo", "irradiance", "color", "depth", "normal")
STREAM_SECONDS = 30.0  # the longest an endless, huge or trickling answer goes on
FILLER = b"\x00" * (1 << 20)
WS_MAGIC = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def tiny_png(seed_bytes: bytes, size: int = 4) -> bytes:
    """A valid RGB PNG whose pixels come from a hash of `seed_bytes`."""
    digest = hashlib.sha256(seed_bytes).digest()
    rows = b"".join(b"\x00" + bytes(digest[(3 * (y * size + x) + c) % 32] for x in range(size) for c in range(3))
                    for y in range(size))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def expected_metrics(seed: int) -> dict:
    """What the stub writes as metrics for a seed (the tests' filter thresholds are set against it)."""
    return {"photometric": {"residual": 0.01 * (seed % 7), "relative": 0.1, "scale": 1.0},
            "geometric": {"mean_degrees": float(seed % 13), "median_degrees": 1.0, "offset": 1.0, "valid_fraction": 0.9},
            "structural": {"alignment": (seed % 10) / 10, "maps": {}}}


def text_of(graph: dict, link) -> str | None:
    node = graph.get(str(link[0])) if isinstance(link, list) else None
    while node is not None:
        if isinstance(node["inputs"].get("text"), str):
            return node["inputs"]["text"]
        nxt = node["inputs"].get("conditioning")
        node = graph.get(str(nxt[0])) if isinstance(nxt, list) else None
    return None


class Stub:
    def __init__(self, service_time: float = 0.05, steps: int = 3, lifetime: float = 300.0, **faults):
        self.service_time, self.steps = service_time, steps
        self.faults = faults  # see _fault() calls below for the names
        self.requests, self.prompts, self.uploads, self.interrupts, self.deletes = [], [], [], [], []
        self.files: dict[tuple[str, str], bytes] = {}
        self.history: dict[str, dict] = {}
        self.queue: list[dict] = []
        self.running: dict | None = None
        self.sockets: dict[str, list] = {}
        self.lock = threading.Condition()
        self.alive = True
        self.folder_count = 0
        self.peak = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, code, body, ctype="application/json", length=None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def stream(self, mode, data, ctype="application/octet-stream"):
                """Hostile bodies: 'endless' (no length, never ends), 'huge' (announces 2 GB and streams
                it), 'trickle' (the real body, one byte every stub.faults['trickle_every'] seconds;
                'trickle_unsized' without a Content-Length), 'trickle_head' (the status line trickles). Each stops after STREAM_SECONDS or when
                the client hangs up."""
                end = time.monotonic() + STREAM_SECONDS
                every = stub.faults.get("trickle_every", 0.2)
                self.close_connection = True

                def trickle(payload):  # one byte every `every` seconds until the stream time is up
                    for byte in payload:
                        if time.monotonic() > end or not stub.alive:
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(every)

                try:
                    if mode == "trickle_head":
                        trickle(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" * 1000)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    if mode == "huge":
                        self.send_header("Content-Length", str(2 << 30))
                    elif mode == "trickle":
                        self.send_header("Content-Length", str(len(data)))
                    mode = "trickle" if mode == "trickle_unsized" else mode
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if mode == "trickle":
                        trickle(data)
                        return
                    sent, limit = 0, (2 << 30) if mode == "huge" else 1 << 62
                    while sent < limit and time.monotonic() < end and stub.alive:
                        self.wfile.write(FILLER[: limit - sent])
                        sent += len(FILLER)
                except OSError:  # the client hung up: what a good client does
                    pass

            def faulty(self, name, good):
                mode = stub.faults.get(name)
                if mode in ("endless", "huge", "trickle", "trickle_unsized", "trickle_head"):
                    return self.stream(mode, json.dumps(good).encode(), "application/json")
                if mode == "500":
                    return self.reply(500, b"<html>Internal Server Error</html>", "text/html")
                if mode == "html":
                    return self.reply(200, b"<html><body>proxy login</body></html>", "text/html")
                if mode == "cut":
                    data = json.dumps(good).encode()
                    return self.reply(200, data[: len(data) // 2], length=len(data))
                return self.reply(200, good)

            def do_GET(self):
                url = urlsplit(self.path)
                stub.requests.append(("GET", url.path))
                if url.path == "/ws":
                    return stub._serve_ws(self, parse_qs(url.query).get("clientId", [""])[0])
                if url.path == "/system_stats":
                    return self.faulty("stats", {"system": {"os": "stub"}, "devices": []})
                if url.path.startswith("/history/"):
                    pid = url.path.rsplit("/", 1)[1]
                    with stub.lock:
                        entry = stub.history.get(pid)
                    if stub.faults.get("history") == "never":
                        entry = None
                    return self.faulty("history", {pid: entry} if entry else {})
                if url.path.startswith("/object_info/"):
                    return self.reply(200, stub._object_info(url.path.rsplit("/", 1)[1]))
                if url.path == "/queue":
                    with stub.lock:
                        running = [[0, stub.running["pid"]]] if stub.running else []
                        pending = [[0, j["pid"]] for j in stub.queue]
                    if stub.faults.get("history") == "never" and stub.faults.get("queue_keeps"):
                        running = [[0, p] for p in stub.history]
                    return self.faulty("queue", {"queue_running": running, "queue_pending": pending})
                if url.path == "/view":
                    q = {k: v[0] for k, v in parse_qs(url.query).items()}
                    data = stub.files.get((q.get("subfolder", ""), q.get("filename", "")))
                    if data is None:
                        return self.reply(404, b"not found", "text/plain")
                    mode = stub.faults.get("view")
                    if stub.faults.get("view_only") not in (None, q.get("filename")):
                        mode = None
                    if mode in ("endless", "huge", "trickle", "trickle_unsized", "trickle_head"):
                        return self.stream(mode, data)
                    if mode == "partial":  # the connection drops before Content-Length bytes
                        return self.reply(200, data[: len(data) // 2], "image/png", length=len(data))
                    if mode == "truncated":  # a server that writes a short body with a matching length
                        return self.reply(200, data[: len(data) // 2], "image/png")
                    return self.reply(200, data, "application/octet-stream")
                return self.reply(404, {"error": "not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                stub.requests.append(("POST", url.path))
                if url.path == "/prompt":
                    mode = stub.faults.get("prompt")
                    if mode == "reject":
                        return self.reply(400, stub.faults["reject_body"])
                    if mode == "500":
                        return self.reply(500, b"oops", "text/plain")
                    data = json.loads(body)
                    pid = stub._enqueue(data["prompt"], data.get("client_id"))
                    if mode == "noid":
                        return self.reply(200, {"number": 0, "node_errors": {}})
                    return self.reply(200, {"prompt_id": pid, "number": 0, "node_errors": {}})
                if url.path == "/queue":
                    ids = json.loads(body).get("delete", [])
                    stub.deletes += ids
                    with stub.lock:
                        stub.queue = [j for j in stub.queue if j["pid"] not in ids]
                    return self.reply(200, b"", "text/plain")
                if url.path == "/interrupt":
                    pid = json.loads(body or b"{}").get("prompt_id")
                    stub.interrupts.append(pid)
                    with stub.lock:
                        if stub.running and stub.running["pid"] == pid:
                            stub.running["interrupted"] = True
                        stub.lock.notify_all()
                    return self.reply(200, b"", "text/plain")
                if url.path == "/upload/image":
                    if stub.faults.get("upload") == "400":
                        return self.reply(400, b"not an image", "text/plain")
                    stub.uploads.append(body)
                    return self.reply(200, {"name": "photo.png", "subfolder": "", "type": "input"})
                return self.reply(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.worker = threading.Thread(target=self._run_jobs, daemon=True)
        self.worker.start()
        self.reaper = threading.Timer(lifetime, self.close)  # never outlives a test that forgot it
        self.reaper.daemon = True
        self.reaper.start()

    def _object_info(self, class_type):
        """Loader specs with the model files this stub 'has' (faults["models"]; every file when unset),
        the LumiX loader V3-style (["COMBO", {"options": ...}]) as ComfyUI lists V3 nodes."""
        models = self.faults.get("models")
        if models is None:
            return {}
        inputs = {"UNETLoader": {"unet_name": [models, {}]},
                  "DualCLIPLoader": {"clip_name1": [models, {}], "clip_name2": [models, {}]},
                  "VAELoader": {"vae_name": [models, {}]},
                  "LumiXTensorLoRALoader": {"lumix_name": ["COMBO", {"options": models}]}}.get(class_type)
        return {class_type: {"input": {"required": inputs}}} if inputs else {}

    # ---- websocket ------------------------------------------------------------------------------

    def _serve_ws(self, handler, client_id):
        if self.faults.get("ws") == "none":
            return handler.reply(404, {"error": "no websocket here"})
        accept = base64.b64encode(hashlib.sha1((handler.headers["Sec-WebSocket-Key"] + WS_MAGIC).encode()).digest())
        handler.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        handler.wfile.flush()
        sock = handler.connection
        entry = [sock, threading.Lock()]
        with self.lock:
            self.sockets.setdefault(client_id, []).append(entry)
        self.send(client_id, {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}})
        sock.settimeout(0.5)
        while self.alive:  # keep the connection until the client or the stub closes it
            try:
                if not sock.recv(1024):
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        handler.close_connection = True

    def send(self, client_id, message, opcode=0x1):
        if self.faults.get("ws") == "silent":
            return
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        if len(data) < 126:
            head = bytes([0x80 | opcode, len(data)])
        elif len(data) < 65536:
            head = bytes([0x80 | opcode, 126]) + struct.pack(">H", len(data))
        else:
            head = bytes([0x80 | opcode, 127]) + struct.pack(">Q", len(data))
        for sock, lock in self.sockets.get(client_id, []):
            try:
                with lock:
                    sock.sendall(head + data)
            except OSError:
                pass

    def close_websockets(self, client_id=None):
        for cid, entries in list(self.sockets.items()):
            if client_id in (None, cid):
                for sock, _ in entries:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    # ---- jobs ----------------------------------------------------------------------------------

    def _enqueue(self, graph, client_id):
        with self.lock:
            pid = f"p-{len(self.prompts)}"
            self.prompts.append(graph)
            self.queue.append({"pid": pid, "graph": graph, "client": client_id})
            self.peak = max(self.peak, len(self.queue) + (self.running is not None))  # jobs on the server at once
            self.lock.notify_all()
        return pid

    def _run_jobs(self):
        while self.alive:
            with self.lock:
                while self.alive and not self.queue:
                    self.lock.wait(0.1)
                if not self.alive:
                    return
                job = self.running = self.queue.pop(0)
            self._run(job)
            with self.lock:
                self.running = None

    def _run(self, job):
        pid, client, graph = job["pid"], job["client"], job["graph"]
        number = int(pid.split("-")[1])
        self.send(client, {"type": "execution_start", "data": {"prompt_id": pid}})
        self.send(client, {"type": "executing", "data": {"node": "10", "prompt_id": pid}})
        if self.faults.get("die_at_job") == number:
            self.kill()
            return
        if self.faults.get("ws") == "close_mid_run":
            self.close_websockets(client)
        hang = self.faults.get("hang") is True or (isinstance(self.faults.get("hang"), int)
                                                   and number >= self.faults["hang"])
        start = time.monotonic()
        for step in range(1, self.steps + 1):
            with self.lock:
                step_end = start + self.service_time * step / self.steps
                while time.monotonic() < step_end and not job.get("interrupted") and self.alive:
                    self.lock.wait(max(0.0, step_end - time.monotonic()))
                while hang and not job.get("interrupted") and self.alive:
                    self.lock.wait(0.1)
                if job.get("interrupted") or not self.alive:
                    self.send(client, {"type": "execution_interrupted", "data": {"prompt_id": pid}})
                    return
            if step == 1 and self.faults.get("ws_binary"):  # a latent preview of that many bytes
                self.send(client, b"\x00\x00\x00\x01" * (self.faults["ws_binary"] // 4), opcode=0x2)
            if step == 1 and self.faults.get("ws_text"):  # a text message of that many bytes
                self.send(client, json.dumps({"type": "status", "pad": "x" * self.faults["ws_text"]}).encode())
            self.send(client, {"type": "progress", "data": {"value": self.faults.get("step_value", step),
                                                             "max": self.steps, "prompt_id": pid, "node": "10"}})
        if self.faults.get("error"):
            data = {"prompt_id": pid, "node_type": "LumiXSampler", "exception_message": self.faults["error"]}
            with self.lock:
                messages = self.faults.get("error_messages", [["execution_error", data]])
                self.history[pid] = {"status": {"status_str": "error", "messages": messages}, "outputs": {}}
            self.send(client, {"type": "execution_error", "data": data})
            return
        outputs = self._save(graph)
        if "save_output" in self.faults:  # garbage where Save Maps' output belongs
            outputs = {key: self.faults["save_output"] for key in outputs}
        with self.lock:
            self.history[pid] = {"status": {"status_str": "success", "completed": True}, "outputs": outputs}
        self.send(client, {"type": "execution_success", "data": {"prompt_id": pid}})
        self.send(client, {"type": "executing", "data": {"node": None, "prompt_id": pid}})

    def _save(self, graph):
        """What LumiX Save Maps would write: <map>.png per connected map and lumix.json, in a new folder."""
        save_id = next(k for k, n in graph.items() if n["class_type"] == "LumiXSaveMaps")
        save = graph[save_id]["inputs"]
        sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "LumiXSampler")
        prompt, seed = text_of(graph, sampler["positive"]), sampler["seed"]
        self.folder_count += 1
        subfolder = f"{save['filename_prefix']}_{self.folder_count:05d}"
        files = []
        for name in MAPS:
            if name in save:
                self.files[(subfolder, f"{name}.png")] = tiny_png(f"{prompt}|{seed}|{name}|{sampler['width']}".encode())
                files.append(f"{name}.png")
        self.files[(subfolder, "depth_16bit.png")] = tiny_png(f"{prompt}|{seed}|d16".encode())
        files.append("depth_16bit.png")
        sidecar = {"format": "lumix-maps", "format_version": 1, "scene_index": 0, "files": files,
                   "generation": {"prompt": prompt, "negative_prompt": text_of(graph, sampler["negative"]),
                                  "seed": seed, "steps": sampler["steps"], "width": sampler["width"],
                                  "height": sampler["height"]},
                   "metrics": expected_metrics(seed)}
        sidecar.update(self.faults.get("sidecar", {}))  # garbage a hostile server puts in lumix.json
        self.files[(subfolder, "lumix.json")] = json.dumps(sidecar, indent=2, sort_keys=True).encode()
        return {save_id: {"images": [{"filename": f, "subfolder": subfolder, "type": "output"} for f in files
                                     if not f.endswith("16bit.png")]}}

    def kill(self):
        """Die like a killed process: stop answering, drop every connection."""
        self.alive = False
        with self.lock:
            self.lock.notify_all()
        self.close_websockets()
        threading.Thread(target=self.server.shutdown, daemon=True).start()
        self.server.socket.close()

    def close(self):
        self.reaper.cancel()
        if self.alive:
            self.kill()
