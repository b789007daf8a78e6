#!/usr/bin/env bash
# rlx against PyTorch, transformers and TRL on the same shapes, checkpoints and settings
# (benches/peers/compare.py; docs/benchmarks.md's "Against PyTorch, transformers and TRL" table).
#
#   bash benches/peers/run.sh                    # every row, 3 rounds (about 25 minutes on 2 cores)
#   bash benches/peers/run.sh --rounds 5 --only train-tiny --only grpo-tiny
#
# Makes a Python environment from PyPI in $RLX_BENCH_VENV (default target/bench-venv; the
# interop environment of tests/interop/run.sh works too): torch, transformers and PEFT as pinned
# in tests/interop/requirements.txt, TRL as pinned in benches/peers/requirements.txt. Builds
# rlx in release mode. Nothing is fetched at benchmark time.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${RLX_BENCH_VENV:-target/bench-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers, trl" 2>/dev/null; then
    python3 -m venv "$venv" || { echo "benches/peers: cannot create a Python venv in $venv" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r tests/interop/requirements.txt -r benches/peers/requirements.txt \
        || { echo "benches/peers: cannot install torch, transformers and TRL from PyPI" >&2; exit 1; }
fi
cargo build --release --locked -q
HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false \
    exec "$venv/bin/python" benches/peers/compare.py --rlx target/release/rlx "$@"
