"""The batch client against servers it does not control (stub servers on 127.0.0.1, host-free):
huge, endless and trickling answers cost bounded memory, disk and time; garbage from one server
fails that server's attempt only and the scene goes to another; a damaged manifest is repaired or
its bad lines skipped, never a traceback."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from client_stub import Stub
from test_client import FAST, MAP_FILES, client, last_line, manifest, run

from lumix_batch import output  # noqa: E402  (put on sys.path by test_client)
from lumix_batch.comfy_api import clean  # noqa: E402
from lumix_batch.filters import judge  # noqa: E402

CLIENT = Path(__file__).resolve().parents[1] / "scripts" / "lumix_client.py"
RUN_FILES = [".lumix_lock", "lumix_run.json", "manifest.jsonl"]


# Runs the client as __main__ and, at exit, writes the peak resident memory of its own address space
# (VmHWM). Not ru_maxrss: Linux carries a child's pre-exec size into that, so a client started from a
# pytest process holding torch would report gigabytes it never used.
_MEASURED_LAUNCH = """
import atexit, os, runpy, sys
def _report():
    with open('/proc/self/status') as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))
    with open(os.environ['LUMIX_TEST_PEAK_FILE'], 'w') as out:
        out.write(str(kib))
atexit.register(_report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def run_measured(*args, timeout=60):
    """(exit status, stderr, peak resident memory in MiB, seconds) of the client as its own process."""
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryFile() as err:
        peak_file = os.path.join(scratch, "peak_kib")
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", _MEASURED_LAUNCH, str(CLIENT), *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "LUMIX_TEST_PEAK_FILE": peak_file})
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        seconds = time.monotonic() - start
        err.seek(0)
        text = err.read().decode()
        assert os.path.exists(peak_file), f"the client did not exit normally (status {proc.returncode}): {text[-2000:]}"
        with open(peak_file) as f:
            peak_mib = int(f.read()) / 1024
    assert "Traceback" not in text, text
    return proc.returncode, text, peak_mib, seconds


def leftovers(out):
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*"))


# ---- size: memory and disk stay bounded -----------------------------------------------------------

def test_baseline_memory_of_the_client(stubs, tmp_path):
    """What the bounds below compare against: a normal one-scene run."""
    s = stubs()
    rc, err, peak, _ = run_measured("--prompt", "x", "--server", s.address, "--out", tmp_path / "o")
    assert rc == 0, err
    assert peak < 80, f"{peak:.0f} MiB for a tiny scene"  # about 35 MiB with CPython 3.11 on Linux


def test_an_endless_file_body_streams_to_disk_up_to_the_cap(stubs, tmp_path):
    s = stubs(view="endless", view_only="color.png")
    out = tmp_path / "o"
    rc, err, peak, seconds = run_measured("--prompt", "x", "--server", s.address, "--out", out, *FAST,
                                          "--max-file-mb", 128)
    assert rc == 1, err
    assert "color.png is over the 128 MiB limit (more kept coming)" in last_line(err)
    assert "raise --max-file-mb" in last_line(err)
    # 128 MiB went to a temporary file, not into memory; it is gone with the failed attempt
    assert peak < 80, f"peak RSS {peak:.0f} MiB while streaming 128 MiB"
    assert leftovers(out) == RUN_FILES
    assert seconds < 30


def test_a_2gb_file_is_refused_before_a_byte_is_written(stubs, tmp_path):
    s = stubs(view="huge", view_only="color.png")  # announces 2 GiB and starts sending it
    out = tmp_path / "o"
    rc, err, peak, seconds = run_measured("--prompt", "x", "--server", s.address, "--out", out, *FAST)
    assert rc == 1, err
    assert "color.png is 2048 MiB, over the 512 MiB limit" in last_line(err)
    assert peak < 80 and seconds < 20
    assert leftovers(out) == RUN_FILES


@pytest.mark.parametrize("endpoint, limit", [("history", "4 MiB"), ("queue", "64 MiB")])
def test_an_endless_json_answer_is_cut_at_its_cap(stubs, tmp_path, endpoint, limit):
    s = stubs(**{endpoint: "endless"}, ws="none", service_time=0.5)  # without a websocket the client polls both
    rc, err, peak, seconds = run_measured("--prompt", "x", "--server", s.address, "--out", tmp_path / "o", *FAST)
    assert rc == 1, err
    assert f"the answer to /{endpoint} is over the {limit} limit" in last_line(err)
    assert peak < 80, f"peak RSS {peak:.0f} MiB"  # /history's 4 MiB is held; /queue is scanned, never held
    assert seconds < 30


def test_a_huge_latent_preview_is_dropped_as_it_arrives(stubs, tmp_path, capsys):
    s = stubs(ws_binary=24 << 20)  # binary websocket frames are latent previews: never kept
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o")
    assert rc == 0, err
    assert "step 3/3" in err, "the websocket kept working after the big frame"


def test_an_oversized_websocket_message_fails_the_attempt(stubs, tmp_path, capsys):
    s = stubs(ws_text=6 << 20)
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o", *FAST)
    assert rc == 1 and "a websocket message of 6 MiB (over 4 MiB)" in last_line(err)


# ---- time: a trickle cannot hold the client ------------------------------------------------------

@pytest.mark.parametrize("fault, words", [
    ({"view": "trickle", "view_only": "color.png"}, "the answer to /view came too slowly"),
    ({"view": "trickle_head", "view_only": "color.png"}, "the answer to /view came too slowly"),
    # without a Content-Length a body cut off by the client looks whole: it must still count as too slow
    ({"view": "trickle_unsized", "view_only": "depth_16bit.png"}, "the answer to /view came too slowly"),
    ({"history": "trickle"}, "the answer to /history came too slowly"),
])
def test_a_trickling_answer_ends_after_the_idle_timeout(stubs, tmp_path, capsys, fault, words):
    # one byte a second: without the budget the 4x4 PNG alone would take over a minute
    s = stubs(**fault, trickle_every=1.0)
    start = time.monotonic()
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o", "--retries", 0,
                     "--idle-timeout", 1.5)
    seconds = time.monotonic() - start
    assert rc == 1 and words in last_line(err) and "--idle-timeout" in last_line(err), err
    assert seconds < 8, f"the trickle held the client {seconds:.1f}s"
    assert leftovers(tmp_path / "o") == RUN_FILES


