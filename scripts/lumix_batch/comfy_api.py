"""ComfyUI's HTTP API and websocket, with every bad answer turned into a one-line ServerFailure.

Nothing a server sends is trusted: every answer is read with a size cap (JSON answers in memory,
files streamed to disk), within a time budget it cannot stretch by trickling (deadline.py), and
checked for shape before use."""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import time
import urllib.parse
import uuid

from .deadline import MIN_RATE, Deadline
from .errors import JobFailure, Rejected, ServerFailure
from .workflow import MODEL_FOLDERS, combo_options, describe_rejection, missing_models_line, model_inputs

MiB = 1 << 20
MAX_JSON_BYTES = 4 * MiB  # ComfyUI's answers to the client are kilobytes; parsed JSON takes up to ~25x its size
MAX_QUEUE_BYTES = 64 * MiB  # /queue lists every queued job with its workflow; scanned as it streams, never kept
DEFAULT_MAX_FILE_MB = 512  # a 4096x4096 map is at most ~270 MB (float32 RGBA EXR, uncompressed)
CHUNK = 256 * 1024
MAX_WS_MESSAGE = 4 * MiB  # a text message; binary frames (latent previews) are dropped as they arrive
MAX_WS_HANDSHAKE = 64 * 1024
MAX_PROMPT_ID = 200


