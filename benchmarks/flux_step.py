"""Seconds per FLUX step, vanilla vs LumiX-patched, inside ComfyUI, with random weights.

One step is one evaluation of the FLUX transformer (what a sampler step costs at cfg 1; true CFG
doubles the batch: batch 10 is one scene with its negative, or two scenes). Both models share the
same base weights; the LumiX one carries random rank-8 adapters on every block (5 maps) and query
broadcast, installed the way the loader does it (block patches plus the adapters' ModelPatcher,
loaded by ComfyUI's memory manager).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/flux_step.py

* GPU (default when CUDA is present): full FLUX.1-dev (19 double + 38 single blocks, width 3072),
  512x512 (1024 image tokens), 512 T5 tokens, bf16 and fp8 weights (fp8 storage with bf16
  compute, plus ComfyUI's fp8 matmuls where the card supports them); adapters in bf16.
* CPU (otherwise): FLUX width (3072, 24 heads) with a few blocks (default 1 double + 1 single) and a
  small image, float32: the 2-core machines this project runs on cannot hold more in a short run.

A/B runs are interleaved (the order alternates every repeat) and the medians are compared: the
printed ratio is LumiX / vanilla for the same batch. Time: wall-clock with CUDA synchronisation on
a GPU, process CPU time on the CPU (less disturbed by other processes on a shared machine). Peak
memory of each: on CUDA the peak allocated during the call beyond what was allocated before it;
on the CPU the peak resident set (VmHWM, reset through /proc/self/clear_refs) beyond the resident
set before the call, with glibc told to return large blocks on free so that the peak of one call
is not hidden by memory kept from an earlier one.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
M, RANK = 5, 8
FLUX_DEV = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
            "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
            "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
            "guidance_embed": True, "patch_size": 2}

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lumix_comfy_models import flux1_model_config  # noqa: E402  (FLUX.1 config for any ComfyUI version)


def _reexec_with_returning_malloc():
    """On the CPU, restart once with large allocations mmapped (freed memory leaves the RSS)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (or COMFYUI_PATH)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batches", type=int, nargs="+", default=[5, 10])
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (GPU 10, CPU 3)")
    p.add_argument("--double", type=int, default=None, help="double blocks (GPU 19, CPU 1)")
    p.add_argument("--single", type=int, default=None, help="single blocks (GPU 38, CPU 1)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (GPU 512, CPU 128)")
    p.add_argument("--text-tokens", type=int, default=None, help="T5 tokens (GPU 512, CPU 32)")
    p.add_argument("--weights", nargs="+", default=None,
                   help="weight dtypes: bf16, fp8, fp8_fast, fp32 (GPU: bf16 fp8 [fp8_fast]; CPU: fp32)")
    return p.parse_args()


def import_comfy(path):
    if not path or not (Path(path) / "comfy").is_dir():
        raise SystemExit("set COMFYUI_PATH (or --comfyui) to a ComfyUI checkout; this benchmark runs inside it")
    sys.path.insert(0, str(Path(path).resolve()))
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True


