#!/usr/bin/env bash
# rlx's TensorBoard event files against the `tensorboard` package's own reader (PyPI,
# tensorboard 2.20.0 in $RLX_TB_VENV, default a scratch environment): a short two-stage run
# (SFT, then GRPO) killed mid-way and resumed, whose event file must hold exactly the numbers of
# its metrics.jsonl at their steps.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${RLX_TB_VENV:-$(mktemp -d)/venv}"
source tests/lib/venv.sh
ensure_venv "$venv" "import tensorboard" "tensorboard==2.20.0"
cargo build --release --locked -q
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cat > "$scratch/two.rlx" <<'RLX'
recipe two "SFT, then GRPO, on a tiny model"
data  arith  = builtin("arith", problems = 64)
model policy = builtin("tiny", width = 32, heads = 2, layers = 1)

stage sft {
    train policy
    data  arith.solutions
    loss  = token_mean(nll(policy.logp))
    optim { lr = 1e-3, steps = 4, batch = 8 }
}

stage rl {
    train   policy
    prompts arith.problems
    sample  { n = 4, max_tokens = 24 }
    loss    = seq_mean_token_mean(ppo_clip(policy.logp, old.logp, spread(group_zscore(arith.correct(response), eps = 1e-6))))
    optim   { lr = 1e-3, steps = 4, batch = 8 }
}
RLX
small=(--eval-prompts 4 --quiet)
recipe="$scratch/two.rlx"
# Killed after the third RL step's line and before its checkpoint: the resumed run drops that
# line from metrics.jsonl and must drop it from the event file too.
if (RLX_CACHE="$scratch/cache" RLX_FAULT_AT=38 target/release/rlx run "$recipe" "${small[@]}" --out "$scratch/run") 2>/dev/null; then
    echo "the run was not killed" >&2
    exit 1
fi
RLX_CACHE="$scratch/cache" target/release/rlx run --resume "$scratch/run" --quiet
"$venv/bin/python" tests/tensorboard/check.py "$scratch/run"