def clean(text, limit: int = 300) -> str:
    """Server text made safe for one terminal line: control characters (escape sequences included)
    become spaces, runs of spaces one, and it is cut to `limit` characters."""
    text = "".join(c if c.isprintable() else " " for c in str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_json(body: bytes):
    """json.loads that fails with ValueError only (deep nesting raises RecursionError otherwise)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None


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


def _size(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


class HTTPStatus(Exception):
    """A complete answer with a status outside 2xx; `body` holds at most MAX_JSON_BYTES of it."""

    def __init__(self, code: int, body: bytes):
        super().__init__(f"HTTP {code}")
        self.code, self.body = code, body


class TooLarge(ServerFailure):
    pass


def read_capped(response: http.client.HTTPResponse, limit: int, sink, deadline: Deadline, what: str,
                truncate: bool = False) -> int:
    """Stream the body into `sink` (a write function) in chunks; its size. TooLarge past `limit` bytes
    (before reading anything when the server announces the size), IncompleteRead when it is cut off.
    With `truncate`, the first `limit` bytes are kept and the rest is left unread."""
    if response.length is not None and response.length > limit and not truncate:
        raise TooLarge(f"{what} is {_size(response.length)}, over the {_size(limit)} limit")
    total = 0
    while True:
        chunk = response.read1(min(CHUNK, limit + 1 - total))  # what has arrived: a trickle is seen byte by byte
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            if truncate:
                sink(chunk[: len(chunk) - (total - limit)])
                return limit
            raise TooLarge(f"{what} is over the {_size(limit)} limit (more kept coming)")
        deadline.received = total
        sink(chunk)
    if deadline.expired:  # the watcher shut the socket: a body without a length would look whole
        raise http.client.IncompleteRead(b"")
    if response.length:  # bytes announced by Content-Length that never came
        raise http.client.IncompleteRead(b"", response.length)
    return total


class QueueScan:
    """Where a job's id stands in a /queue answer, found in constant memory as the body streams by.
    ComfyUI writes {"queue_running": [[number, "<id>", ...], ...], "queue_pending": [...]}. Inside
    a JSON string every quote is escaped, so the raw bytes "<id>" (quotes included) only occur as a
    whole string value and "queue_running"/"queue_pending" only as keys: the job is in the section
    whose key comes last before its id."""

    KEYS = {b'"queue_running"': "running", b'"queue_pending"': "pending"}

    def __init__(self, prompt_id: str):
        self.needle = json.dumps(prompt_id).encode()
        self.keep = max(len(self.needle), *map(len, self.KEYS)) - 1  # bytes carried across chunks
        self.tail = b""
        self.offset = 0  # of the tail's first byte in the whole body
        self.head = b""  # the answer's first bytes, to see it is a JSON object at all
        self.keys: dict[str, int] = {}  # section -> offset of its key
        self.state: str | None = None

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < 64:
            self.head += chunk[: 64 - len(self.head)]
        data = self.tail + chunk
        fresh = len(self.tail)  # a match lying wholly in the tail was found with the last chunk
        for token, section in self.KEYS.items():
            at = data.find(token, max(0, fresh - len(token) + 1))
            if at >= 0 and section not in self.keys:
                self.keys[section] = self.offset + at
        at = data.find(self.needle, max(0, fresh - len(self.needle) + 1))
        if at >= 0 and self.state is None:
            before = [(where, section) for section, where in self.keys.items() if where < self.offset + at]
            self.state = max(before)[1] if before else None
        cut = max(0, len(data) - self.keep)
        self.offset += cut
        self.tail = data[cut:]

    def looks_right(self) -> bool:
        return self.head.lstrip()[:1] == b"{" and bool(self.keys)


class Server:
    """One ComfyUI server's HTTP API. Every method raises ServerFailure with a one-line reason."""

    def __init__(self, address: str, timeout: float = 30.0):
        self.base = normalise_address(address)
        parts = urllib.parse.urlsplit(self.base)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.name = self.base.split("://", 1)[1]
        self.timeout = timeout

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float | None = None,
                 limit: int = MAX_JSON_BYTES, sink=None, label: str = "", hint: str = "") -> bytes | int:
        """The body of a 2xx answer (or, with `sink`, its size after streaming it there).
        HTTPStatus for another status; ServerFailure when the server cannot be reached, stalls,
        trickles (deadline.py), sends more than `limit` bytes or a garbled answer."""
        grace = timeout or self.timeout
        what = _endpoint(path)
        conn_class = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = conn_class(self.host, self.port, timeout=grace)
        deadline = Deadline(grace, sent=len(data or b""))
        try:
            try:
                conn.connect()
            except OSError as exc:
                raise ServerFailure(f"cannot reach ComfyUI at {self.base} ({_reason(exc)})") from None
            deadline.watch(conn.sock)
            conn.request("GET" if data is None else "POST", path, body=data, headers=headers or {})
            response = conn.getresponse()
            if not 200 <= response.status < 300:
                kept = bytearray()
                try:
                    read_capped(response, MAX_JSON_BYTES, kept.extend, deadline, what, truncate=True)
                except (http.client.HTTPException, OSError):
                    if deadline.expired:
                        raise
                raise HTTPStatus(response.status, bytes(kept))  # with as much of its body as came
            label = label or f"the answer to {what}"
            if sink is not None:
                return read_capped(response, limit, sink, deadline, label)
            body = bytearray()
            read_capped(response, limit, body.extend, deadline, label)
            return body  # not copied to bytes: json.loads takes a bytearray
        except TooLarge as exc:
            raise TooLarge(f"{self.name}: {exc}{hint}") from None
        except (http.client.HTTPException, OSError) as exc:
            if deadline.expired:
                raise ServerFailure(
                    f"{self.name}: the answer to {what} came too slowly ({deadline.received} bytes of body in "
                    f"{time.monotonic() - deadline.start:.1f}s; under {MIN_RATE // 1024} KiB/s once a grace of "
                    f"{deadline.grace:g}s was spent; --idle-timeout)") from None
            if isinstance(exc, TimeoutError):
                raise ServerFailure(f"{self.name}: {what} sent nothing for {grace:g}s (--idle-timeout)") from None
            if isinstance(exc, http.client.HTTPException):  # IncompleteRead, a garbled status line, ...
                raise ServerFailure(f"{self.name}: the answer to {what} was cut off or garbled "
                                    f"({exc.__class__.__name__})") from None
            raise ServerFailure(f"cannot reach ComfyUI at {self.base} ({_reason(exc)})") from None
        finally:
            deadline.done()
            conn.close()

    def _json(self, path: str, data: bytes | None = None, headers: dict | None = None, limit: int = MAX_JSON_BYTES):
        try:
            body = self._request(path, data, headers, limit=limit)
        except HTTPStatus as exc:
            raise ServerFailure(f"{self.name}: {_endpoint(path)} answered HTTP {exc.code} "
                                f"{clean(exc.body[:80].decode(errors='replace'), 80)!r}") from None
        try:
            value = parse_json(body)
        except ValueError:
            raise ServerFailure(f"{self.name}: {_endpoint(path)} answered something that is not JSON "
                                f"({len(body)} bytes: {clean(body[:60].decode(errors='replace'), 60)!r})") from None
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
            inputs = _dict(_dict(node).get("input"))
            spec = _dict(inputs.get("required")).get(name) or _dict(inputs.get("optional")).get(name)
            options = combo_options(spec)
            if options is not None and value not in options:
                missing.append(f"{value!r} in ComfyUI/models/{MODEL_FOLDERS[name]}/ ({class_type}.{name})")
        if missing:
            raise Rejected(f"{self.name}: {missing_models_line(missing)}")

    def queue(self, graph: dict, client_id: str) -> str:
        body = json.dumps({"prompt": graph, "client_id": client_id}).encode()
        try:
            body = self._request("/prompt", body, {"Content-Type": "application/json"})
        except HTTPStatus as exc:
            if exc.code == 400:
                raise Rejected(f"{self.name}: {clean(describe_rejection(exc.code, exc.body), 1500)}") from None
            raise ServerFailure(f"{self.name}: /prompt answered HTTP {exc.code} "
                                f"{clean(exc.body[:80].decode(errors='replace'), 80)!r}") from None
        try:
            reply = parse_json(body)
        except ValueError:
            raise ServerFailure(f"{self.name}: /prompt answered something that is not JSON") from None
        if isinstance(reply, dict) and reply.get("node_errors"):
            raise Rejected(f"{self.name}: {clean(describe_rejection(200, body), 1500)}")
        prompt_id = reply.get("prompt_id") if isinstance(reply, dict) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ServerFailure(f"{self.name}: /prompt accepted the job but sent no prompt_id")
        if len(prompt_id) > MAX_PROMPT_ID or not prompt_id.isprintable():
            raise ServerFailure(f"{self.name}: /prompt sent a malformed prompt_id {clean(prompt_id, 40)!r}")
        return prompt_id

    def history(self, prompt_id: str) -> dict | None:
        """The finished job's history entry, None while it is not there; JobFailure if it failed."""
        history = self._json(f"/history/{urllib.parse.quote(prompt_id)}")
        entry = history.get(prompt_id)
        if entry is None:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("outputs", {}), dict):
            raise ServerFailure(f"{self.name}: /history entry of the job is malformed")
        status = _dict(entry.get("status"))
        if status.get("status_str") == "error":
            messages = status.get("messages") if isinstance(status.get("messages"), list) else []
            errors = [m[1] for m in messages if isinstance(m, list) and len(m) == 2
                      and m[0] == "execution_error" and isinstance(m[1], dict)]
            raise JobFailure(execution_error_text(errors[0] if errors else {}))
        return entry

    def queue_state(self, prompt_id: str) -> str | None:
        """"running", "pending" (waiting behind other jobs) or None (not in the server's queue).
        /queue holds every queued job with its whole workflow, tens of MB on a busy shared server:
        it is scanned as it streams (QueueScan) instead of being parsed."""
        scan = QueueScan(prompt_id)
        try:
            self._request("/queue", limit=MAX_QUEUE_BYTES, sink=scan.feed)
        except HTTPStatus as exc:
            raise ServerFailure(f"{self.name}: /queue answered HTTP {exc.code}") from None
        if not scan.looks_right():
            raise ServerFailure(f"{self.name}: /queue answered something that is not ComfyUI's queue")
        return scan.state

    def cancel(self, prompt_id: str) -> None:
        """Remove the job from the queue and stop it if it runs (best effort, short timeouts)."""
        for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"}, timeout=3)
            except (ServerFailure, HTTPStatus):
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
        except HTTPStatus as exc:
            raise Rejected(f"{self.name}: ComfyUI refused the photo {path} (HTTP {exc.code}); is it an image file?") from None
        try:
            reply = parse_json(reply)
        except ValueError:
            reply = None
        name, subfolder = _dict(reply).get("name"), _dict(reply).get("subfolder") or ""
        if not isinstance(name, str) or not name or not isinstance(subfolder, str):
            raise ServerFailure(f"{self.name}: /upload/image answered without the stored name")
        return f"{subfolder}/{name}" if subfolder else name

    def download(self, ref: dict, dest, limit: int) -> int:
        """Stream the file /view serves for `ref` into the open binary file `dest`; its size.
        TooLarge (a ServerFailure) past `limit` bytes."""
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        shown = clean(ref.get("filename"), 80)
        hint = "" if shown.endswith(".json") else " (raise --max-file-mb if this server's maps are that large)"
        try:
            return self._request(f"/view?{query}", limit=limit, sink=dest.write, label=shown, hint=hint)
        except HTTPStatus as exc:
            raise ServerFailure(f"{self.name}: /view of {shown} answered HTTP {exc.code}") from None
        except TooLarge:
            raise
        except ServerFailure as exc:
            raise ServerFailure(f"{exc} while downloading {shown}") from None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or exc.__class__.__name__


