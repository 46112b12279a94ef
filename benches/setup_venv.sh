#!/usr/bin/env bash
# Makes benches/.venv with PyTorch and open_clip for the side-by-side benchmark (PyPI only).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet torch open_clip_torch
.venv/bin/python -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
