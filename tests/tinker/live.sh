#!/usr/bin/env bash
# `rlx run --engine tinker` against a live Tinker server: SkyRL 0.4.0's own server (JAX backend,
# on this CPU, on loopback) serving a tiny Qwen3 checkpoint rlx writes and warm-starts on the
# arithmetic task. The seeds that need no critic (VinePPO, RLMEC, and RCfD with its reward model
# read as Yes/No answers, recipes/rcfd_yes_no.rlx) and GRPO train 2 steps a stage on it, their
# adapters come back and are checked (rlx against the server on a probe, inside the run;
# transformers + PEFT against the base here); the seeds the JAX backend cannot serve are
# refused before any call, naming why.
#
# SkyRL 0.4 needs Python >= 3.12: $RLX_SKYRL_PYTHON, else python3.12/python3.13 on PATH, else
# a pyenv installation of either. Without one this says so loudly and stops (exit 0).
# The environment (~6.6 GB: skyrl pulls torch through peft) goes to $RLX_SKYRL_VENV (default
# target/skyrl-venv); about 3 minutes to install from PyPI, then the runs take about 4.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

find_python() {
    if [ -n "${RLX_SKYRL_PYTHON:-}" ]; then echo "$RLX_SKYRL_PYTHON"; return; fi
    for p in python3.12 python3.13; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
            command -v "$p"; return
        fi
    done
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    for p in "$pyenv_root"/versions/3.12*/bin/python3 "$pyenv_root"/versions/3.13*/bin/python3; do
        if [ -x "$p" ]; then echo "$p"; return; fi
    done
}
python="$(find_python)"
if [ -z "$python" ]; then
    echo "############################################################################" >&2
    echo "# tests/tinker/live.sh SKIPPED: no Python >= 3.12 here, which SkyRL 0.4 needs." >&2
    echo "# The live Tinker server check did not run; set RLX_SKYRL_PYTHON to run it.  " >&2
    echo "############################################################################" >&2
    exit 0
fi
echo "live Tinker check: SkyRL 0.4.0 under $("$python" --version) ($python)"

venv="${RLX_SKYRL_VENV:-target/skyrl-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import skyrl.tinker.api, aiohttp, peft" 2>/dev/null; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    # aiohttp: imported by skyrl/tinker/extra/skyrl_train_inference_forwarding.py, not declared.
    "$venv/bin/pip" install --quiet "skyrl[tinker,jax]==0.4.0" aiohttp
fi
venv="$(cd "$venv" && pwd)"