def execution_error_text(data: dict) -> str:
    return (f"ComfyUI failed while running {clean(data.get('node_type') or 'a node', 60)}: "
            f"{clean(data.get('exception_message', ''), 300)}")


class MiniWebSocket:
    """Just enough of RFC 6455 to read ComfyUI's progress messages, with a timeout on every read.
    Memory stays bounded: the handshake and each text message are capped, binary frames (latent
    previews, never used here) are dropped as their bytes arrive, whatever size they announce."""

    def __init__(self, server: Server, client_id: str, timeout: float):
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        try:
            self._handshake(server, client_id, timeout)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, server: Server, client_id: str, timeout: float) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        deadline = time.monotonic() + timeout
        head = b""
        while b"\r\n\r\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0 or len(head) > MAX_WS_HANDSHAKE:
                raise ConnectionError("no websocket handshake")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError("no websocket upgrade")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]
        self.skip = 0  # bytes still to drop of a binary frame

    def _frame(self):
        """(opcode, payload) of the first whole frame in the buffer, or None."""
        b = self.buffer
        if len(b) < 2:
            return None
        opcode, length, pos = b[0] & 0x0F, b[1] & 0x7F, 2
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
            if len(b) < pos + 4:
                return None
            mask, pos = b[pos:pos + 4], pos + 4
        if opcode == 0x2 and len(b) < pos + length:  # a binary frame not yet whole: drop it as it comes
            self.skip, self.buffer = pos + length - len(b), b""
            return None
        if length > MAX_WS_MESSAGE:
            raise ConnectionError(f"a websocket message of {_size(length)} (over {_size(MAX_WS_MESSAGE)})")
        if len(b) < pos + length:
            return None
        payload = b[pos:pos + length]
        if mask:
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
        self.buffer = b[pos + length:]
        return opcode, payload

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
                        message = parse_json(payload)
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
            if self.skip:
                dropped = min(self.skip, len(chunk))
                self.skip, chunk = self.skip - dropped, chunk[dropped:]
            self.buffer += chunk

    def close(self) -> None:
        try:
            self._send(0x8)
        except OSError:
            pass
        finally:
            self.sock.close()
