#!/usr/bin/env bash
# Recipes exported with `rlx export verl` against verl 0.9.1 itself (tests/verl/parity.py), and
# the zoo blocks verl also ships against its functions at their edge cases (tests/verl/zoo.py):
# verl's Hydra config composes with each export's overrides, and the trainer's own advantage
# code plus the registered policy loss equal `rlx eval` in float64, values and gradients.
#
# Makes a Python environment from PyPI in $RLX_VERL_VENV (default target/verl-venv; CI shares
# the interop environment, which already has them): torch, transformers and peft (pinned in
# tests/interop/requirements.txt), verl==0.9.1 without its GPU dependencies, and the modules its
# CPU code imports (tests/verl/requirements.txt). Fails, never skips, when that cannot be done.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${RLX_VERL_VENV:-target/verl-venv}"
verl_version=0.9.1
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || { echo "tests/verl: cannot create a Python venv in $venv" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --upgrade pip
fi
# verl's trainer modules import transformers and peft: the interop check's pins.
if ! "$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
    "$venv/bin/pip" install --quiet -r tests/interop/requirements.txt \
        || { echo "tests/verl: cannot install tests/interop/requirements.txt from PyPI" >&2; exit 1; }
fi
if ! "$venv/bin/python" -c "import verl, hydra, tensordict, ray; assert verl.__version__ == '$verl_version'" 2>/dev/null; then
    "$venv/bin/pip" install --quiet -r tests/verl/requirements.txt \
        || { echo "tests/verl: cannot install verl's CPU-side dependencies from PyPI" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --no-deps "verl==$verl_version" \
        || { echo "tests/verl: cannot install verl==$verl_version from PyPI" >&2; exit 1; }
fi
cargo build --release --locked -q
rlx=target/release/rlx
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$rlx" tiny-checkpoint "$work/model" --family qwen2 > /dev/null

# These must export (docs/scaling-out.md's "Scaling out with verl" table); every other recipe that
# exports is checked too, so the table cannot drift from what the exporter does.
required="recipes/grpo.rlx recipes/dr_grpo.rlx recipes/rloo.rlx recipes/reinforce.rlx recipes/remax.rlx recipes/ppo.rlx"
dirs=()
for recipe in recipes/*.rlx recipes/baselines/*.rlx recipes/peers/*.rlx; do
    out="$work/export/$(echo "$recipe" | tr '/.' '__')"
    if "$rlx" export verl "$recipe" --out "$out" > /dev/null 2> "$work/log"; then
        dirs+=("$out")
    elif [[ " $required " == *" $recipe "* ]]; then
        cat "$work/log" >&2
        echo "tests/verl: $recipe must export to verl" >&2
        exit 1
    fi
done
echo "tests/verl: ${#dirs[@]} recipes export to verl $verl_version"
PYTHONWARNINGS=ignore RAY_DEDUP_LOGS=0 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
    "$venv/bin/python" tests/verl/parity.py "$rlx" "$work/model" "${dirs[@]}"
# The zoo blocks verl also ships, one by one at their edge cases (tests/verl/zoo.py).
PYTHONWARNINGS=ignore RAY_DEDUP_LOGS=0 HF_HUB_OFFLINE=1 \
    "$venv/bin/python" tests/verl/zoo.py "$rlx"
