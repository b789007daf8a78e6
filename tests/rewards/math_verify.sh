#!/usr/bin/env bash
# The Python shim's unit tests, then a GSM8K-format run rewarded by `math-verify` (PyPI)
# through the shim: a small
# environment with math-verify 0.8.0 in $RLX_REWARDS_VENV (default: a scratch one), then
#  1. the shim on a known batch: equivalent forms of the reference score 1, a wrong one 0;
#  2. `examples/rewards/gsm8k_math_verify.rlx` for 2 steps on a tiny random checkpoint and the
#     bundled GSM8K sample (plumbing only: a random model states no right answers), every step
#     with its reward seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${RLX_REWARDS_VENV:-$(mktemp -d)/venv}"
source tests/lib/venv.sh
ensure_venv "$venv" "import math_verify" "math-verify==0.8.0"
export PYTHONPATH="$PWD/python"
# The shim's calling conventions (TRL, verl, named, conversational, the loop), standard library only.
python3 -m unittest discover -s python/tests -q
request='{"reward":"math","batch":0,"items":[
 {"prompt":"q","response":"44 - 4 = 40\n#### 40","answer":"40","data":"gsm8k","row":{}},
 {"prompt":"q","response":"#### 40.0","answer":"40","data":"gsm8k","row":{}},
 {"prompt":"q","response":"#### $\\frac{80}{2}$","answer":"40","data":"gsm8k","row":{}},
 {"prompt":"q","response":"#### 41","answer":"40","data":"gsm8k","row":{}}]}'
reply="$(echo "$request" | tr -d '\n' | sed 's/$/\n/' | "$venv/bin/python" -m rlx_reward examples/rewards/math_reward.py:compute_score)"
test "$reply" = '{"rewards": [1.0, 1.0, 1.0, 0.0]}' || { echo "math-verify shim replied $reply" >&2; exit 1; }

cargo build --release --locked -q
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
target/release/rlx tiny-checkpoint "$scratch/policy" --family qwen2 > /dev/null
PATH="$venv/bin:$PATH" RLX_CACHE="$scratch/cache" target/release/rlx run examples/rewards/gsm8k_math_verify.rlx \
    --steps 2 --quiet --set policy.path="$scratch/policy" --set rl.sample.max_tokens=16 --out "$scratch/run"
test "$(grep -c '"reward_seconds"' "$scratch/run/metrics.jsonl")" = 2
echo "math-verify reward: shim and a 2-step GSM8K run through it passed"