def test_a_slow_but_steady_download_is_not_cut(stubs, tmp_path, capsys):
    """Above the minimum rate a download may take longer than the idle timeout."""
    s = stubs(view="trickle", view_only="color.png", trickle_every=0.02)  # ~70 bytes over ~1.5 s
    from lumix_batch import deadline
    old = deadline.MIN_RATE
    deadline.MIN_RATE = 1  # one byte a second earns a second: 50 bytes a second is plenty
    try:
        rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o", "--retries", 0,
                         "--idle-timeout", 1)
    finally:
        deadline.MIN_RATE = old
    assert rc == 0, err


# ---- garbage: that server's fault, the scene goes elsewhere ----------------------------------------

@pytest.mark.parametrize("name, words", [
    ("a\x00b.png", "a control character"),
    ("n" * 300 + ".png", "304 bytes long, at most 200"),
    ("../../escape.png", "a path separator"),
    ("\ud800.png", "not valid Unicode"),
    (".hidden", "hidden"),
])
def test_a_bad_file_name_fails_that_server_and_the_scene_moves(stubs, tmp_path, capsys, name, words):
    bad = stubs(sidecar={"files": ["albedo.png", name]})
    good = stubs(service_time=0.1)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "--prompt", "a room", "--scenes-per-prompt", 8, "--server", bad.address,
                          "--server", good.address, "--out", out, "--backoff", 0.05)
    assert rc == 0, err
    records = manifest(out)
    assert len(records) == 8 and all(r["status"] == "done" and r["server"] == good.address for r in records)
    assert len(bad.prompts) >= 1, "the bad server was tried"
    blame = f"{bad.address} sent a file name the local file system cannot hold ({words}"
    assert blame in err and "cannot write into" not in err
    summary = err[err.index("scenes per server:"):].splitlines()
    assert summary[1].startswith(f"  {bad.address}: 0 done, {len(bad.prompts)} server faults (last: {blame}")
    assert summary[2] == f"  {good.address}: 8 done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "nothing written outside --out"
    assert sorted(p.name for p in (out / records[0]["scene"]).iterdir()) == MAP_FILES


