"""Dealing scenes out to ComfyUI servers: one worker thread per server slot, retries with backoff, a
dead server's job handed to another, idle and overall timeouts, cancellation on the servers."""
from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field

from . import output
from .comfy_api import DEFAULT_MAX_FILE_MB, MiniWebSocket, Server, clean, execution_error_text
from .errors import Cancelled, ClientError, JobFailure, Rejected, ServerFailure
from .filters import judge
from .manifest import Manifest
from .progress import Progress

MAX_BACKOFF = 60.0
MAX_NESTING = 32  # a scene's record (metrics from lumix.json) is written with json.dumps, which recurses
VANISHED_GRACE = 3.0  # seconds a finished job may be missing from both /queue and /history
QUEUE_CHECK = 5.0  # seconds of websocket silence before asking /queue whether the job still waits its turn


@dataclass
class Scene:
    id: str
    prompt: str
    seed: int
    attempts: int = 0
    avoid: set = field(default_factory=set)


@dataclass
class ServerState:
    server: Server
    state: str = "new"  # new, ready, down, retired
    fails: int = 0
    next_try: float = 0.0
    down_since: float | None = None
    last_error: str = ""
    image_name: str | None = None
    models_checked: bool = False
    done: int = 0
    filtered: int = 0
    job_failures: int = 0  # the job ran and a node raised
    faults: int = 0  # the server failed a scene: down, stalled, or an answer that was garbage
    last_fault: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Options:
    out_dir: str
    overwrite: bool = False
    depth: int = 1
    retries: int = 3
    backoff: float = 2.0
    idle_timeout: float = 600.0
    timeout: float | None = None
    limits: dict = field(default_factory=dict)
    photo: str | None = None
    settings: dict = field(default_factory=dict)  # recorded in every manifest record
    max_file_bytes: int = DEFAULT_MAX_FILE_MB << 20  # per downloaded file


