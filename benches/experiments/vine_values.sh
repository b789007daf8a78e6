#!/usr/bin/env bash
# VinePPO's value-prediction check during training, as the paper plots it (Kazemnejad et al.
# 2024, fig. 4-5): at 15, 30 and 60 of the 60 RL steps, how far the critic's values and 9-rollout
# Monte-Carlo values are from the verifier's mean over 64 rollouts of every reasoning-step start.
#
#   benches/experiments/vine_values.sh CMP_DIR [RLX]
#
# CMP_DIR holds `rlx compare recipes/vineppo.rlx recipes/baselines/ppo_critic.rlx --seeds 3
# --out CMP_DIR` (its 60-step runs). The 15- and 30-step points are runs of the same recipes and
# seeds stopped there: with a constant learning rate (no warm-up or decay in either recipe) a
# run of N steps is exactly the first N steps of the 60-step run (same losses bit for bit).
# Prints a Markdown table; the runs and probes stay in CMP_DIR/steps/.
set -euo pipefail
cmp="$1"
rlx="${2:-rlx}"
out="$cmp/steps"
mkdir -p "$out"
for s in 0 1 2; do
    for r in baselines/ppo_critic vineppo; do
        name="$(basename "$r")"
        for n in 15 30; do
            dir="$out/$name-s$s-n$n"
            [ -s "$dir.values.json" ] && continue
            "$rlx" run "recipes/$r.rlx" --seed "$s" --steps "$n" --quiet --force --out "$dir" > "$dir.log" 2>&1
            "$rlx" values "$dir" --prompts 32 --json > "$dir.values.json"
        done
        dir="$out/$name-s$s-n60"
        [ -s "$dir.values.json" ] || "$rlx" values "$cmp/runs/$name-s$s" --prompts 32 --json > "$dir.values.json"
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
def est(name, s, n):
    d = json.loads((out / f"{name}-s{s}-n{n}.values.json").read_text())
    return {e["name"].split(" (")[0].split(",")[0]: e for e in d["estimators"]}
def ms(xs):
    m = statistics.mean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.4f} ± {se:.4f}" if m < 0.1 else f"{m:.3f} ± {se:.3f}"
print("| step | critic MSE (`ppo_critic`) | critic signs step advantages right | 9-rollout MC MSE (`ppo_critic`'s states) | 9-rollout MC MSE (`vineppo`'s policy) | MC signs right (`vineppo`) |")
print("|---|---|---|---|---|---|")
for n in (15, 30, 60):
    c = [est("ppo_critic", s, n) for s in range(3)]
    v = [est("vineppo", s, n) for s in range(3)]
    print(f"| {n} | {ms([e['critic']['mse'] for e in c])} | {ms([e['critic']['step_sign'] for e in c])} "
          f"| {ms([e['monte-carlo']['mse'] for e in c])} | {ms([e['monte-carlo']['mse'] for e in v])} "
          f"| {ms([e['monte-carlo']['step_sign'] for e in v])} |")
PY