cargo build --release --locked -q
rlx="$root/target/release/rlx"
# $RLX_LIVE_OUT keeps the runs (metrics, pulled adapters) for a look afterwards.
work="$(mktemp -d)"
keep="${RLX_LIVE_OUT:-}"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        # SIGTERM to the API's python (the stand-in's child) stops its engine too.
        pkill -TERM -P "$server_pid" 2>/dev/null || true
        sleep 1
        kill "$server_pid" 2>/dev/null || true
    fi
    if [ -n "$keep" ]; then rm -rf "$keep"; mkdir -p "$keep"; cp -r "$work"/runs "$work"/server/log "$keep"/ 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The base model: a tiny random Qwen3 (rlx's byte-level tokenizer), warm-started on worked
# solutions so that some samples are right and the advantages are not all zero.
"$rlx" tiny-checkpoint --family qwen3 "$work/random"
cat > "$work/warm.rlx" <<EOF
data  arith  = builtin("arith")
model policy = pretrained("$work/random")

stage sft {
    train policy
    data  arith.solutions
    loss  = token_mean(nll(policy.logp))
    optim { lr = 3e-3, steps = 800, epochs = 6, batch = 32 }
}
EOF
"$rlx" run "$work/warm.rlx" --quiet --out "$work/warm"
base="$work/warm/models/policy"

port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
mkdir -p "$work/server"
PATH="$root/tests/tinker/live:$PATH" SKYRL_PYTHON="$venv/bin/python" JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 \
    uv run -m skyrl.tinker.api --base-model "$base" --backend jax --host 127.0.0.1 --port "$port" \
    --database-url "sqlite:///$work/server/tinker.db" --checkpoints-base "$work/server/ckpt" \
    --backend-config '{"max_lora_adapters":8,"max_lora_rank":32}' > "$work/server/log" 2>&1 &
server_pid=$!
for _ in $(seq 120); do
    if curl -sf "$url/api/v1/healthz" >/dev/null; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/server/log" >&2; exit 1; fi
    sleep 1
done
curl -sf "$url/api/v1/healthz" >/dev/null || { tail -30 "$work/server/log" >&2; exit 1; }

# The shipped recipe with its built-in policy replaced by the served checkpoint.
served() {
    local out="$work/$1.rlx"
    sed -E "s#builtin\(\"tiny\", warm_start = (arith.solutions|reviews.texts)\)#pretrained(\"$base\")#" "recipes/$1.rlx" > "$out"
    grep -q "pretrained(\"$base\")" "$out" || { echo "recipes/$1.rlx: no built-in policy to replace" >&2; exit 1; }
    echo "$out"
}

small=(--steps 2 --eval-prompts 8 --eval-samples 1)
for recipe in grpo vineppo rlmec rcfd_yes_no; do
    args=(--set rl.optim.batch=16 --set rl.optim.minibatch=16 --set rl.sample.n=4 --set rl.sample.max_tokens=48)
    if [ "$recipe" = rlmec ]; then args+=(--set rewriter.optim.batch=8 --set rewriter.optim.lr=3e-2); fi
    # RCfD: one sample per prompt, as shipped; its reward model's pairs stage at a rate that moves it.
    if [ "$recipe" = rcfd_yes_no ]; then args=(--set rl.optim.batch=16 --set rl.sample.max_tokens=48 --set reward_model.optim.batch=8 --set reward_model.optim.lr=1e-2); fi
    start=$SECONDS
    "$rlx" run "$(served "$recipe")" --engine tinker --server "$url" "${small[@]}" "${args[@]}" \
        --out "$work/runs/$recipe" > "$work/$recipe.log" 2>&1 || { cat "$work/$recipe.log" >&2; exit 1; }
    grep -q "reduction \`mean\`, sampler snapshots .* (self-test passed)" "$work/$recipe.log"
    # SkyRL JAX's snapshots load into their model (`jax.py` `load_sampler_weights`); the
    # self-test must find so (first seen in CI at e513198).
    grep -q "sampler snapshots loaded into their model, base model sampled" "$work/$recipe.log" \
        || { echo "$recipe: the self-test found other snapshots:" >&2; grep "sampler snapshots" "$work/$recipe.log" >&2; exit 1; }
    grep -q "adapter pulled to" "$work/$recipe.log"
    # The run's adapters are unloaded as it ends (`Engine::release`), none left to the server.
    grep -q "its adapter unloaded" "$work/$recipe.log"
    if grep -q "left to the server" "$work/$recipe.log"; then grep "left to the server" "$work/$recipe.log" >&2; exit 1; fi
    echo "$recipe: trained 2 steps a stage on SkyRL in $((SECONDS - start)) s"
    grep "adapter pulled to" "$work/$recipe.log" | sed "s|$work/||"
done

# The seeds with a score-head reward model: refused before any call.
for recipe in rcfd rto sppo sa2c; do
    if "$rlx" run "recipes/$recipe.rlx" --engine tinker --server "$url" --quiet --out "$work/refused-$recipe" > "$work/refused.log" 2>&1; then
        echo "recipes/$recipe.rlx should be refused on the JAX backend" >&2; exit 1
    fi
    grep -q tinker-rm-head "$work/refused.log" || { cat "$work/refused.log" >&2; exit 1; }
    echo "$recipe: refused with tinker-rm-head"
done
# A value head needs a critic, which the JAX backend does not serve: refused at `create_model`,
# before any step, naming the server.
if "$rlx" run "$(served ppo)" --engine tinker --server "$url" --steps 1 --out "$work/refused-ppo" > "$work/refused.log" 2>&1; then
    echo "recipes/ppo.rlx should be refused on the JAX backend (no critic)" >&2; exit 1
fi
for part in tinker-critic create_model "$url"; do
    grep -q -- "$part" "$work/refused.log" || { echo "no '$part' in:" >&2; cat "$work/refused.log" >&2; exit 1; }
done
echo "ppo: refused by the server at create_model with tinker-critic"

HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error "$venv/bin/python" tests/tinker/live_check.py "$work/runs" "$base"
