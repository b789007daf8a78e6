#!/usr/bin/env bash
# rlx against Hugging Face transformers and PEFT (tests/interop/hf_interop.py): makes a Python
# environment from PyPI (torch, transformers 5, peft) in $RLX_INTEROP_VENV (default
# target/interop-venv), builds rlx, and runs the checks. About 2 minutes of downloads the
# first time; nothing is fetched at test time.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${RLX_INTEROP_VENV:-target/interop-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r tests/interop/requirements.txt
fi
cargo build --release --locked -q
HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error "$venv/bin/python" tests/interop/hf_interop.py target/release/rlx
