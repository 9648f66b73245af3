#!/usr/bin/env bash
# Builds (or updates) a virtual environment that runs one ComfyUI tree (0.3.64 by default) and the host tests:
#   bash .ci/host_env.sh [VENV_DIR] [COMFYUI_TREE]
# torch 2.14.1 + torchvision 0.29.1 (this ComfyUI imports torchvision), then ComfyUI's requirements.txt without
# torch/torchvision/torchaudio (torchsde stays), then what the tests and the web UI need.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-host}
TREE=${2:-$(cd .. && pwd)/shared/comfyui-0.3.64}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
REQS=$(mktemp)
grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$TREE/requirements.txt" > "$REQS"
"${PIP[@]}" -r "$REQS"
rm -f "$REQS"
"${PIP[@]}" pytest hypothesis openexr requests spandrel prodigyopt -r requirements.txt  # prodigyopt: the optional Prodigy path of the trainer
