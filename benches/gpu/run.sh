#!/usr/bin/env bash
# On a lent GPU machine, in one call (after benches/gpu/build.sh here; carry
# target/gpu-bundle.tar.xz):
#   bash benches/gpu/run.sh target/gpu-bundle.tar.xz        # writes $OUT/gpu.md and $OUT/*.json
# 1. the numeric test suites of the `cuda` build (unit, blocks, hf, eval);
# 2. CUDA against CPU on the same checkpoint: `rlx score` log-probs (f32) must agree to 1e-3;
# 3. a few GRPO steps of a recipe on the GPU (`rlx run --device cuda`), finite and finishing;
# 4. `rlx bench` on a random Qwen2.5-0.5B-shaped checkpoint in bf16: training step
#    (8 × 512 tokens) and sampling (64 × (128 + 128 new)), tokens/s and MFU
#    (training FLOPs 6·N·tokens + 12·layers·width·T per token of attention; sampling 2·N per
#    new token; peak bf16 dense from $PEAK_TFLOPS, default 989 for H100/H200 SXM).
# The CUDA 13 user-space libraries come from the machine's torch install (nvidia/cu13/lib).
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle="${1:-target/gpu-bundle.tar.xz}"
out="${OUT:-target/gpu-out}"
mkdir -p "$out"
work="$(mktemp -d)"
tar -C "$work" -xJf "$bundle"
rlx="$work/gpu/rlx"
py="$(command -v python3)"
cu13="$("$py" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
[ -d "$cu13" ] || { echo "benches/gpu: no nvidia/cu13/lib in this Python's site-packages" >&2; exit 1; }
export LD_LIBRARY_PATH="$cu13:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
status=0

echo "== 1. test suites (cuda build)"
for t in "$work"/gpu/tests/*; do
    if "$t" --test-threads 4 > "$out/test-$(basename "$t").log" 2>&1; then
        echo "ok   $(basename "$t"): $(grep -h '^test result' "$out/test-$(basename "$t").log" | tail -1)"
    else
        echo "FAIL $(basename "$t") (see $out/test-$(basename "$t").log)"; status=1
    fi
done

echo "== 2. CUDA against CPU"
"$rlx" tiny-checkpoint "$work/small" --family qwen2 --size small > /dev/null
text="Natalia sold 48 clips in April and half as many in May. How many clips did she sell?"
"$rlx" score "$work/small" --text "$text" --json > "$out/score-cpu.json"
"$rlx" score "$work/small" --text "$text" --json --device cuda > "$out/score-cuda.json"
"$py" - "$out/score-cpu.json" "$out/score-cuda.json" <<'PY' || status=1
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
la = [t["logp"] for t in a["tokens"] if t["logp"] is not None]
lb = [t["logp"] for t in b["tokens"] if t["logp"] is not None]
d = max(abs(x - y) for x, y in zip(la, lb))
print(f"score: {len(la)} tokens, max |Δ logp| CPU vs CUDA = {d:.2e}")
sys.exit(0 if len(la) == len(lb) and d < 1e-3 else 1)
PY

echo "== 3. GRPO on the GPU"
if "$rlx" run recipes/gsm8k_grpo.rlx --device cuda --steps 3 --quiet --eval-prompts 8 \
        --set policy.path="$work/small" --out "$work/grpo" > "$out/grpo.log" 2>&1; then
    cp "$work/grpo/metrics.jsonl" "$out/grpo-metrics.jsonl"; echo "ok   3 GRPO steps with LoRA"
else
    echo "FAIL GRPO on cuda (see $out/grpo.log)"; status=1
fi

echo "== 4. bf16 throughput, Qwen2.5-0.5B shape"
"$rlx" tiny-checkpoint "$work/q05" --family qwen2 --size 0.5b > /dev/null
"$rlx" bench --model "$work/q05" --bf16 --device cuda --only training --train-batch 8 --train-len 512 \
    --repeats 5 --warmup 2 --json > "$out/bench-train.json" || status=1
"$rlx" bench --model "$work/q05" --bf16 --device cuda --only sampling --batch 64 --prompt 128 \
    --new-tokens 128 --repeats 3 --warmup 1 --json > "$out/bench-sample.json" || status=1
"$py" - "$out" "${PEAK_TFLOPS:-989}" <<'PY' | tee "$out/gpu.md" || status=1
import json, statistics, sys
out, peak = sys.argv[1], float(sys.argv[2]) * 1e12
gpu = open(f"{out}/gpu.txt").read().strip()
print(f"| workload (bf16, {gpu}) | median s | tokens/s | MFU |\n|---|---|---|---|")
for name in ("train", "sample"):
    r = json.load(open(f"{out}/bench-{name}.json"))
    m, c, n = r["measurements"][0], r["config"], r["parameters"]
    s = statistics.median(m["seconds"])
    tps = m["tokens"] / s
    if name == "train":
        t = int(m["shape"].split("×")[1].split()[0])
        flops = 6 * n + 12 * c["layers"] * c["width"] * t
    else:
        flops = 2 * n
    print(f"| {m['name']} {m['shape']} | {s:.3f} | {tps:,.0f} | {100 * tps * flops / peak:.1f} % |")
PY
rm -rf "$work"
exit $status
