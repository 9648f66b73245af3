"""Command line of scripts/lumix_client.py: options, planning the scenes, resuming, exit codes."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from . import output
from .batch import Batch, Options, Scene, start_probe
from .comfy_api import DEFAULT_MAX_FILE_MB, Server, clean, normalise_address
from .errors import ClientError
from .filters import THRESHOLDS
from .manifest import RUN_RECORD, Manifest, differences, read_run_record, write_atomic
from .progress import Progress
from .workflow import PHOTO_WORKFLOW, TEXT_WORKFLOW, Template, load_workflow, shipped_workflow

EXIT_FAILED_SCENES, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130
USAGE = """Make LumiX scenes (albedo, irradiance, color, depth, normal) on one or more running ComfyUI servers.

    python scripts/lumix_client.py --prompt "a cozy living room" --out lumix_out
    python scripts/lumix_client.py --prompts prompts.txt --server gpu0:8188 --server gpu1:8188 --out dataset
    python scripts/lumix_client.py --photo room.jpg --prompt "a living room" --size-from-photo --out lumix_out

Each scene lands in <out>/<scene id>/ (the maps, 16-bit depth/normal, lumix.json); <out>/manifest.jsonl
records every finished scene and <out>/lumix_run.json the workflow and settings. Running the same
command again skips finished scenes and redoes failed ones. Exit status: 0 all done, 1 some scenes
failed (re-run to retry them), 2 an error (one line on stderr), 130 interrupted (jobs cancelled)."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="lumix_client.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to make")
    what.add_argument("--prompt", help="the scene to generate (with --photo: a description of the photo)")
    what.add_argument("--prompts", help="a UTF-8 text file, one prompt per line (blank lines and # comments skipped)")
    what.add_argument("--photo", help="decompose this photo into albedo, irradiance, depth and normal")
    what.add_argument("--scenes-per-prompt", type=int, default=1, metavar="K", help="scenes (seeds) per prompt (default 1)")
    what.add_argument("--seed", type=int, default=42, help="first seed; scene s of prompt i uses seed + i*K + s (default 42)")
    gen = p.add_argument_group("generation settings (default: the workflow's)")
    gen.add_argument("--negative-prompt", help="text of the negative prompt")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--cfg", type=float, help="true CFG scale (1.0 = no negative pass)")
    gen.add_argument("--guidance", type=float, help="FLUX guidance embed (FluxGuidance)")
    gen.add_argument("--sampler", help="ComfyUI sampler name, e.g. euler")
    gen.add_argument("--scheduler", help="ComfyUI scheduler name, e.g. simple")
    gen.add_argument("--lora-strength", type=float, help="LumiX Tensor LoRA strength")
    gen.add_argument("--width", type=int, help="multiple of 16")
    gen.add_argument("--height", type=int, help="multiple of 16")
    gen.add_argument("--size-from-photo", action="store_true",
                     help="with --photo: the photo's aspect ratio at about width x height pixels (default 512x512)")
    gen.add_argument("--workflow", help="an API-format workflow instead of the shipped one")
    flt = p.add_argument_group("consistency filter (metrics of LumiX Save Maps; a scene failing one is dropped and recorded)")
    for name, (_, kind, what_text) in THRESHOLDS.items():
        flt.add_argument("--" + name.replace("_", "-"), type=float, metavar="X",
                         help=f"{'minimum' if kind == 'min' else 'maximum'} {what_text}")
    run = p.add_argument_group("servers and run")
    run.add_argument("--server", action="append", default=[], help="ComfyUI address host:port; repeat for several "
                     "servers (default 127.0.0.1:8188)")
    run.add_argument("--servers", help="a file of server addresses, one per line")
    run.add_argument("--depth", type=int, default=1, help="jobs in flight per server (default 1)")
    run.add_argument("--out", default="lumix_out", help="output folder (default lumix_out)")
    run.add_argument("--overwrite", action="store_true", help="start the output folder's run afresh, replacing its scenes")
    run.add_argument("--retries", type=int, default=3, help="extra attempts per scene (default 3)")
    run.add_argument("--backoff", type=float, default=2.0, help="first wait before retrying a failed server, doubling (s)")
    run.add_argument("--idle-timeout", type=float, default=600.0,
                     help="seconds without word from a server about a job (default 600); each HTTP answer (a "
                          "download too) gets min(this, 60) seconds plus one second per 64 KiB it delivers")
    run.add_argument("--timeout", type=float, help="stop the whole batch after this many seconds (resumable)")
    run.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB, metavar="MB",
                     help=f"refuse a downloaded file larger than this many MiB (default {DEFAULT_MAX_FILE_MB}: "
                          "every map of a 4096x4096 scene fits)")
    args = p.parse_args(argv)
    if not args.prompt and not args.prompts and not args.photo:
        p.error("give --prompt TEXT, --prompts FILE or --photo IMAGE")
    if args.prompt and args.prompts:
        p.error("give --prompt or --prompts, not both")
    if args.photo and args.prompts:
        p.error("--photo takes one --prompt, not --prompts")
    if args.size_from_photo and not args.photo:
        p.error("--size-from-photo needs --photo")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and (value % 16 or value <= 0):
            p.error(f"--{name} must be a positive multiple of 16 (got {value})")
    for name, low in (("scenes_per_prompt", 1), ("depth", 1), ("retries", 0), ("steps", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low} (got {value})")
    for name in ("backoff", "idle_timeout", "timeout", "max_file_mb"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            p.error(f"--{name.replace('_', '-')} must be positive (got {value})")
    if not args.max_file_mb < 1 << 40:
        p.error(f"--max-file-mb must be a number of MiB below 2^40 (got {args.max_file_mb})")
    return args


def read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        raise ClientError(f"no {what} file at {path}") from None
    except UnicodeDecodeError as exc:
        raise ClientError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ClientError(f"cannot read {what} file {path}: {exc.strerror}") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ClientError(f"{path} holds no {what}")
    return lines


def server_list(args) -> list[Server]:
    addresses = list(args.server)
    if args.servers:
        addresses += read_lines(args.servers, "server addresses")
    addresses = addresses or ["127.0.0.1:8188"]
    servers, seen = [], set()
    for address in addresses:
        try:
            base = normalise_address(address)
        except ValueError as exc:
            raise ClientError(str(exc)) from None
        if base not in seen:
            seen.add(base)
            servers.append(Server(base, timeout=min(60.0, args.idle_timeout)))
    return servers


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan(args):
    """(template, settings, scenes) of this command."""
    prompts = read_lines(args.prompts, "prompts") if args.prompts else [args.prompt or ""]
    settings = {k: getattr(args, k) for k in ("negative_prompt", "steps", "cfg", "guidance", "sampler", "scheduler",
                                              "lora_strength", "width", "height")}
    photo = None
    if args.photo:
        if not os.path.isfile(args.photo):
            raise ClientError(f"no photo at {args.photo}")
        size = output.image_size(args.photo)
        photo = {"file": os.path.basename(args.photo), "sha256": file_sha256(args.photo), "size": list(size)}
        if args.size_from_photo:
            budget = (args.width or 512, args.height or 512)
            settings["width"], settings["height"] = output.size_from_photo(size, budget[0] * budget[1])
            settings["area"] = budget
        elif args.width or args.height:
            settings["explicit_size"] = True
    workflow_path = args.workflow or shipped_workflow(PHOTO_WORKFLOW if args.photo else TEXT_WORKFLOW)
    template = Template(load_workflow(workflow_path), settings, photo=bool(args.photo))
    k = args.scenes_per_prompt
    scenes = [Scene(f"{i:05d}_s{s}_seed{args.seed + i * k + s}", prompt, args.seed + i * k + s)
              for i, prompt in enumerate(prompts) for s in range(k)]
    record = {"format": "lumix-batch-run", "format_version": 1,
              "settings": {"seed": args.seed, "scenes_per_prompt": k, "photo": photo, **settings,
                           "resolved": template.recorded_settings(),
                           "filter": {n: getattr(args, n) for n in THRESHOLDS}},
              "workflow_file": os.path.abspath(workflow_path), "workflow": template.graph}
    return template, record, scenes


def made_by_this_run(folder: str, sidecar: dict | None, scene: Scene, record: dict) -> bool:
    """Does a scene folder without a manifest line hold exactly this scene, whole? (A client killed
    between moving the folder into place and writing its manifest line leaves one.)"""
    generation = (sidecar or {}).get("generation")
    generation = generation if isinstance(generation, dict) else {}
    files = (sidecar or {}).get("files")
    if (generation.get("prompt"), generation.get("seed")) != (scene.prompt, scene.seed):
        return False
    sampler = record["settings"]["resolved"]["sampler"]
    if any(key in generation and generation[key] != value for key, value in sampler.items()):
        return False
    return (isinstance(files, list) and bool(files)
            and all(isinstance(f, str) and os.path.isfile(os.path.join(folder, f)) for f in files))


def resume_state(args, record: dict, scenes: list[Scene], manifest: Manifest) -> list[Scene]:
    """The scenes still to make; refuses (ClientError) an --out holding another run or foreign folders."""
    out = args.out
    old = read_run_record(out)
    if args.overwrite:
        if os.path.exists(manifest.path):
            os.replace(manifest.path, manifest.path + ".replaced")
        manifest.records.clear()
        return list(scenes)
    records = manifest.load()
    for note in manifest.notes:
        print(f"lumix_client: note: {note}", file=sys.stderr)
    if old is not None:
        changed = differences({"settings": old.get("settings"), "workflow": old.get("workflow")},
                              {"settings": record["settings"], "workflow": record["workflow"]})
        if changed:
            raise ClientError(f"{out} holds a run made with other settings ({'; '.join(changed[:3])}); use another "
                              "--out, or --overwrite to replace it")
    todo = []
    for scene in scenes:
        rec = records.get(scene.id)
        folder = os.path.join(out, scene.id)
        if rec is not None and (rec.get("prompt"), rec.get("seed")) != (scene.prompt, scene.seed):
            raise ClientError(f"{folder} was made from prompt {rec.get('prompt')!r} seed {rec.get('seed')}, this run "
                              f"asks {scene.prompt!r} seed {scene.seed}; use another --out, or --overwrite")
        if rec is not None and rec.get("status") == "filtered":
            continue
        if rec is not None and rec.get("status") == "done" and os.path.isdir(folder):
            continue
        if os.path.lexists(folder):
            sidecar = output.scene_sidecar(folder) if os.path.isdir(folder) else None
            if old is None or not made_by_this_run(folder, sidecar, scene, record):
                raise ClientError(f"{folder} already exists and is not a finished scene of this run; nothing is "
                                  "overwritten: use another --out, or --overwrite")
            generation = sidecar.get("generation") if isinstance(sidecar.get("generation"), dict) else {}
            files = sorted(os.listdir(folder))
            metrics = sidecar.get("metrics") if isinstance(sidecar.get("metrics"), dict) else {}
            manifest.append({"scene": scene.id, "status": "done", "prompt": scene.prompt, "seed": scene.seed,
                             "settings": record["settings"], "server": "(adopted)", "attempts": 1, "files": files,
                             "metrics": metrics, "filter": [], "error": None,
                             "negative_prompt": generation.get("negative_prompt"), "finished_at": None})
            continue
        todo.append(scene)
    return todo


def run(args) -> int:
    template, record, scenes = plan(args)
    servers = server_list(args)
    lock = output.prepare_out(args.out)  # noqa: F841  (held until the process ends)
    manifest = Manifest(args.out)
    todo = resume_state(args, record, scenes, manifest)
    write_atomic(os.path.join(args.out, RUN_RECORD), json.dumps(record, indent=2, sort_keys=True))
    order = [s.id for s in scenes]
    if not todo:
        manifest.compact(order)
        os.rmdir(os.path.join(args.out, output.STAGING))
        print(f"lumix_client: all {len(scenes)} scenes of {args.out} are already finished", file=sys.stderr)
        return 0
    probes = start_probe(servers)
    if all(error for _, error in probes):
        if len(servers) == 1:
            s = servers[0]
            raise ClientError(f"{probes[0][1]}. Start it in your ComfyUI folder with: python main.py --listen {s.host} "
                              f"--port {s.port}")
        raise ClientError("no ComfyUI server answered: " + "; ".join(error for _, error in probes))
    progress = Progress(total=len(scenes), already=len(scenes) - len(todo))
    for s in servers:
        progress.server_state(s.name, "starting")
    if len(todo) < len(scenes):
        progress.line(f"resuming {args.out}: {len(scenes) - len(todo)} of {len(scenes)} scenes already finished")
    opts = Options(out_dir=args.out, overwrite=args.overwrite, depth=args.depth, retries=args.retries,
                   backoff=args.backoff, idle_timeout=args.idle_timeout, timeout=args.timeout,
                   limits={n: getattr(args, n) for n in THRESHOLDS}, photo=args.photo, settings=record["settings"],
                   max_file_bytes=int(args.max_file_mb * (1 << 20)))
    batch = Batch(template, servers, todo, manifest, progress, opts, on_done=progress.result)
    try:
        batch.run()
    finally:
        if batch.worth_a_summary():
            progress.line("scenes per server:")
            for line in batch.summary():
                progress.line(line)
        progress.close()
        manifest.compact(order)
        try:
            os.rmdir(os.path.join(args.out, output.STAGING))  # only when empty: nothing half-made is left
        except OSError:
            pass
    if batch.failures:
        failed = sum(1 for r in manifest.records.values() if r.get("status") == "failed")
        raise SceneFailures(f"{failed} of {len(scenes)} scenes failed (last: {batch.failures[-1]}); run the same "
                            "command again to retry them")
    return 0


class SceneFailures(Exception):
    pass


def one_line(text: str) -> str:
    return clean(text, 2000)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SceneFailures as exc:
        print(f"lumix_client: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED_SCENES
    except ClientError as exc:
        print(f"lumix_client: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\nlumix_client: interrupted; the in-flight jobs were cancelled on their servers and {args.out}/"
              "manifest.jsonl holds every finished scene: run the same command again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
