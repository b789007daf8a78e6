#!/usr/bin/env bash
# Parquet files written by pyarrow now (pyarrow 22.0.0 from PyPI in $RLX_DATA_VENV, default a
# scratch environment), read by `tests/data.rs` — the same checks `cargo test` runs on the
# committed copies in tests/data/parquet/, on files this pyarrow just wrote.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${RLX_DATA_VENV:-$(mktemp -d)/venv}"
source tests/lib/venv.sh
ensure_venv "$venv" "import pyarrow" "pyarrow==22.0.0"
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT
"$venv/bin/python" tests/data/make_parquet.py "$fresh"
RLX_DATA_DIR="$fresh" cargo test --release --locked -q --test data
