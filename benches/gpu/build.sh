#!/usr/bin/env bash
# Builds what benches/gpu/run.sh runs on a lent GPU machine (which has no Rust toolchain): the
# `cuda` release binary and the test suite's binaries, with nvcc 13.0 from PyPI wheels
# (../shared/tools/cuda13-toolkit.sh, sm_90: H100/H200), into target/gpu/bundle.tar.gz
# (about 10 minutes the first time; a separate target dir, so the CPU build is untouched).
set -euo pipefail
cd "$(dirname "$0")/../.."
toolkit="${RLX_CUDA_TOOLKIT_SCRIPT:-../shared/tools/cuda13-toolkit.sh}"
[ -f "$toolkit" ] || { echo "benches/gpu: no CUDA toolkit script at $toolkit" >&2; exit 1; }
if [ ! -x /tmp/cuda13/bin/nvcc ]; then
    bash "$toolkit" > /tmp/cuda13-env.txt
fi
eval "$(tail -1 /tmp/cuda13-env.txt)"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CARGO_TARGET_DIR=target/cuda
cargo build --release --locked --features cuda
# The test binaries, listed by cargo itself: the library's unit tests and the numeric suites
# (blocks against hand values and finite differences, HF checkpoints, eval) — what the device's
# 64 MiB carry allows; the CLI suites need the CLI at its build path and add little there.
tests=$(cargo test --release --locked --features cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    t=m.get("target",{})
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and (t.get("kind")==["lib"] or t.get("name") in ("blocks","hf","eval")):
        print(t.get("name"), m["executable"])')
rm -rf target/gpu && mkdir -p target/gpu/tests
cp target/cuda/release/rlx target/gpu/rlx
while read -r name exe; do cp "$exe" "target/gpu/tests/$name"; done <<< "$tests"
strip target/gpu/rlx target/gpu/tests/*
tar -C target -cJf target/gpu-bundle.tar.xz gpu
size=$(stat -c %s target/gpu-bundle.tar.xz)
echo "target/gpu-bundle.tar.xz: $((size / 1048576)) MiB (the device carries at most 64 MiB in all)"
