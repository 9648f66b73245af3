"""The batch client as a process: killed and re-run it ends as an uninterrupted run; Ctrl-C cancels
its jobs on the server and leaves a consistent manifest (host-free, stub servers on 127.0.0.1)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_stub import Stub, tiny_png

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "scripts" / "lumix_client.py"
VOLATILE = ("server", "seconds", "attempts", "finished_at")


def start(*args):
    return subprocess.Popen([sys.executable, str(CLIENT), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def manifest_lines(out):
    path = Path(out) / "manifest.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def stable_manifest(out):
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in manifest_lines(out)]


def files(out):
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("manifest.jsonl", "lumix_run.json", ".lumix_lock")}


@pytest.fixture
def stubs():
    made = [Stub(service_time=0.15), Stub(service_time=0.15)]
    yield made
    for s in made:
        s.close()


def test_killed_client_resumes_to_the_same_manifest_and_files(stubs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"room number {i}" for i in range(4)), encoding="utf-8")
    common = ["--prompts", prompts, "--scenes-per-prompt", 2, "--server", stubs[0].address, "--server", stubs[1].address]
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, str(CLIENT), *map(str, common), "--out", str(reference)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "out"
    proc = start(*common, "--out", out)
    wait_until(lambda: len(manifest_lines(out)) >= 3 or proc.poll() is not None)
    proc.kill()  # SIGKILL: no clean-up at all
    proc.communicate(timeout=30)
    finished_before = len(manifest_lines(out))
    assert 3 <= finished_before < 8, "the kill should land mid-batch"
    for line in manifest_lines(out):
        json.loads(line)  # every line that is there is whole
    for path in out.rglob("*.png"):  # nothing truncated under a final name
        if ".lumix_partial" not in path.parts:
            assert path.read_bytes().endswith(b"IEND\xaeB`\x82")

    again = subprocess.run([sys.executable, str(CLIENT), *map(str, common), "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    assert stable_manifest(out) == stable_manifest(reference)
    assert files(out) == files(reference)
    assert len(files(out)) == 8 * 7
    assert files(out)["00003_s1_seed49/color.png"] == tiny_png(b"room number 3|49|color|512")


def test_ctrl_c_cancels_the_jobs_on_their_servers(tmp_path):
    stub = Stub(service_time=0.05, hang=1)  # the first job finishes, the second never does
    try:
        out = tmp_path / "out"
        proc = start("--prompt", "a room", "--scenes-per-prompt", 3, "--server", stub.address, "--out", out)
        wait_until(lambda: len(stub.prompts) >= 2 and len(manifest_lines(out)) == 1)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith("lumix_client: interrupted")
        assert "p-1" in stub.interrupts and "p-1" in stub.deletes
        records = [json.loads(line) for line in manifest_lines(out)]
        assert [(r["scene"], r["status"]) for r in records] == [("00000_s0_seed42", "done")]
        assert sorted(p.name for p in out.iterdir()) == [".lumix_lock", "00000_s0_seed42", "lumix_run.json", "manifest.jsonl"]
    finally:
        stub.close()
