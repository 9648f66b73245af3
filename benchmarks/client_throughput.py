"""Batch client throughput: N stub ComfyUI servers with a fixed service time per scene.

For N = 1, 2, 4, 8 servers it runs scripts/lumix_client.py (a separate process, as users run it)
over 6*N scenes (and one server at --depth 2) and prints scenes/second, the speed-up against the N = 1 run measured in the same
session, the efficiency against the ideal N / service time, and the client's own overhead per
scene: (wall time - the time the servers needed) / scenes. A last case with a zero service time
shows the overhead alone. Each case runs --repeats times, interleaved; medians are printed. Most of
the per-scene overhead is durability: every downloaded file and manifest line is fsynced (about 7 ms
each on an ext4 disk, 9 per scene), in the worker threads, so servers do not wait on one another.

    python benchmarks/client_throughput.py [--service 0.25] [--repeats 3] [--servers 1,2,4,8]
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(REPO, "tests"))
from client_stub import Stub  # noqa: E402  (the tests' stand-in ComfyUI server)

CLIENT = os.path.join(REPO, "scripts", "lumix_client.py")


def one_run(servers: list[Stub], scenes: int, work: str, depth: int = 1) -> float:
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, CLIENT, "--prompt", "a room", "--scenes-per-prompt", str(scenes), "--out", out,
            "--depth", str(depth)]
    for s in servers:
        args += ["--server", s.address]
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"client failed: {result.stderr.strip().splitlines()[-1]}")
    return wall


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service", type=float, default=0.25, help="seconds a stub server takes per scene")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--servers", default="1,2,4,8")
    args = p.parse_args()
    counts = [int(n) for n in args.servers.split(",")]
    cases = [(n, args.service, 1) for n in counts] + [(1, args.service, 2), (1, 0.0, 1)]
    lifetime = 3600.0  # the stubs stop by themselves after an hour (a test's default is 300 s)
    stubs = {case: [Stub(service_time=case[1], steps=4, lifetime=lifetime) for _ in range(case[0])] for case in cases}
    walls: dict[tuple, list[float]] = {case: [] for case in cases}
    work = tempfile.mkdtemp(prefix="lumix_client_bench_")
    startup = []
    try:
        for _ in range(args.repeats):
            for case in cases:  # interleaved: the machine's noise hits every case alike
                walls[case].append(one_run(stubs[case], 6 * case[0], work, depth=case[2]))
            start = time.perf_counter()
            subprocess.run([sys.executable, CLIENT, "--help"], capture_output=True)
            startup.append(time.perf_counter() - start)
    finally:
        for group in stubs.values():
            for s in group:
                s.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"service time {args.service:g}s per scene, 6*N scenes per run, median of {args.repeats} "
          f"(client process start-up alone: {statistics.median(startup) * 1000:.0f} ms, included below)")
    boot = statistics.median(startup)
    print(f"{'servers':>7} {'scenes':>6} {'wall s':>7} {'scenes/s':>9} {'vs N=1':>7} {'ideal':>6} {'eff.':>5} "
          f"{'overhead/scene':>15} {'without start-up':>17}")
    base_rate = None
    for case in cases:
        n, service, depth = case
        scenes = 6 * n
        wall = statistics.median(walls[case])
        rate = scenes / wall
        needed = math.ceil(scenes / n) * service
        overhead_ms = (wall - needed) / scenes * 1000
        steady_ms = (wall - needed - boot) / scenes * 1000
        if service == 0:
            print(f"{n:>7} {scenes:>6} {wall:>7.2f} {rate:>9.1f} {'-':>7} {'-':>6} {'-':>5} {overhead_ms:>12.1f} ms {steady_ms:>14.1f} ms  (zero service time)")
            continue
        base_rate = base_rate or rate
        ideal = n / service
        note = f"  (--depth {depth}: the next job waits on the server while one downloads)" if depth > 1 else ""
        print(f"{n:>7} {scenes:>6} {wall:>7.2f} {rate:>9.2f} {rate / base_rate:>6.2f}x {ideal:>6.1f} "
              f"{rate / ideal:>5.0%} {overhead_ms:>12.1f} ms {steady_ms:>14.1f} ms{note}")


if __name__ == "__main__":
    main()