@pytest.mark.parametrize("fault, words", [
    ({"sidecar": {"files": "color.png"}}, "the scene's lumix.json lists no files"),
    ({"sidecar": {"files": ["color.png", "color.png"]}}, "lists a file twice"),
    ({"sidecar": {"files": [f"m{i}.png" for i in range(65)]}}, "lists 65 files (at most 64)"),
    ({"save_output": [1, 2]}, "reported 0 scene folders"),
    ({"sidecar": {"metrics": json.loads('{"a":' * 900 + "1" + "}" * 900)}}, "nests its values over 32 levels deep"),
    ({"save_output": {"images": [{"subfolder": ["not", "hashable"]}]}}, "reported 0 scene folders"),
    ({"error": "boom", "error_messages": 5, "ws": "none"}, "ComfyUI failed while running a node"),
    ({"error": "\x1b[2J\x1b]0;owned\x07red " * 40}, "ComfyUI failed while running LumiXSampler: [2J ]0;owned red"),
])
def test_garbage_is_one_line_and_no_traceback(stubs, tmp_path, capsys, fault, words):
    s = stubs(**fault)
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", tmp_path / "o", *FAST)
    assert rc == 1 and words in last_line(err), err
    assert "\x1b" not in err and "\x07" not in err, "no escape sequence from a server reaches the terminal"
    assert len(last_line(err)) < 700


def test_garbage_that_can_be_ignored_is_ignored(stubs, tmp_path, capsys):
    s = stubs(sidecar={"generation": [1, 2], "metrics": {"structural": [0.9], "geometric": {"mean_degrees": 10 ** 400}}},
              step_value="\x1b[31mred")
    out = tmp_path / "o"
    rc, _, err = run(capsys, "--prompt", "x", "--server", s.address, "--out", out, "--max-geometric", 5)
    assert rc == 0, err
    (record,) = manifest(out)
    assert record["status"] == "filtered" and record["negative_prompt"] is None
    assert record["filter"] == ["geometric residual (degrees) not computed"]
    assert "\x1b" not in err


def test_an_unforeseen_error_on_one_servers_answer_does_not_end_the_batch(stubs, tmp_path, capsys, monkeypatch):
    from lumix_batch import batch
    bad = stubs()
    good = stubs()
    real = batch.judge

    def judge_that_breaks(metrics, limits):  # stands in for a check the client lacks
        if threading.current_thread().name.startswith(bad.address):
            raise KeyError("unforeseen")
        return real(metrics, limits)

    monkeypatch.setattr(batch, "judge", judge_that_breaks)
    out = tmp_path / "o"
    rc, _, err = run(capsys, "--prompt", "x", "--scenes-per-prompt", 4, "--server", bad.address, "--server",
                     good.address, "--out", out, "--backoff", 0.05)
    assert rc == 0, err
    assert [r["server"] for r in manifest(out)] == [good.address] * 4
    assert f"{bad.address}: internal error on its answer (KeyError: 'unforeseen'); please report it" in err