def import_extension():
    """This checkout as a package (its nodes use relative imports), as ComfyUI would load it."""
    spec = importlib.util.spec_from_file_location("lumix_bench_ext", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lumix_bench_ext"] = module
    spec.loader.exec_module(module)
    import lumix_bench_ext.nodes.adapter_memory as adapter_memory
    import lumix_bench_ext.nodes.patch as patch
    return patch, adapter_memory


def build_flux(weights, device, double, single, seed=0):
    """A FLUX.1-dev-shaped ComfyUI model with random weights, made directly on `device`."""
    import torch

    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    storage, compute = {"bf16": (torch.bfloat16, None), "fp32": (torch.float32, None),
                        "fp8": (torch.float8_e4m3fn, torch.bfloat16),
                        "fp8_fast": (torch.float8_e4m3fn, torch.bfloat16)}[weights]
    config = flux1_model_config(dict(FLUX_DEV, depth=double, depth_single_blocks=single))
    config.set_inference_dtype(storage, compute)
    if weights == "fp8_fast":
        config.optimizations["fp8"] = True  # what UNETLoader's fp8_e4m3fn_fast does
    base = config.get_model({}, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():  # ComfyUI's ops leave weights uninitialised: fill every one
        for p in base.diffusion_model.parameters():
            fill = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32 if device == "cpu" else torch.bfloat16)
            p.copy_((fill * 0.02).to(p.dtype))
    base.diffusion_model.to(device)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def lumix_patch(base, patch, adapter_memory, adapter_dtype, seed=1):
    """The base model patched as the loader does: block patches plus the adapters' ModelPatcher."""
    import torch

    from lumix_bench_ext.lumix_core import TensorLoRA

    dm = base.get_model_object("diffusion_model")
    width = dm.hidden_size
    g = torch.Generator().manual_seed(seed)
    adapters = {}
    for kind, blocks in (("double_blocks", dm.double_blocks), ("single_blocks", dm.single_blocks)):
        for index in range(len(blocks)):
            adapters[(kind, index)] = {}
            for name, d_out in (("kv_tt_lora", 2 * width), ("proj_tt_lora", width)):
                factors = (torch.randn(M, M, RANK, generator=g) / RANK ** 0.5,
                           torch.randn(M, width, RANK, RANK, generator=g) / width ** 0.5,
                           torch.randn(M, d_out, RANK, generator=g) * 0.01)
                adapters[(kind, index)][name] = TensorLoRA.from_factors(*factors, dtype=adapter_dtype)
    holder = adapter_memory.adapter_model(adapters, base.load_device, base.offload_device)
    return patch.apply_lumix(base, adapters=adapters, adapter_model=holder, query_broadcast=True,
                             maps_per_scene=M, strength=1.0)


def make_inputs(batch, size, text_tokens, device, dtype, seed=2):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    latent = size // 8
    one = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return dict(x=one(batch, 16, latent, latent), timestep=torch.full((batch,), 0.7, device=device),
                context=one(batch, text_tokens, 4096), y=one(batch, 768),
                guidance=torch.full((batch,), 3.5, device=device))


class Meter:
    """Time and peak memory of one call."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def _kib(self, field):
        return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read())[1]) * 1024

    def __call__(self, fn):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() - before
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current VmRSS
            before = self._kib("VmRSS")
            start = time.process_time()
            out = fn()
            seconds = time.process_time() - start
            peak = self._kib("VmHWM") - before
        del out
        return seconds, peak


def run(args):
    import torch

    import comfy.model_management as mm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    patch, adapter_memory = import_extension()
    double = args.double if args.double is not None else (19 if gpu else 1)
    single = args.single if args.single is not None else (38 if gpu else 1)
    size = args.size or (512 if gpu else 128)
    text_tokens = args.text_tokens or (512 if gpu else 32)
    repeats = args.repeats or (10 if gpu else 3)
    if args.weights:
        weight_kinds = args.weights
    elif gpu:
        weight_kinds = ["bf16", "fp8"] + (["fp8_fast"] if mm.supports_fp8_compute(torch.device(device)) else [])
    else:
        weight_kinds = ["fp32"]
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"FLUX step, vanilla vs LumiX: width 3072, 24 heads, {double} double + {single} single blocks, "
          f"{size}x{size} ({(size // 16) ** 2} image + {text_tokens} text tokens per map), rank {RANK}, "
          f"{M} maps; {where}; {repeats} interleaved repeats, medians")
    print(f"{'weights':<9}{'batch':>6}{'vanilla s':>11}{'LumiX s':>10}{'ratio':>8}"
          f"{'vanilla MiB':>13}{'LumiX MiB':>11}{'mem ratio':>11}")
    meter = Meter(device)
    for kind in weight_kinds:
        base = build_flux(kind, device, double, single)
        compute = base.model.manual_cast_dtype or base.model_dtype()
        adapter_dtype = torch.float32 if compute == torch.float32 else torch.bfloat16
        lumix = lumix_patch(base, patch, adapter_memory, adapter_dtype)
        mm.load_models_gpu([lumix], force_full_load=True)  # the base weights and the adapters, on the device
        dm = base.get_model_object("diffusion_model")
        models = {"vanilla": base, "LumiX": lumix}

        def call(name, inputs):
            options = models[name].model_options["transformer_options"]
            with torch.inference_mode():
                return dm(transformer_options=options, **inputs)

        for batch in args.batches:
            inputs = make_inputs(batch, size, text_tokens, device, compute)
            for name in models:  # warm-up: kernels, the adapters' merged weights
                call(name, inputs)
            times, peaks = {n: [] for n in models}, {n: [] for n in models}
            for r in range(repeats):
                for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
                    seconds, peak = meter(lambda: call(name, inputs))
                    times[name].append(seconds)
                    peaks[name].append(peak)
            t = {n: statistics.median(v) for n, v in times.items()}
            m = {n: statistics.median(v) for n, v in peaks.items()}
            print(f"{kind:<9}{batch:>6}{t['vanilla']:>11.3f}{t['LumiX']:>10.3f}{t['LumiX'] / t['vanilla']:>8.3f}"
                  f"{m['vanilla'] / 2**20:>13.1f}{m['LumiX'] / 2**20:>11.1f}{m['LumiX'] / max(m['vanilla'], 1):>11.3f}",
                  flush=True)
            del inputs
        adapters = [x for x in lumix.model_patches_models()][0]
        print(f"{kind:<9} weights: base {base.model_size() / 2**20:.0f} MiB, adapters + merged cache "
              f"{adapters.model_size() / 2**20:.1f} MiB ({adapter_dtype}), both counted by ComfyUI's memory manager")
        mm.unload_all_models()
        del base, lumix, models, dm
        mm.soft_empty_cache()


def main():
    args = parse_args()
    import torch

    if not (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        _reexec_with_returning_malloc()
    import_comfy(args.comfyui)
    run(args)


if __name__ == "__main__":
    main()
