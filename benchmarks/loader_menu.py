"""The loader's menu: how long telling LumiX checkpoints from other LoRAs takes, per refresh.

Builds a models/loras-like folder of safetensors files whose headers have the real key counts (the
released LumiX layout: 342 keys; a FLUX LoRA: 988 keys) but tiny tensors, then times, interleaved,
three ways to decide for every file: reading the header and parsing all of its JSON (the plain way),
is_lumix_file (header bytes, JSON parsed only when a LumiX key name occurs), and LumiXFileCache on
an unchanged folder (one stat per file), and prints the medians and ratios against the plain way.

    python benchmarks/loader_menu.py [--files 40] [--rounds 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lumix_core.checkpoint_sniff import LumiXFileCache, has_lumix_keys, is_lumix_file, read_header  # noqa: E402


def lumix_tensors():
    t = torch.zeros(1)
    return {f"{kind}.{i}.processor.{adapter}.{g}": t.clone()
            for kind, n in (("double_blocks", 19), ("single_blocks", 38)) for i in range(n)
            for adapter in ("kv_tt_lora", "proj_tt_lora") for g in ("G1", "G2", "G3")}


def flux_lora_tensors():
    t = torch.zeros(1)
    names = [f"lora_unet_double_blocks_{i}_{part}" for i in range(19)
             for part in ("img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "img_mod_lin",
                          "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin")]
    names += [f"lora_unet_single_blocks_{i}_{part}" for i in range(38) for part in ("linear1", "linear2", "modulation_lin")]
    return {f"{n}.{w}": t.clone() for n in names for w in ("lora_down.weight", "lora_up.weight", "alpha")}


def timed(fn, paths):
    start = time.perf_counter()
    found = [fn(p) for p in paths]
    return time.perf_counter() - start, found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        lumix, other = lumix_tensors(), flux_lora_tensors()
        for i in range(args.files):
            path = os.path.join(folder, f"{i:03d}.safetensors")
            save_file(lumix if i % 4 == 0 else other, path)  # one LumiX file in four
            paths.append(path)
        cache = LumiXFileCache()
        expected = [i % 4 == 0 for i in range(args.files)]
        assert timed(cache.is_lumix, paths)[1] == expected  # warms the cache
        ways = {"parse every header": lambda p: has_lumix_keys(read_header(p)),
                "is_lumix_file": is_lumix_file, "LumiXFileCache (unchanged folder)": cache.is_lumix}
        times = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():  # interleaved, so load changes hit every way alike
                seconds, found = timed(fn, paths)
                assert found == expected, name
                times[name].append(seconds)
    base = statistics.median(times["parse every header"])
    print(f"{args.files} files (342 or 988 keys each), median of {args.rounds} interleaved rounds:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:36s} {1000 * median:8.2f} ms per menu refresh   {base / median:6.1f}x the plain way")


if __name__ == "__main__":
    main()