class Batch:
    def __init__(self, template, servers: list[Server], scenes: list[Scene], manifest: Manifest,
                 progress: Progress, opts: Options, on_done=None):
        self.template, self.scenes, self.manifest, self.progress, self.opts = template, scenes, manifest, progress, opts
        self.states = [ServerState(s) for s in servers]
        self.pending = list(scenes)
        self.outstanding = len(scenes)
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.fatal_error: str | None = None
        self.inflight: dict[tuple, tuple[Server, str]] = {}
        self.failures: list[str] = []
        self.counts = threading.Lock()  # the per-server counters: a server's slots finish concurrently
        self.on_done = on_done or (lambda folder: None)

    # ---- the main thread -------------------------------------------------------------------------

    def run(self) -> None:
        """Until every scene is finished; ClientError on a fatal error or the overall timeout.
        KeyboardInterrupt passes through after the in-flight jobs were cancelled."""
        start = time.monotonic()
        threads = [threading.Thread(target=self._worker, args=(st, slot), daemon=True, name=f"{st.server.name}#{slot}")
                   for st in self.states for slot in range(self.opts.depth)]
        for t in threads:
            t.start()
        try:
            while True:
                with self.cond:
                    if self.outstanding == 0 or self.fatal_error:
                        break
                    self.cond.wait(0.2)
                self.progress.tick()
                self._check_servers_alive()
                if self.opts.timeout is not None and time.monotonic() - start > self.opts.timeout:
                    self._set_fatal(f"the batch ran past --timeout {self.opts.timeout:g}s with "
                                    f"{self.progress.finished} of {self.progress.total} scenes finished; "
                                    "run the same command again to go on")
        finally:
            self.shutdown(threads)
        if self.fatal_error:
            raise ClientError(self.fatal_error)

    def shutdown(self, threads) -> None:
        """Stop the workers and cancel whatever they left running on the servers."""
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
            inflight = list(self.inflight.values())
        cancels = [threading.Thread(target=server.cancel, args=(pid,), daemon=True) for server, pid in inflight]
        for t in cancels:
            t.start()
        deadline = time.monotonic() + 5
        for t in cancels + threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _set_fatal(self, message: str) -> None:
        with self.cond:
            if not self.fatal_error:
                self.fatal_error = message
            self.cond.notify_all()

    def _check_servers_alive(self) -> None:
        live = [st for st in self.states if st.state != "retired"]
        if not live:
            self._set_fatal(self.states[-1].last_error if len(self.states) == 1 else
                            "no server can run the workflow: " + "; ".join(st.last_error for st in self.states))
            return
        now = time.monotonic()
        if all(st.state == "down" and st.down_since is not None for st in live):
            since = min(now - st.down_since for st in live)
            if since > self.opts.idle_timeout:
                self._set_fatal(f"no server has answered for {since:.0f}s (--idle-timeout): "
                                + "; ".join(st.last_error for st in live))

    # ---- server health -----------------------------------------------------------------------------

    def _mark_down(self, st: ServerState, error: str) -> None:
        with st.lock:
            if st.state == "retired":
                return
            st.fails += 1
            wait = min(self.opts.backoff * 2 ** (st.fails - 1), MAX_BACKOFF)
            st.next_try = time.monotonic() + wait
            if st.state != "down":
                st.down_since = time.monotonic()
            st.state, st.last_error = "down", error
        self.progress.server_state(st.server.name, f"down, retry in {wait:.0f}s")
        self.progress.line(f"{error}; retrying server {st.server.name} in {wait:.1f}s")

    def _retire(self, st: ServerState, error: str) -> None:
        with st.lock:
            st.state, st.last_error = "retired", error
        self.progress.server_state(st.server.name, "not used")
        if len(self.states) > 1:
            self.progress.line(f"server {st.server.name} is not used any more: {error}")
        with self.cond:
            self.cond.notify_all()

    def _ready(self, st: ServerState) -> bool:
        """Is the server usable now? Probes it (and uploads the photo) when it is new or was down."""
        if st.state == "ready":
            return True
        if st.state == "retired" or time.monotonic() < st.next_try:
            return False
        with st.lock:
            if st.state == "ready":
                return True
            try:
                st.server.check()
                if not st.models_checked:
                    st.server.check_models(self.template.graph)
                    st.models_checked = True
                if self.opts.photo and st.image_name is None:
                    st.image_name = st.server.upload_image(self.opts.photo)
            except ServerFailure as exc:
                error = str(exc)
            except Rejected as exc:
                st.state, st.last_error = "retired", str(exc)
                return False
            else:
                was_down = st.state == "down"
                st.state, st.fails, st.down_since = "ready", 0, None
                self.progress.server_state(st.server.name, "idle")
                if was_down:
                    self.progress.line(f"server {st.server.name} is back")
                return True
        self._mark_down(st, error)
        return False

    # ---- the queue of scenes -----------------------------------------------------------------------

    def _take(self, st: ServerState) -> Scene | None:
        with self.cond:
            if not self.pending:
                self.cond.wait(0.2)
            others = {s.server.name for s in self.states if s.state != "retired" and s is not st}
            for i, scene in enumerate(self.pending):
                # a scene that failed here goes elsewhere while another server could take it
                if st.server.name not in scene.avoid or not (others - scene.avoid):
                    return self.pending.pop(i)
            if self.pending:
                self.cond.wait(0.2)
        return None

    def _give_back(self, scene: Scene) -> None:
        with self.cond:
            self.pending.insert(0, scene)
            self.cond.notify_all()

    def _finish(self, record: dict) -> None:
        self.manifest.append(record)
        with self.cond:
            self.outstanding -= 1
            self.cond.notify_all()

    def _retry(self, scene: Scene, st: ServerState, error: str) -> None:
        scene.attempts += 1
        scene.avoid.add(st.server.name)
        if scene.attempts > self.opts.retries:
            self.failures.append(error)
            self._finish(self._record(scene, "failed", st, error=error))
            self.progress.scene("failed", scene.id, st.server.name, error)
        else:
            self.progress.line(f"{scene.id}: {error}; trying again (attempt {scene.attempts + 1} of {self.opts.retries + 1})")
            self._give_back(scene)

    def _record(self, scene: Scene, status: str, st: ServerState, **extra) -> dict:
        return {"scene": scene.id, "status": status, "prompt": scene.prompt, "seed": scene.seed,
                "settings": self.opts.settings, "server": st.server.name, "attempts": scene.attempts + 1,
                "files": [], "metrics": {}, "filter": [], "error": None,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}

    # ---- one worker: a slot on one server ----------------------------------------------------------

    def _worker(self, st: ServerState, slot: int) -> None:
        client_id = uuid.uuid4().hex
        ws = None
        try:
            while not self.stop.is_set():
                if st.state == "retired":
                    return
                if not self._ready(st):
                    self.stop.wait(0.1)
                    continue
                scene = self._take(st)
                if scene is None:
                    continue
                try:
                    if ws is None:
                        try:
                            ws = MiniWebSocket(st.server, client_id, timeout=10)
                        except OSError:
                            ws = None  # progress by polling instead
                    self._run_scene(st, slot, scene, client_id, ws)
                except Cancelled:
                    self._give_back(scene)
                    return
                except JobFailure as exc:
                    self._count(st, "job_failures")
                    self.progress.server_state(st.server.name, "idle")
                    self._retry(scene, st, f"{st.server.name}: {exc}")
                except Rejected as exc:
                    self._give_back(scene)
                    self._retire(st, str(exc))
                    return
                except ClientError as exc:
                    self._give_back(scene)
                    self._set_fatal(str(exc))
                    return
                except OSError as exc:  # the local disk (every network error is a ServerFailure by now)
                    self._give_back(scene)
                    self._set_fatal(f"cannot write into {self.opts.out_dir}: {exc}")
                    return
                except Exception as exc:  # ServerFailure, or an answer no check foresaw: that server's fault
                    if ws is not None:
                        ws.close()
                        ws = None
                    error = str(exc) if isinstance(exc, ServerFailure) else (
                        f"{st.server.name}: internal error on its answer ({exc.__class__.__name__}: {exc}); "
                        "please report it")
                    self._count(st, "faults", error)
                    self._mark_down(st, error)
                    self._retry(scene, st, error)
        except Exception as exc:  # a bug must still end in one line, with the manifest consistent
            self._set_fatal(f"internal error in the {st.server.name} worker: {exc.__class__.__name__}: {exc}")
        finally:
            if ws is not None:
                ws.close()

    def _run_scene(self, st: ServerState, slot: int, scene: Scene, client_id: str, ws) -> None:
        started = time.monotonic()
        graph = self.template.job(scene.prompt, scene.seed, scene.id, st.image_name)
        self.progress.server_state(st.server.name, f"{scene.id} queued")
        prompt_id = st.server.queue(graph, client_id)
        with self.cond:
            self.inflight[(st.server.name, slot)] = (st.server, prompt_id)
        try:
            entry, steps = self._follow(st, scene, prompt_id, ws)
        except (ServerFailure, Cancelled):
            st.server.cancel(prompt_id)  # a stalled or abandoned job must not run on (best effort, short timeouts)
            raise
        finally:
            with self.cond:
                self.inflight.pop((st.server.name, slot), None)
        self.progress.server_state(st.server.name, f"{scene.id} downloading")
        status, folder, record = self._save(st, scene, entry)
        record["seconds"] = round(time.monotonic() - started, 3)
        self._finish(record)
        self._count(st, "done" if status == "done" else "filtered")
        self.progress.server_state(st.server.name, "idle")
        detail = f"{steps}, {record['seconds']:.1f}s" if status == "done" else "; ".join(record["filter"])
        self.progress.scene(status, scene.id, st.server.name, detail)
        if folder:
            self.on_done(folder)

    def _count(self, st: ServerState, what: str, fault: str = "") -> None:
        with self.counts:
            setattr(st, what, getattr(st, what) + 1)
            if fault:
                st.last_fault = fault

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Cancelled()

    def _follow(self, st: ServerState, scene: Scene, prompt_id: str, ws):
        """Wait for the job: websocket messages (or polling without one); its /history entry."""
        idle = self.opts.idle_timeout
        last = time.monotonic()
        steps = "no step reported"
        checked = 0.0
        if ws is not None:
            while True:
                self._check_stop()
                if time.monotonic() - last > idle:
                    raise ServerFailure(f"{st.server.name}: no word about the job for {idle:g}s (--idle-timeout)")
                try:
                    msg = ws.recv(0.25)
                except (OSError, ValueError) as exc:
                    raise ServerFailure(f"{st.server.name}: the websocket closed while the job ran ({exc}); "
                                        "the server stopped?") from None
                if msg is None:
                    if time.monotonic() - last > QUEUE_CHECK and time.monotonic() - checked > QUEUE_CHECK:
                        checked = time.monotonic()  # waiting behind other users' jobs is not silence
                        if st.server.queue_state(prompt_id) == "pending":
                            last = checked
                    continue
                last = time.monotonic()
                data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = msg.get("type")
                if kind == "progress":
                    value, top = data.get("value"), data.get("max")
                    steps = f"step {value}/{top}" if isinstance(value, int) and isinstance(top, int) else "steps"
                    self.progress.server_state(st.server.name, f"{scene.id} {steps}")
                elif kind == "execution_error":
                    raise JobFailure(execution_error_text(data))
                elif kind == "execution_interrupted":
                    raise JobFailure("the job was interrupted in ComfyUI")
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                                     and data.get("prompt_id") == prompt_id):
                    break
            last = time.monotonic()
        missing_since = None
        while True:
            self._check_stop()
            entry = st.server.history(prompt_id)
            if entry is not None:
                return entry, steps
            if time.monotonic() - last > idle:
                raise ServerFailure(f"{st.server.name}: the job did not reach /history within {idle:g}s (--idle-timeout)")
            if st.server.queue_state(prompt_id) is not None:
                missing_since = None
            elif missing_since is None:
                missing_since = time.monotonic()
            elif time.monotonic() - missing_since > min(VANISHED_GRACE, idle / 2):
                raise ServerFailure(f"{st.server.name}: the job vanished from the server's queue without a "
                                    "result (the server restarted?)")
            self.stop.wait(0.2)

    def _save(self, st: ServerState, scene: Scene, entry: dict):
        """Download the scene folder LumiX Save Maps wrote; filter on its metrics; commit it."""
        saved = (entry.get("outputs") or {}).get(self.template.save)
        images = saved.get("images") if isinstance(saved, dict) else None
        images = images if isinstance(images, list) else []
        subfolders = {img.get("subfolder") for img in images if isinstance(img, dict) and isinstance(img.get("subfolder"), str)}
        if len(subfolders) != 1:
            raise JobFailure(f"the job finished but LumiX Save Maps reported {len(subfolders)} scene folders "
                             "(expected one); check the workflow's Save Maps node")
        subfolder = subfolders.pop()
        staged = None
        try:
            staged = output.staging_folder(self.opts.out_dir, scene.id)
            sidecar_ref = {"filename": output.SIDECAR, "subfolder": subfolder, "type": "output"}
            output.fetch_file(st.server.download, sidecar_ref, staged, output.SIDECAR, st.server.name,
                              output.MAX_SIDECAR_BYTES)
            sidecar = output.scene_sidecar(staged) or {}
            files = output.check_file_list(sidecar.get("files"), st.server.name)
            for name in files:
                self._check_stop()
                output.fetch_file(st.server.download, {"filename": name, "subfolder": subfolder, "type": "output"},
                                  staged, name, st.server.name,
                                  output.MAX_SIDECAR_BYTES if name.endswith(".json") else self.opts.max_file_bytes)
            metrics = sidecar.get("metrics") if isinstance(sidecar.get("metrics"), dict) else {}
            reasons = judge(metrics, self.opts.limits)
            generation = sidecar.get("generation") if isinstance(sidecar.get("generation"), dict) else {}
            common = dict(files=sorted(files + [output.SIDECAR]), metrics=metrics, filter=reasons,
                          negative_prompt=generation.get("negative_prompt"))
            if nesting(common) > MAX_NESTING:  # before the folder takes its name: an unwritable record strands it
                raise ServerFailure(f"{st.server.name}: the scene's lumix.json nests its values over "
                                    f"{MAX_NESTING} levels deep")
            if reasons:
                shutil.rmtree(staged, ignore_errors=True)
                return "filtered", None, self._record(scene, "filtered", st, **common)
            folder = output.commit(self.opts.out_dir, scene.id, staged, self.opts.overwrite)
            return "done", folder, self._record(scene, "done", st, **common)
        except OSError as exc:
            if staged:
                shutil.rmtree(staged, ignore_errors=True)
            raise ClientError(f"cannot write into {self.opts.out_dir}: {exc}") from None
        except BaseException:
            if staged:
                shutil.rmtree(staged, ignore_errors=True)
            raise

    def summary(self) -> list[str]:
        """One line per server: what it finished and what went wrong there."""
        lines = []
        for st in self.states:
            parts = [f"{st.done} done"] + [f"{n} {what}" for n, what in (
                (st.filtered, "filtered"), (st.job_failures, "failed jobs"), (st.faults, "server faults")) if n]
            text = f"  {st.server.name}: " + ", ".join(parts)
            if st.faults:
                text += f" (last: {clean(st.last_fault, 160)})"
            if st.state == "retired":
                text += f"; not used: {clean(st.last_error, 160)}"
            lines.append(text)
        return lines

    def worth_a_summary(self) -> bool:
        return len(self.states) > 1 or any(st.faults or st.job_failures for st in self.states)


def nesting(value) -> int:
    """How deep lists and dicts nest in a JSON value (iteratively: the value may be deeper than the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def start_probe(servers: list[Server]) -> list[tuple[Server, str | None]]:
    """Ask every server at once whether it is up: (server, None or the reason it is not)."""
    results: dict[int, str | None] = {}

    def probe(i, server):
        try:
            server.check()
            results[i] = None
        except ServerFailure as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=probe, args=(i, s), daemon=True) for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [(s, results.get(i, "no answer")) for i, s in enumerate(servers)]

