#!/usr/bin/env python3
"""Run LumiX on one or more running ComfyUI servers from the command line (standard library only).

    python scripts/lumix_client.py --prompt "a cozy living room" --out lumix_out
    python scripts/lumix_client.py --prompts prompts.txt --server gpu0:8188 --server gpu1:8188 --out dataset
    python scripts/lumix_client.py --photo room.jpg --prompt "a living room" --out lumix_out

Start ComfyUI first (in its folder: python main.py --listen 127.0.0.1 --port 8188) with the models the
README lists. `--help` lists every option; the work is done by the lumix_batch package beside this file.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lumix_batch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
