"""ComfyUI's HTTP API and websocket, with every bad answer turned into a one-line ServerFailure."""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from .errors import JobFailure, Rejected, ServerFailure
from .workflow import MODEL_FOLDERS, combo_options, describe_rejection, missing_models_line, model_inputs

NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError, resets, timeouts, IncompleteRead, ...


def normalise_address(address: str) -> str:
    address = address.strip()
    address = address if "://" in address else "http://" + address
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a server address: {address!r} (expected host:port or http://host:port)")
    return address.rstrip("/")


def _endpoint(path: str) -> str:
    """/history/abc?x=1 -> /history: how messages name an endpoint."""
    return "/" + path.split("?")[0].split("/")[1]


class Server:
    """One ComfyUI server's HTTP API. Every method raises ServerFailure with a one-line reason."""

    def __init__(self, address: str, timeout: float = 30.0):
        self.base = normalise_address(address)
        parts = urllib.parse.urlsplit(self.base)
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.name = self.base.split("://", 1)[1]
        self.timeout = timeout

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None,
                 timeout: float | None = None) -> bytes:
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except NETWORK_ERRORS:
                body = b""
            exc.body = body
            raise
        except http.client.HTTPException as exc:  # IncompleteRead, a garbled status line, ...
            raise ServerFailure(f"{self.name}: the answer to {_endpoint(path)} was cut off or garbled "
                                f"({exc.__class__.__name__})") from None
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc.__class__.__name__ + (f" {exc}" if str(exc) else "")
            raise ServerFailure(f"cannot reach ComfyUI at {self.base} ({reason})") from None

    def _json(self, path: str, data: bytes | None = None, headers: dict | None = None):
        try:
            body = self._request(path, data, headers)
        except urllib.error.HTTPError as exc:
            raise ServerFailure(f"{self.name}: {_endpoint(path)} answered HTTP {exc.code} "
                                f"{exc.body[:80].decode(errors='replace')!r}") from None
        try:
            value = json.loads(body)
        except ValueError:
            raise ServerFailure(f"{self.name}: {_endpoint(path)} answered something that is not JSON "
                                f"({len(body)} bytes: {body[:60].decode(errors='replace')!r})") from None
        if not isinstance(value, dict):
            raise ServerFailure(f"{self.name}: {_endpoint(path)} answered JSON that is not an object")
        return value

    def check(self) -> dict:
        """GET /system_stats: is this a ComfyUI server, up now?"""
        stats = self._json("/system_stats")
        if "system" not in stats and "devices" not in stats:
            raise ServerFailure(f"{self.name}: /system_stats does not look like ComfyUI's")
        return stats

    def check_models(self, graph: dict) -> None:
        """Rejected, listing every model file the graph asks for that this server does not have
        (ComfyUI's own validation skips the combos of V3 nodes and stops at a failed upstream node)."""
        missing, info = [], {}
        for class_type, name, value in model_inputs(graph):
            if class_type not in info:
                info[class_type] = self._json(f"/object_info/{urllib.parse.quote(class_type)}").get(class_type)
            node = info[class_type]
            inputs = node.get("input", {}) if isinstance(node, dict) else {}
            spec = (inputs.get("required") or {}).get(name) or (inputs.get("optional") or {}).get(name)
            options = combo_options(spec)
            if options is not None and value not in options:
                missing.append(f"{value!r} in ComfyUI/models/{MODEL_FOLDERS[name]}/ ({class_type}.{name})")
        if missing:
            raise Rejected(f"{self.name}: {missing_models_line(missing)}")

    def queue(self, graph: dict, client_id: str) -> str:
        body = json.dumps({"prompt": graph, "client_id": client_id}).encode()
        try:
            body = self._request("/prompt", body, {"Content-Type": "application/json"})
        except urllib.error.HTTPError as exc:
            if exc.code == 400:
                raise Rejected(f"{self.name}: {describe_rejection(exc.code, exc.body)}") from None
            raise ServerFailure(f"{self.name}: /prompt answered HTTP {exc.code} "
                                f"{exc.body[:80].decode(errors='replace')!r}") from None
        try:
            reply = json.loads(body)
        except ValueError:
            raise ServerFailure(f"{self.name}: /prompt answered something that is not JSON") from None
        if isinstance(reply, dict) and reply.get("node_errors"):
            raise Rejected(f"{self.name}: {describe_rejection(200, body)}")
        if not isinstance(reply, dict) or not isinstance(reply.get("prompt_id"), str) or not reply["prompt_id"]:
            raise ServerFailure(f"{self.name}: /prompt accepted the job but sent no prompt_id")
        return reply["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The finished job's history entry, None while it is not there; JobFailure if it failed."""
        history = self._json(f"/history/{urllib.parse.quote(prompt_id)}")
        entry = history.get(prompt_id)
        if entry is None:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("outputs", {}), dict):
            raise ServerFailure(f"{self.name}: /history entry of the job is malformed")
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        if status.get("status_str") == "error":
            messages = [m[1] for m in status.get("messages", []) if isinstance(m, list) and len(m) == 2
                        and m[0] == "execution_error" and isinstance(m[1], dict)]
            raise JobFailure(execution_error_text(messages[0] if messages else {}))
        return entry

    def queue_state(self, prompt_id: str) -> str | None:
        """"running", "pending" (waiting behind other jobs) or None (not in the server's queue)."""
        q = self._json("/queue")
        for key, state in (("queue_running", "running"), ("queue_pending", "pending")):
            if any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in q.get(key) or []):
                return state
        return None

    def cancel(self, prompt_id: str) -> None:
        """Remove the job from the queue and stop it if it runs (best effort, short timeouts)."""
        for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"}, timeout=3)
            except (ServerFailure, urllib.error.HTTPError):
                pass

    def upload_image(self, path: str) -> str:
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        name = os.path.basename(path)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + \
               (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue"
                f"\r\n--{boundary}--\r\n").encode()
        try:
            reply = self._request("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        except urllib.error.HTTPError as exc:
            raise Rejected(f"{self.name}: ComfyUI refused the photo {path} (HTTP {exc.code}); is it an image file?") from None
        try:
            reply = json.loads(reply)
            name = reply["name"]
        except (ValueError, KeyError, TypeError):
            raise ServerFailure(f"{self.name}: /upload/image answered without the stored name") from None
        return f"{reply['subfolder']}/{name}" if reply.get("subfolder") else name

    def download(self, ref: dict, dest) -> int:
        """Write the file /view serves for `ref` into the open binary file `dest`; its size."""
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        try:
            body = self._request(f"/view?{query}")
        except urllib.error.HTTPError as exc:
            raise ServerFailure(f"{self.name}: /view of {ref.get('filename')} answered HTTP {exc.code}") from None
        except ServerFailure as exc:
            raise ServerFailure(f"{exc} while downloading {ref.get('filename')}") from None
        dest.write(body)
        return len(body)


def execution_error_text(data: dict) -> str:
    message = " ".join(str(data.get("exception_message", "")).split())
    return f"ComfyUI failed while running {data.get('node_type')}: {message}"


class MiniWebSocket:
    """Just enough of RFC 6455 to read ComfyUI's progress messages, with a timeout on every read."""

    def __init__(self, server: Server, client_id: str, timeout: float):
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError("no websocket upgrade")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def _frame(self):
        """(opcode, payload) of the first whole frame in the buffer, or None."""
        b = self.buffer
        if len(b) < 2:
            return None
        length, pos = b[1] & 0x7F, 2
        if length == 126:
            if len(b) < 4:
                return None
            length, pos = struct.unpack(">H", b[2:4])[0], 4
        elif length == 127:
            if len(b) < 10:
                return None
            length, pos = struct.unpack(">Q", b[2:10])[0], 10
        mask = None
        if b[1] & 0x80:
            mask, pos = b[pos:pos + 4], pos + 4
        if len(b) < pos + length:
            return None
        payload = b[pos:pos + length]
        if mask:
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
        self.buffer = b[pos + length:]
        return b[0] & 0x0F, payload

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        masked = bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def recv(self, timeout: float):
        """The next text message as a dict, or None after `timeout` seconds of silence.
        ConnectionError when the server closes the connection."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._frame()
            if frame is not None:
                opcode, payload = frame
                if opcode == 0x9:
                    self._send(0xA, payload[:125])
                elif opcode == 0x8:
                    raise ConnectionError("websocket closed by the server")
                elif opcode == 0x1:
                    try:
                        message = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(message, dict):
                        return message
                continue  # binary frames are latent previews
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionError("websocket closed by the server")
            self.buffer += chunk

    def close(self) -> None:
        try:
            self._send(0x8)
        except OSError:
            pass
        finally:
            self.sock.close()
