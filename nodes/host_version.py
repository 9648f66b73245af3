"""Which ComfyUI versions this extension is tested on, and one log line on any other.

An untested version is not refused: most ComfyUI updates keep the public interfaces this extension
uses (it reaches them through feature detection), so it says once, at start, what was tested.
"""
from __future__ import annotations

import logging
import re

# Every version CI runs the host tests against (oldest first); pyproject.toml's [tool.comfy]
# requires-comfyui is ">=" the oldest, and the README names them all.
TESTED_COMFYUI = ("0.3.64", "0.8.0")


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.match(r"^\s*v?(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return tuple(int(part) for part in match.groups()) if match else None


def untested_version_message(version: str) -> str | None:
    """The line to log for a ComfyUI version outside the tested ones, or None for a tested one."""
    if version in TESTED_COMFYUI:
        return None
    tested = " and ".join(TESTED_COMFYUI)
    parsed = parse_version(version)
    if parsed is None:
        return (f"LumiX: could not read this ComfyUI's version ({version!r}); LumiX is tested on ComfyUI {tested}. "
                "It should work; if a LumiX node fails, report it with your ComfyUI version.")
    if parsed in {parse_version(v) for v in TESTED_COMFYUI}:  # "v0.8.0", "0.8.0-rc1", a local build
        return (f"LumiX: ComfyUI {version} is a build of a tested version ({tested}); if a LumiX node fails, "
                "report it with your ComfyUI version.")
    newest, oldest = parse_version(TESTED_COMFYUI[-1]), parse_version(TESTED_COMFYUI[0])
    if parsed < oldest:
        return (f"LumiX: ComfyUI {version} is older than the versions LumiX is tested on ({tested}); "
                f"update ComfyUI to {TESTED_COMFYUI[0]} or newer if a LumiX node fails.")
    where = "newer than" if parsed > newest else "between"
    return (f"LumiX: ComfyUI {version} is {where} the versions LumiX is tested on ({tested}). It should work; "
            "if a LumiX node fails, report it with your ComfyUI version.")


def log_untested_host() -> str | None:
    """Logs (once per call) the untested-version line for the running ComfyUI; returns it."""
    try:
        import comfyui_version
        version = getattr(comfyui_version, "__version__", "")
    except ImportError:
        version = ""
    message = untested_version_message(version)
    if message:
        logging.getLogger("LumiX").warning(message)
    return message
