"""Shared test set-up. Where a real ComfyUI is available (COMFYUI_PATH, or this checkout inside
ComfyUI/custom_nodes/), it is put on sys.path and told to run on the CPU when there is no GPU,
before anything imports comfy.model_management."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_comfyui():
    """(path or None, reason): where ComfyUI is, or why the host tests cannot run."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if (path / "comfy").is_dir() and (path / "nodes.py").is_file():
            return path, ""
        return None, f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/ and nodes.py there)"
    if REPO.parent.name == "custom_nodes" and (REPO.parent.parent / "comfy").is_dir():
        return REPO.parent.parent, ""
    return None, ("no ComfyUI: set COMFYUI_PATH to a ComfyUI checkout (or clone this extension into "
                  "ComfyUI/custom_nodes/) to run the host tests")


COMFYUI, NO_COMFYUI_REASON = find_comfyui()
if COMFYUI is not None and str(COMFYUI) not in sys.path:
    sys.path.insert(0, str(COMFYUI))
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True


# CI sets LUMIX_REQUIRE_HOST=1 where ComfyUI is present: then a host test or module that skips (a broken
# import, a missing host) fails the run instead of hiding behind a skip.
REQUIRE_HOST = os.environ.get("LUMIX_REQUIRE_HOST") == "1"
HOST_TESTS = REPO / "tests" / "host"
_host_skips: list[str] = []


def _is_host_report(report) -> bool:
    path = Path(str(getattr(report, "fspath", "") or report.nodeid.split("::")[0]))
    path = path if path.is_absolute() else REPO / path
    return HOST_TESTS in path.resolve().parents


def pytest_collectreport(report):
    if REQUIRE_HOST and report.skipped and _is_host_report(report):
        _host_skips.append(f"{report.nodeid}: {report.longrepr}")


def pytest_runtest_logreport(report):
    if REQUIRE_HOST and report.skipped and _is_host_report(report):
        _host_skips.append(f"{report.nodeid}: {report.longrepr}")


def pytest_sessionstart(session):
    if REQUIRE_HOST and COMFYUI is None:
        raise pytest.UsageError(f"LUMIX_REQUIRE_HOST=1 but {NO_COMFYUI_REASON}")


def pytest_sessionfinish(session, exitstatus):
    if _host_skips:
        print("\nLUMIX_REQUIRE_HOST=1: host tests were skipped although ComfyUI is present:")
        for line in _host_skips:
            print("  " + line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def stubs():
    """make(**faults) -> a running stand-in ComfyUI server (tests/client_stub.py); all closed after the test."""
    from client_stub import Stub

    made = []

    def make(**kw):
        made.append(Stub(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()
