"""Tensor LoRA: this project's merged two-matmul form against the reference contraction order.

At FLUX.1-dev width (3072, rank 8, 5 maps) and 1024 / 4608 tokens it checks both give the same
numbers, then prints per case the speed ratio (reference time / ours) and the ratio of peak memory
allocated during the call beyond its input and output (reference / ours).

    python benchmarks/tensor_lora.py            # float32 on the CPU (or --device cuda)

Memory: on CUDA, torch.cuda.max_memory_allocated; on the CPU, the peak resident set (VmHWM) of a
fresh child process per measurement, reset through /proc/self/clear_refs just before the call.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lumix_core.tensor_lora import TensorLoRA  # noqa: E402

M, HIDDEN, RANK = 5, 3072, 8


def reference_delta(x, G1, G2, G3, scale):
    """The reference order: three einsums through an [M, M, L, *] intermediate, then the map sum."""
    xg = x.view(-1, M, x.shape[1], x.shape[2])  # [k, j, L, d_in]
    t = torch.einsum("kjlu,iurq->kijlrq", xg, G2)  # [k, M, M, L, R, R]
    t = torch.einsum("kijlrq,ijq->kijlr", t, G1)  # [k, M, M, L, R]
    t = torch.einsum("kijlr,ior->kijlo", t, G3)  # [k, M, M, L, d_out]
    return (t.sum(dim=2) * scale).reshape(x.shape[0], x.shape[1], G3.shape[1])


def make_case(tokens, d_out, device, dtype, seed=0):
    torch.manual_seed(seed)
    lora = TensorLoRA(M, HIDDEN, d_out, RANK, dtype=dtype, device=device).requires_grad_(False)
    for p in (lora.G1, lora.G2, lora.G3):
        p.normal_(std=0.05)
    x = torch.randn(M, tokens, HIDDEN, device=device, dtype=dtype)
    return lora, x


def run_impl(impl, lora, x):
    with torch.no_grad():
        if impl == "ours":
            return lora(x)
        return reference_delta(x, lora.G1, lora.G2, lora.G3, lora.scale())


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_impl(impl, lora, x, device, repeats):
    run_impl(impl, lora, x)  # warm-up
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run_impl(impl, lora, x)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _kib(field):
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read())[1])


def extra_memory_here(impl, tokens, d_out, device, dtype):
    """Bytes allocated by one call beyond its input and its output."""
    lora, x = make_case(tokens, d_out, device, dtype)
    out_bytes = M * tokens * d_out * x.element_size()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = run_impl(impl, lora, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base - out_bytes
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    base = _kib("VmRSS") * 1024
    out = run_impl(impl, lora, x)
    peak = _kib("VmHWM") * 1024
    del out
    return max(peak - base - out_bytes, 0)


def extra_memory(impl, tokens, d_out, device, dtype_name):
    if device.startswith("cuda"):
        return extra_memory_here(impl, tokens, d_out, device, getattr(torch, dtype_name))
    # A fresh process per measurement, so no memory freed by an earlier call hides this one's peak.
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, str(tokens), str(d_out), dtype_name]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["extra_bytes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4608])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, tokens, d_out, dtype_name = args.child
        print(json.dumps({"extra_bytes": extra_memory_here(impl, int(tokens), int(d_out), "cpu",
                                                           getattr(torch, dtype_name))}))
        return
    dtype = getattr(torch, args.dtype)
    print(f"Tensor LoRA, width {HIDDEN}, rank {RANK}, {M} maps, {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'case':<22}{'ref ms':>10}{'ours ms':>10}{'speed x':>9}{'ref MiB':>10}{'ours MiB':>10}{'memory x':>10}  max rel err")
    worst_speed, worst_memory = math.inf, math.inf
    for tokens in args.tokens:
        for name, d_out in (("kv_tt_lora", 2 * HIDDEN), ("proj_tt_lora", HIDDEN)):
            lora, x = make_case(tokens, d_out, args.device, dtype)
            ours, ref = run_impl("ours", lora, x), run_impl("reference", lora, x)
            err = ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
            if err > (1e-4 if dtype == torch.float32 else 3e-2):
                raise SystemExit(f"MISMATCH: {name} L={tokens}: relative error {err:.2e}")
            del ours, ref
            t_ref = time_impl("reference", lora, x, args.device, args.repeats)
            t_ours = time_impl("ours", lora, x, args.device, args.repeats)
            del lora, x
            m_ref = extra_memory("reference", tokens, d_out, args.device, args.dtype)
            m_ours = extra_memory("ours", tokens, d_out, args.device, args.dtype)
            speed, memory = t_ref / t_ours, m_ref / max(m_ours, 1)
            worst_speed, worst_memory = min(worst_speed, speed), min(worst_memory, memory)
            print(f"{name + ' L=' + str(tokens):<22}{t_ref * 1e3:>10.1f}{t_ours * 1e3:>10.1f}{speed:>9.1f}"
                  f"{m_ref / 2**20:>10.1f}{m_ours / 2**20:>10.1f}{memory:>10.1f}  {err:.1e}")
    print(f"speed ratio (worst case): {worst_speed:.1f}x faster (target >= 4x)")
    print(f"memory ratio (worst case): {worst_memory:.1f}x less extra memory (target >= 10x)")


if __name__ == "__main__":
    main()