def test_queue_scan_agrees_with_parsing_the_whole_answer():
    """/queue is scanned as it streams; the answer must be what parsing it would give."""
    import random
    from lumix_batch.comfy_api import QueueScan
    rng = random.Random(0)

    def parsed(queue, pid):
        for key, state in (("queue_running", "running"), ("queue_pending", "pending")):
            if any(item[1] == pid for item in queue[key]):
                return state
        return None

    for _ in range(2000):
        ids = [f"p-{rng.randrange(30)}" for _ in range(rng.randrange(6))]
        running = ids[: rng.randrange(len(ids) + 1)]
        # prompt texts that quote the keys or an id, which a naive search would take for the real thing
        item = lambda pid: [rng.randrange(9), pid, {"text": rng.choice(["a room", '"queue_pending"', f'say "{pid}"'])},
                            {"client_id": "c"}, ["9"]]
        queue = {"queue_running": [item(i) for i in running], "queue_pending": [item(i) for i in ids if i not in running]}
        if rng.random() < 0.3:
            queue = dict(reversed(queue.items()))
        body = json.dumps(queue, indent=rng.choice([None, 1])).encode()
        pid = f"p-{rng.randrange(30)}"
        scan = QueueScan(pid)
        pos = 0
        while pos < len(body):  # in pieces of every size: tokens split across chunks
            step = rng.randrange(1, 40)
            scan.feed(body[pos:pos + step])
            pos += step
        assert scan.looks_right() and scan.state == parsed(queue, pid), (body, pid)
    html = QueueScan("p-1")
    html.feed(b"<html>queue_running p-1</html>")
    assert not html.looks_right()


def test_names_a_file_system_can_hold():
    for good in ("albedo.png", "depth_16bit.png", "normal.exr", "carte_de_profondeur_é.png", "a" * 196 + ".png"):
        assert output.name_problem(good) is None, good
    for bad in ("", None, 5, "a/b.png", "a\\b.png", "a\x00.png", "a\nb", "x.png.part", "..", ".", "CON.png",
                "nul", "name.", "a" * 197 + ".png", "é" * 101, "a:b", "\udcff.png"):
        assert output.name_problem(bad), repr(bad)


def test_a_name_the_checks_pass_but_the_disk_refuses_is_the_servers_fault(tmp_path, monkeypatch):
    import errno
    real_open = open

    def refusing_open(path, *a, **kw):
        if str(path).endswith(".part"):
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(output.ServerFailure, match="gpu7 sent a file name the local file system cannot hold "
                                                   r"\(File name too long\): 'x.png'"):
        output.fetch_file(lambda ref, dest, limit: None, {}, str(tmp_path), "x.png", "gpu7")


def test_clean_keeps_server_text_to_one_safe_line():
    assert clean("a\x1b[31mb\nc\td\x07", 100) == "a [31mb c d"
    assert clean("x" * 500, 50) == "x" * 49 + "…"
    assert clean(None) == "None"


def test_filter_metrics_from_a_server_are_checked():
    assert judge({"structural": [1]}, {"min_alignment": 0.1}) == [
        "structural alignment (mean edge correlation with color) not computed"]
    assert judge({"structural": {"alignment": 10 ** 400}}, {"min_alignment": 0.1})[0].endswith("not computed")
    assert judge({"structural": {"alignment": True}}, {"min_alignment": 0.1})[0].endswith("not computed")
    assert judge({"structural": {"alignment": 0.5}}, {"min_alignment": 0.1}) == []


# ---- the manifest: repaired before appending, bad lines skipped ------------------------------------

def lines(out):
    return (Path(out) / "manifest.jsonl").read_bytes().split(b"\n")


def test_a_torn_last_line_is_truncated_before_appending(stubs, tmp_path, capsys):
    s = stubs()
    out = tmp_path / "o"
    args = ["--prompt", "a room", "--scenes-per-prompt", 3, "--server", s.address, "--out", out]
    assert run(capsys, *args)[0] == 0
    whole = manifest(out)
    # killed while writing the third line (and the second and third folders never got a record)
    for record in whole[1:]:
        os.rename(out / record["scene"], tmp_path / record["scene"])
    torn = json.dumps(whole[0]) + "\n" + json.dumps(whole[1])[:50]
    (out / "manifest.jsonl").write_text(torn)
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert f"note: {out / 'manifest.jsonl'}: removed its cut-off last line (50 bytes" in err
    assert [r["scene"] for r in manifest(out)] == [r["scene"] for r in whole], "every line whole again"
    assert len(s.prompts) == 5, "the two scenes without a record were made again"
    rc, _, err = run(capsys, *args)
    assert rc == 0 and "all 3 scenes" in err and "note" not in err


