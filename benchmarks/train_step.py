"""One LumiX training step on ComfyUI's FLUX: time and peak memory as ratios against a plain
forward+backward of the unpatched model, and against a plain rank-matched LoRA training step,
both measured in the same run.

Cases (each a full optimisation step of the LumiX trainer unless said otherwise):
  plain            FLUX without LumiX, forward + backward to the input latents (the baseline). ComfyUI's
                   own single block adds in place, which autograd cannot differentiate, so the blocks
                   run through this project's block functions with LumiX off (bit-identical to
                   ComfyUI's forward, tests/test_blocks.py) and no gradient checkpointing
  lumix_ckpt       LumiX adapters + query broadcast, gradient checkpointing per block, cached latents/text
  lumix_nockpt     the same without gradient checkpointing
  lora_ckpt        a plain LoRA of the same rank on the same projections (K/V and the attention output /
                   linear2 of every block: per projection one A [d_in, R] and B [R, d_out] for each of
                   the five maps, nothing mixing them), no query broadcast, trained through the same ComfyUI FLUX forward + backward
                   with the same per-block checkpointing and optimiser: the target is lumix_ckpt at most
                   1.3x its time (column time/lora)
  lumix_ckpt_vae   with checkpointing, but the five maps VAE-encoded every step (no latent cache;
                   ComfyUI's FLUX VAE architecture with random weights; the text encoders are NOT
                   included: T5-XXL does not fit a CPU benchmark, so the uncached cost is a lower bound)

Every measurement runs in a fresh child process (so peak memory is its own), cases interleaved,
medians of --repeats. CPU peak memory: the resident set's high-water mark (VmHWM) reset just
before the step; CUDA: torch.cuda.max_memory_allocated.

--prefetch-io: the data side instead. The whole Trainer (its `prefetch` setting 0 against 1) trains a
narrow FLUX (--io-hidden, 1 double + 1 single block) on an on-disk latent cache of realistic size
(per scene [5, 16, 128, 128] float32 latents, i.e. 1024-pixel maps, randomly cropped to --io-size, and a
512 x 4096 T5 context: 13.6 MB), so that reading the cache is a visible share of a step. Cold: the cache files are evicted from the
page cache (posix_fadvise DONTNEED) before each measured run; warm: they are read once first. Runs
interleaved (cold/warm x prefetch 0/1), each reading --io-steps different scenes; per run the mean
time of steps 2.. (step 1 reads with nothing to overlap); medians over --repeats; ratio prefetch/none.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/train_step.py            # CPU: a FLUX-width sliver
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/train_step.py --full     # GPU: 19+38 blocks, 512x512
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/train_step.py --prefetch-io --repeats 5
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("plain", "lumix_ckpt", "lora_ckpt", "lumix_nockpt", "lumix_ckpt_vae")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lumix_comfy_models import flux1_model_config  # noqa: E402  (FLUX.1 config for any ComfyUI version)


def _comfy(path):
    sys.path.insert(0, path)
    import torch
    from comfy.cli_args import args
    if not torch.cuda.is_available():
        args.cpu = True


def _extension():
    spec = importlib.util.spec_from_file_location("lumix_ext", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lumix_ext"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("lumix_ext.nodes.training_model")


def _kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def build_flux(o, torch):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    head = o.hidden // o.heads
    cfg = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
           "hidden_size": o.hidden, "mlp_ratio": 4.0, "num_heads": o.heads, "depth": o.double,
           "depth_single_blocks": o.single, "axes_dim": [head // 8, 7 * head // 16, 7 * head // 16], "theta": 10000,
           "qkv_bias": True, "guidance_embed": True, "patch_size": 2}
    config = flux1_model_config(cfg)
    dtype = getattr(torch, o.dtype)
    config.set_inference_dtype(dtype, None)
    device = mm.get_torch_device()
    with torch.device(device):
        base = config.get_model({}, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in base.diffusion_model.parameters():
            p.copy_((torch.randn(p.shape, generator=g, device=device) * 0.02).to(p.dtype))
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def build_vae(torch, device):
    from comfy.ldm.models.autoencoder import AutoencodingEngine
    dd = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
          "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                             encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": dd},
                             decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": dd})
    return vae.to(device).eval().requires_grad_(False)


def plain_lora_class(torch):
    class PlainLoRA(torch.nn.Module):
        """Ordinary LoRA on one projection, one A [d_in, R] / B [R, d_out] pair per map (the paper's
        "separate" LoRA: nothing mixes the maps): x_i A_i B_i * alpha / R, B = 0 at the start as LoRA
        does. Called in the block's place of a Tensor LoRA (same signature)."""

        def __init__(self, d_in, d_out, rank, num_maps, device, generator):
            super().__init__()
            self.num_maps, self.rank = num_maps, rank
            self.A = torch.nn.Parameter((torch.randn(num_maps, d_in, rank, generator=generator) / d_in ** 0.5).to(device))
            self.B = torch.nn.Parameter(torch.zeros(num_maps, rank, d_out, device=device))

        def forward(self, x, strength=None):
            s = 1.0 / self.rank * (1.0 if strength is None else strength)
            batch, tokens, _ = x.shape
            grouped = x.view(batch // self.num_maps, self.num_maps, tokens, -1)  # map index fastest
            out = (grouped @ self.A.to(x.dtype)) @ (self.B * s).to(x.dtype)
            return out.view(batch, tokens, -1)

    return PlainLoRA


def plain_lora_model(tm, model, o, torch):
    """The same patched FLUX as training_model() builds, with plain LoRAs instead of Tensor LoRAs."""
    PlainLoRA = plain_lora_class(torch)
    dm = model.model.diffusion_model
    g = torch.Generator().manual_seed(3)
    hidden, device = dm.hidden_size, model.load_device
    loras = {(kind, i): {"kv_tt_lora": PlainLoRA(hidden, 2 * hidden, 8, 5, device, g),
                         "proj_tt_lora": PlainLoRA(hidden, hidden, 8, 5, device, g)}
             for kind, count in (("double_blocks", o.double), ("single_blocks", o.single)) for i in range(count)}
    params = [p for block in loras.values() for m in block.values() for p in m.parameters()]
    patched = tm.apply_lumix(model, adapters=loras, query_broadcast=False, maps_per_scene=5)
    replaced = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    for (kind, i) in loras:
        name = {"double_blocks": "double_block", "single_blocks": "single_block"}[kind]
        patched.set_model_patch_replace(tm.CheckpointedBlock(replaced[(name, i)]), "dit", name, i)
    return patched, params


def child(o):
    _comfy(o.comfyui)
    import torch
    tm = _extension()
    from lumix_ext.lumix_core.training import (LumiXAdapters, TrainConfig, TrainingExample, build_optimizer,
                                               flow_matching_loss, make_flow_batch)
    model = build_flux(o, torch)
    device = model.load_device
    dm = model.model.diffusion_model
    dm.requires_grad_(False)
    lat = o.size // 8
    g = torch.Generator().manual_seed(1)
    example = TrainingExample(torch.randn(5, 16, lat, lat, generator=g), torch.randn(o.text, 4096, generator=g),
                              torch.randn(768, generator=g))
    config = TrainConfig(resolution=o.size, rank=8)
    batch = make_flow_batch([example], [torch.Generator().manual_seed(2)], config, device, getattr(torch, o.dtype))
    cuda = device.type == "cuda"

    if o.case == "plain":
        x = batch.x_t.clone().requires_grad_(True)
        plain = tm.make_denoiser(tm.apply_lumix(model))  # query broadcast off, no adapters

        def step():
            (plain(x, batch.t, batch.context, batch.pooled, batch.guidance) - batch.target).pow(2).mean().backward()
    else:
        if o.case == "lora_ckpt":
            patched, params = plain_lora_model(tm, model, o, torch)
        else:
            adapters = LumiXAdapters(dm.hidden_size, o.double, o.single, rank=8, device=device)
            patched = tm.training_model(model, adapters, o.case != "lumix_nockpt")
            params = list(adapters.parameters())
        denoise = tm.make_denoiser(patched)
        opt = build_optimizer(params, config)
        vae = build_vae(torch, device) if o.case == "lumix_ckpt_vae" else None
        pixels = torch.rand(5, 3, o.size, o.size, device=device)

        def step():
            if vae is not None:
                with torch.no_grad():
                    vae.encode(pixels * 2 - 1)
            flow_matching_loss(denoise, batch, 5).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocator, lazy init)
    if o.profile:  # where one step's time goes, by operator (self time)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                        row_limit=25))
        return
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base_mem = _kib("VmRSS") * 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    step()
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = (torch.cuda.max_memory_allocated() if cuda else _kib("VmHWM") * 1024) - base_mem
    print(json.dumps({"case": o.case, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": peak}))


def _io_cache(folder, scenes, resolution, torch):
    """An EncodedDataset of `scenes` realistic-size cache files (written once, synced to disk)."""
    from safetensors.torch import save_file
    from lumix_ext.lumix_core.training import CachedScene, EncodedDataset
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    cached, paths = [], []
    for i in range(scenes):
        lat, txt = os.path.join(folder, f"latents_{i}.safetensors"), os.path.join(folder, f"text_{i}.safetensors")
        save_file({"latents": torch.randn(5, 16, 128, 128, generator=g)}, lat)
        save_file({"context": torch.randn(512, 4096, generator=g), "pooled": torch.randn(768, generator=g)}, txt)
        cached.append(CachedScene(f"scene{i}", lat, txt, (128, 128)))
        paths += [lat, txt]
    for path in paths:  # dirty pages cannot be evicted: the bytes reach the disk first
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    data = EncodedDataset(cached, cached[0].text, resolution, False, 5, cache_dir=folder, cache_label="bench", channels=16,
                          text_dims={"context": 4096, "pooled": 768})
    return data, paths


def _evict(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_all(paths) -> float:
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    return time.perf_counter() - start


def prefetch_io(o):
    """Step time of the Trainer with prefetch 0 and 1, from a cold and a warm page cache, in one run."""
    import shutil
    import tempfile
    _comfy(o.comfyui)
    import torch
    tm = _extension()
    from lumix_ext.lumix_core.training import LumiXAdapters, TrainConfig, Trainer
    o.hidden, o.heads, o.double, o.single = o.io_hidden, max(1, o.io_hidden // 64), 1, 1
    o.dtype = "float32"
    model = build_flux(o, torch)
    device = model.load_device
    dm = model.model.diffusion_model
    dm.requires_grad_(False)
    folder = tempfile.mkdtemp(prefix="lumix_prefetch_bench_", dir=o.io_dir)
    try:
        data, paths = _io_cache(folder, o.io_scenes, o.io_size, torch)
        size = sum(os.path.getsize(p) for p in paths)
        _evict(paths)
        cold_read = _read_all(paths)
        warm_read = _read_all(paths)
        print(f"cache: {o.io_scenes} scenes, {size / 2**20:.0f} MiB; reading it all: cold {size / 2**20 / cold_read:.0f} "
              f"MiB/s, warm {size / 2**20 / warm_read:.0f} MiB/s"
              + (" (cold as fast as warm: the eviction had no effect, e.g. tmpfs; pass --io-dir on a disk)"
                 if cold_read < 1.4 * warm_read else ""))
        data = data.with_latent_transform(model.model.process_latent_in)
        # what one step's data costs on the main thread (read, check, crop): the most prefetch can hide
        probe = TrainConfig(batch_size=1, resolution=o.io_size)
        load = {"cold": [], "warm": []}
        for i in range(o.io_scenes):
            for cache in ("cold", "warm"):
                if cache == "cold":
                    _evict(paths)
                start = time.perf_counter()
                data.example(i, torch.Generator().manual_seed(i), probe)
                load[cache].append(time.perf_counter() - start)
        print(f"one scene's data on the main thread: cold {statistics.median(load['cold']) * 1e3:.0f} ms, "
              f"warm {statistics.median(load['warm']) * 1e3:.0f} ms (medians of {o.io_scenes})")
        results = {(cache, p): [] for cache in ("cold", "warm") for p in (0, 1)}
        for r in range(o.repeats):
            for cache, p in (("cold", 0), ("cold", 1), ("warm", 0), ("warm", 1)) if r % 2 == 0 else \
                    (("warm", 1), ("warm", 0), ("cold", 1), ("cold", 0)):  # interleaved, order alternating
                config = TrainConfig(steps=o.io_steps, batch_size=1, resolution=o.io_size, rank=8, save_every=0,
                                     seed=r, prefetch=p, gradient_checkpointing=True)
                adapters = LumiXAdapters(dm.hidden_size, 1, 1, rank=8, device=device)
                trainer = Trainer(tm.make_denoiser(tm.training_model(model, adapters, True)), adapters, data, config,
                                  device=device)
                if cache == "cold":
                    _evict(paths)
                else:
                    _read_all(paths)
                stamps = []
                trainer.run(on_step=lambda m: stamps.append(time.perf_counter()))
                results[(cache, p)].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
        print(f"prefetch-io: width {o.hidden}, 1 double + 1 single block, {o.io_size}x{o.io_size} crops, {device}, torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} CPUs; {o.io_steps} steps a run (mean of steps 2..), "
              f"medians of {o.repeats}")
        print(f"{'cache':6s} {'prefetch 0 s/step':>18s} {'prefetch 1 s/step':>18s} {'ratio 1/0':>10s}")
        for cache in ("cold", "warm"):
            t0 = statistics.median(results[(cache, 0)])
            t1 = statistics.median(results[(cache, 1)])
            print(f"{cache:6s} {t0:18.3f} {t1:18.3f} {t1 / t0:10.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (or COMFYUI_PATH)")
    p.add_argument("--full", action="store_true", help="FLUX.1-dev size: 19 double + 38 single blocks, bf16, 512x512")
    p.add_argument("--hidden", type=int, default=3072)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--double", type=int, default=1)
    p.add_argument("--single", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (5 maps, one scene)")
    p.add_argument("--text", type=int, default=32, help="text tokens")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--profile", metavar="CASE", help="print a torch.profiler table of one step of CASE instead")
    p.add_argument("--prefetch-io", action="store_true", help="data loading: the Trainer's prefetch 0 vs 1, cold/warm")
    p.add_argument("--io-hidden", type=int, default=64, help="--prefetch-io: FLUX width (64 per head)")
    p.add_argument("--io-size", type=int, default=256, help="--prefetch-io: crop side in pixels (files: 1024)")
    p.add_argument("--io-scenes", type=int, default=16, help="--prefetch-io: scenes in the on-disk cache")
    p.add_argument("--io-steps", type=int, default=8, help="--prefetch-io: steps a run (at most --io-scenes)")
    p.add_argument("--io-dir", default=None, help="--prefetch-io: where the cache is written (a disk, not tmpfs)")
    o = p.parse_args()
    if not o.comfyui:
        sys.exit("set COMFYUI_PATH (or --comfyui) to a ComfyUI checkout: the benchmark trains ComfyUI's FLUX")
    if o.prefetch_io:
        if not 2 <= o.io_steps <= o.io_scenes:
            sys.exit("--io-steps must be at least 2 and at most --io-scenes (each step reads a scene not read before)")
        return prefetch_io(o)
    if o.full:
        o.double, o.single, o.size, o.text, o.dtype = 19, 38, 512, 512, "bfloat16"
    if o.profile:
        o.case = o.profile
    if o.case:
        return child(o)
    cases = o.cases.split(",")
    results = {c: [] for c in cases}
    argv = [a for a in sys.argv[1:] if not a.startswith("--cases")]
    for r in range(o.repeats):
        for case in cases:  # interleaved A/B/C/D, then again
            # a fixed mmap threshold: glibc returns every large block at free, so VmHWM is the true peak
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            proc = subprocess.run([sys.executable, __file__, *argv, "--case", case], capture_output=True, text=True,
                                  env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{case}: failed ({tail})")
                continue
            results[case].append(json.loads(lines[-1]))
    print(f"width {o.hidden}, {o.double} double + {o.single} single blocks, {o.size}x{o.size} x 5 maps, "
          f"{o.text} text tokens, {o.dtype}, medians of {o.repeats}")
    if not results.get("plain"):
        sys.exit("the baseline failed; no ratios")
    t0 = statistics.median(r["seconds"] for r in results["plain"])
    m0 = statistics.median(r["peak_bytes"] for r in results["plain"])
    lora = results.get("lora_ckpt")
    tl = statistics.median(r["seconds"] for r in lora) if lora else None
    cl = statistics.median(r["cpu_seconds"] for r in lora) if lora else None
    ml = statistics.median(r["peak_bytes"] for r in lora) if lora else None
    # CPU seconds of the process (all its threads): on a shared machine far less disturbed by other
    # processes than wall time, which they stretch by taking the cores
    print(f"{'case':16s} {'seconds':>9s} {'time/plain':>10s} {'cpu s':>9s} {'peak MiB':>9s} {'mem/plain':>9s}"
          + (f" {'time/lora':>9s} {'cpu/lora':>9s} {'mem/lora':>9s}" if lora else ""))
    for case in cases:
        if not results[case]:
            print(f"{case:16s} failed")
            continue
        t = statistics.median(r["seconds"] for r in results[case])
        c = statistics.median(r["cpu_seconds"] for r in results[case])
        m = statistics.median(r["peak_bytes"] for r in results[case])
        print(f"{case:16s} {t:9.3f} {t / t0:10.2f} {c:9.3f} {m / 2**20:9.1f} {m / max(m0, 1):9.2f}"
              + (f" {t / tl:9.2f} {c / cl:9.2f} {m / max(ml, 1):9.2f}" if lora else ""))


if __name__ == "__main__":
    main()
