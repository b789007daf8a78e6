#!/usr/bin/env bash
# The Rust side's protobuf against the `tinker` SDK's generated module: a small environment
# with tinker 0.38.0 (its module only, no dependencies) and protobuf from PyPI, then
# `golden.py check` on rlx's committed request and `golden.py write` compared with the
# committed Python goldens. `RLX_TINKER_VENV` names the environment (default: a scratch one).
set -euo pipefail
cd "$(dirname "$0")"
venv="${RLX_TINKER_VENV:-$(mktemp -d)/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "tinker==0.38.0" --no-deps "protobuf>=5,<8"
fi
"$venv/bin/python" golden.py check golden
fresh="$(mktemp -d)"
"$venv/bin/python" golden.py write "$fresh"
for f in forward_backward_output sample_response request; do
    cmp "$fresh/$f.python.bin" "golden/$f.python.bin"
done
echo "tinker protobuf goldens: the committed Python goldens are what tinker_public_pb2 writes"