def test_a_killed_client_twice_in_a_row_still_resumes(stubs, tmp_path, capsys):
    """The issue's sequence: torn line, append, killed again: the third run must not refuse the folder."""
    s = stubs()
    out = tmp_path / "o"
    args = ["--prompt", "a room", "--scenes-per-prompt", 3, "--server", s.address, "--out", out]
    assert run(capsys, *args)[0] == 0
    whole = [json.dumps(r) for r in manifest(out)]
    (out / "manifest.jsonl").write_text(whole[0] + "\n" + whole[1][:40])  # first kill
    assert run(capsys, *args)[0] == 0  # repairs and appends
    text = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(text[:-20])  # second kill, mid-line again
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert "is not a manifest record" not in err and len(manifest(out)) == 3


def test_a_whole_last_record_without_its_newline_is_kept(stubs, tmp_path, capsys):
    s = stubs()
    out = tmp_path / "o"
    args = ["--prompt", "a room", "--scenes-per-prompt", 2, "--server", s.address, "--out", out]
    assert run(capsys, *args)[0] == 0
    text = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(text.rstrip("\n"))
    rc, _, err = run(capsys, *args)
    assert rc == 0 and "all 2 scenes" in err and "note" not in err and len(s.prompts) == 2
    assert (out / "manifest.jsonl").read_text() == text


def test_malformed_and_unknown_records_are_skipped_with_a_count(stubs, tmp_path, capsys):
    s = stubs()
    out = tmp_path / "o"
    args = ["--prompt", "a room", "--scenes-per-prompt", 2, "--server", s.address, "--out", out]
    assert run(capsys, *args)[0] == 0
    good = (out / "manifest.jsonl").read_bytes().splitlines()
    junk = [json.dumps({"scene": 5, "status": "done"}).encode(), b"[1, 2]", b'"text"', b"\xff\xfe not utf-8",
            json.dumps({"scene": "00000_s9_seed51", "status": "exploded"}).encode(), b"[" * 100000,
            good[1][:30] + good[1]]  # a torn line an old client appended onto
    (out / "manifest.jsonl").write_bytes(b"\n".join([good[0], *junk, b""]))
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert "skipped 7 lines that are not a manifest record (line 2, 3, 4, 5, 6, ...); kept at the end" in err
    # the second scene lost its record to the joined line: its folder is adopted, not made again
    assert len(s.prompts) == 2
    after = lines(out)
    assert after[0] == good[0] and json.loads(after[1])["server"] == "(adopted)"
    assert after[2:-1] == junk and after[-1] == b""
    rc, _, err = run(capsys, *args)
    assert rc == 0 and "skipped 7 lines" in err and "all 2 scenes" in err


def test_a_garbled_rejection_is_still_one_line():
    from lumix_batch.workflow import describe_rejection
    for body in ({"node_errors": {"1": {"errors": {"a": 1}}}}, {"node_errors": {"1": 5}},
                 {"node_errors": {"1": {"errors": [5, {"extra_info": [1]},
                                                   {"type": "value_not_in_list", "extra_info": {"input_name": ["x"]}}]}}}):
        line = describe_rejection(400, json.dumps(body).encode())
        assert line.startswith("ComfyUI rejected the workflow") and "\n" not in line


def test_max_file_mb_must_be_a_size(capsys):
    for value, words in (("0", "must be positive"), ("nan", "must be positive"), ("inf", "below 2^40")):
        with pytest.raises(SystemExit):
            client.main(["--prompt", "x", "--max-file-mb", value])
        assert words in capsys.readouterr().err
