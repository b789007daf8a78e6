"""rlx against PyTorch, transformers and TRL: the same work on the same shapes, checkpoints and
settings, measured in alternating rounds (rlx, then the peer, R times), each side in a fresh
process that times only the work (after an untimed warm-up). Per round the ratio is
peer seconds / rlx seconds (above 1: rlx is faster); the table reports each side's median
and the median of the per-round ratios.

Rows:
  train-tiny, train-small   forward + cross-entropy + backward + AdamW (clip 1.0) on random
                            GPT-2-shaped models (rlx's built-in transformer; transformers'
                            GPT2LMHeadModel of the same shape, untied head, gelu_new, no dropout)
  gemm-tiny, gemm-small     the training step's matrix products alone (every linear layer's
                            forward product and both backward ones, in each side's own
                            operand layouts): how the two GEMM libraries compare at these shapes
  sample-tiny, sample-small KV-cache sampling, exactly N new tokens per row (EOS masked), against
                            transformers' `generate(do_sample=True, top_k=0, min_new_tokens=N)`
  train-0.5b, sample-0.5b   the same on one random Qwen2.5-0.5B-shaped checkpoint
                            (`rlx tiny-checkpoint --size 0.5b`) loaded by both in float32
  grpo-tiny, grpo-small     one full GRPO step (sample 32 completions = 4 prompts × 8, up to 48
                            new tokens forced to 48, rewards, group advantages, one clipped
                            policy-gradient update) against TRL's GRPOTrainer with its defaults
                            (beta 0, loss "dapo", one iteration) on the same random Qwen2
                            checkpoint and GSM8K-format prompts of one length; f32 and no
                            gradient checkpointing on both sides (TRL's own defaults are bf16
                            and checkpointing); the median step time over steps 2..S

Usage: python compare.py --rlx target/release/rlx [--rounds 3] [--only ROW]... [--out DIR]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRST_ORDINARY_ID = 5  # rlx bench draws ids from [5, vocab): past the special tokens

GPT2_SHAPES = {
    "tiny": dict(layers=2, width=128, heads=4, vocab=512, context=256),
    "small": dict(layers=6, width=384, heads=6, vocab=8192, context=256),
}


# ---------------------------------------------------------------------------------------------
# Peer workers: each runs in its own process and prints {"seconds": [...]} on its last line.


def _threads(n):
    import torch

    torch.set_num_threads(n)
    torch.manual_seed(0)


def _random_ids(torch, rows, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_ORDINARY_ID, vocab, (rows, length), generator=g)


def _gpt2(shape):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=shape["vocab"],
        n_positions=shape["context"],
        n_embd=shape["width"],
        n_layer=shape["layers"],
        n_head=shape["heads"],
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
    )
    return GPT2LMHeadModel(cfg)


def _hf(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _model(shape):
    """A GPT-2 shape by name, or a checkpoint directory."""
    return _gpt2(GPT2_SHAPES[shape]) if shape in GPT2_SHAPES else _hf(shape)


def _timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def worker_train(a):
    import torch

    _threads(a.threads)
    model = _model(a.shape)
    model.train()
    vocab = model.config.vocab_size
    ids = _random_ids(torch, a.batch, a.length, vocab, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, a.warmup, a.repeats)


def worker_sample(a):
    import torch

    _threads(a.threads)
    model = _model(a.shape)
    model.eval()
    vocab = model.config.vocab_size
    ids = _random_ids(torch, a.batch, a.prompt, vocab, 2)
    mask = torch.ones_like(ids)
    eos = model.config.eos_token_id if model.config.eos_token_id is not None else 0

    def sample():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_new_tokens=a.new,
                max_new_tokens=a.new,
                pad_token_id=eos,
                eos_token_id=eos,
            )
        assert out.shape == (a.batch, a.prompt + a.new), out.shape

    return _timed(sample, a.warmup, a.repeats)


def write_prompts(path, count=64, length=100):
    """GSM8K-format questions all `length` characters long: with the checkpoints' byte-level
    tokenizer every prompt is the same number of tokens, so both sides do the same work whichever
    prompts their data order picks."""
    import random

    r = random.Random(0)
    with open(path, "w") as f:
        for _ in range(count):
            a, b = r.randint(10, 99), r.randint(10, 99)
            q = f"Sam has {a} apples and buys {b} more. How many apples does Sam have now? Think step by step."
            f.write(json.dumps({"question": q[:length].ljust(length, "."), "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}) + "\n")


def gsm8k_answer(text):
    """The number after `####` (the GSM8K format rlx's `format = "gsm8k"` verifier reads)."""
    if "####" not in text:
        return None
    tail = text.split("####")[-1].strip().replace(",", "")
    return tail.split()[0] if tail else None


def worker_grpo(a):
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    _threads(a.threads)
    rows = [json.loads(line) for line in open(a.data) if line.strip()]
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["question"]}], "answer": gsm8k_answer(r["answer"])} for r in rows]
    )

    def correct(completions, answer, **_):
        return [float(gsm8k_answer(c[0]["content"]) == ans) for c, ans in zip(completions, answer)]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.t0)

    times = StepTimes()
    cfg = GRPOConfig(
        output_dir=a.out,
        per_device_train_batch_size=a.batch,
        num_generations=a.n,
        max_completion_length=a.new,
        generation_kwargs={"min_new_tokens": a.new},
        temperature=1.0,
        learning_rate=1e-6,
        max_grad_norm=1.0,
        max_steps=a.steps,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=a.shape, reward_funcs=correct, args=cfg, train_dataset=data, callbacks=[times])
    trainer.train()
    # Same work as rlx's side: every completion exactly `new` tokens long.
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    assert lengths and all(abs(x - a.new) < 1e-9 for x in lengths), f"TRL completion lengths {lengths}"
    return times.seconds[1:]


def worker_gemm(a):
    """The training step's matrix products alone, as torch's autograd computes them for each
    layer: GPT-2's Conv1D ([in, out]) x·W, dy·Wᵀ, xᵀ·dy; nn.Linear ([out, in]) x·Wᵀ, dy·W, dyᵀ·x."""
    import torch

    _threads(a.threads)
    model = _model(a.shape)
    rows = a.batch * a.length
    g = torch.Generator().manual_seed(3)
    cases = []
    for m in model.modules():
        if type(m).__name__ == "Conv1D":
            i, o = m.weight.shape
            conv = True
        elif isinstance(m, torch.nn.Linear):
            o, i = m.weight.shape
            conv = False
        else:
            continue
        cases.append((conv, torch.randn(rows, i, generator=g), m.weight.detach(), torch.randn(rows, o, generator=g)))

    def products():
        with torch.no_grad():
            for conv, x, w, dy in cases:
                if conv:
                    x @ w
                    dy @ w.t()
                    x.t() @ dy
                else:
                    x @ w.t()
                    dy @ w
                    dy.t() @ x

    return _timed(products, a.warmup, a.repeats)


WORKERS = {"train": worker_train, "sample": worker_sample, "grpo": worker_grpo, "gemm": worker_gemm}


# ---------------------------------------------------------------------------------------------
# The rlx side.


def rlx_bench(rlx, shape_args, only, extra, threads):
    out = subprocess.run(
        [rlx, "bench", *shape_args, "--only", only, "--json", *extra],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
    ).stdout
    report = json.loads(out)
    return report["measurements"][0]["seconds"]


GRPO_RECIPE = """# The GRPO step benches/peers/compare.py times against TRL's GRPOTrainer (TRL's defaults).
recipe bench_grpo "GRPO step, TRL's defaults"

data  gsm8k  = jsonl("{data}", prompt = "question", answer = "answer", format = "gsm8k")
model policy = pretrained("{model}", chat = true)

stage rl {{
    train   policy
    prompts gsm8k.problems
    sample  {{ n = {n}, max_tokens = {new}, min_tokens = {new}, temperature = 1.0 }}

    let adv = group_zscore(gsm8k.correct(response), eps = 1e-4, var = unbiased, singleton = zero)
    let pg  = ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.2, eps_high = 0.2, max_log_ratio = none)
    loss    = token_mean(pg)

    optim {{ lr = 1e-6, steps = {steps}, batch = {batch}, minibatch = {batch}, epochs = 1, clip_grad = 1.0 }}
}}
"""


def rlx_grpo(rlx, model, work, p, threads):
    recipe = Path(work) / "bench_grpo.rlx"
    recipe.write_text(
        GRPO_RECIPE.format(data=Path(work) / "grpo_prompts.jsonl", model=model, n=p["n"], new=p["new"], steps=p["steps"], batch=p["batch"])
    )
    run = Path(work) / "rlx_grpo_run"
    subprocess.run(
        [rlx, "run", str(recipe), "--out", str(run), "--force", "--quiet", "--eval-prompts", "1", "--eval-samples", "1"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
    )
    steps = [json.loads(line) for line in open(run / "metrics.jsonl") if '"seconds"' in line and '"eval"' not in line]
    return [s["seconds"] for s in steps][1:]


# ---------------------------------------------------------------------------------------------
# Rows, rounds and the report.


def gpt2_flags(shape):
    s = GPT2_SHAPES[shape]
    return ["--layers", str(s["layers"]), "--width", str(s["width"]), "--heads", str(s["heads"]),
            "--vocab", str(s["vocab"]), "--context", str(s["context"])]


def rows(args, work):
    """(name, what, peer name, rlx thunk, peer worker args)."""
    r = []
    reps = ["--repeats", str(args.repeats), "--warmup", "1"]
    for shape in ("tiny", "small"):
        flags = gpt2_flags(shape)
        s = GPT2_SHAPES[shape]
        label = f"{s['layers']} L × {s['width']}, vocab {s['vocab']}"
        r.append((f"train-{shape}", f"training step, {label}, 16 × 64", "torch",
                  lambda f=flags: rlx_bench(args.rlx, f, "training", ["--train-batch", "16", "--train-len", "64", *reps], args.threads),
                  ["train", "--shape", shape, "--batch", "16", "--length", "64"]))
        r.append((f"gemm-{shape}", f"the training step's matmuls alone, {label}, 16 × 64", "torch",
                  lambda f=flags: rlx_bench(args.rlx, f, "matmuls", ["--train-batch", "16", "--train-len", "64", *reps], args.threads),
                  ["gemm", "--shape", shape, "--batch", "16", "--length", "64"]))
        r.append((f"sample-{shape}", f"sampling, {label}, 32 × (16 + 48 new)", "HF generate",
                  lambda f=flags: rlx_bench(args.rlx, f, "sampling", ["--batch", "32", "--prompt", "16", "--new-tokens", "48", *reps], args.threads),
                  ["sample", "--shape", shape, "--batch", "32", "--prompt", "16", "--new", "48"]))
    q05 = str(work / "models/qwen2.5-0.5b-shape")
    r.append(("train-0.5b", "training step, Qwen2.5-0.5B shape, 2 × 64", "transformers",
              lambda: rlx_bench(args.rlx, ["--model", q05], "training", ["--train-batch", "2", "--train-len", "64", "--repeats", "3", "--warmup", "1"], args.threads),
              ["train", "--shape", q05, "--batch", "2", "--length", "64", "--repeats", "3"]))
    r.append(("sample-0.5b", "sampling, Qwen2.5-0.5B shape, 4 × (16 + 16 new)", "HF generate",
              lambda: rlx_bench(args.rlx, ["--model", q05], "sampling", ["--batch", "4", "--prompt", "16", "--new-tokens", "16", "--repeats", "3", "--warmup", "1"], args.threads),
              ["sample", "--shape", q05, "--batch", "4", "--prompt", "16", "--new", "16", "--repeats", "3"]))
    grpo = dict(n=8, new=48, batch=32, steps=args.grpo_steps)
    for size in ("tiny", "small"):
        model = str(work / f"models/qwen2-{size}")
        r.append((f"grpo-{size}", f"GRPO step, Qwen2 {size} checkpoint, 32 × 48", "TRL GRPOTrainer",
                  lambda m=model: rlx_grpo(args.rlx, m, work, grpo, args.threads),
                  ["grpo", "--shape", model, "--data", str(work / "grpo_prompts.jsonl"), "--batch", "32",
                   "--n", "8", "--new", "48", "--steps", str(args.grpo_steps), "--out", str(work / "trl_out")]))
    return r


def checkpoints(args, work, wanted):
    """The random checkpoints the rows need, written once by `rlx tiny-checkpoint`."""
    need = {"train-0.5b": ("qwen2.5-0.5b-shape", "0.5b"), "sample-0.5b": ("qwen2.5-0.5b-shape", "0.5b"),
            "grpo-tiny": ("qwen2-tiny", "tiny"), "grpo-small": ("qwen2-small", "small")}
    for row in wanted:
        if row in need:
            name, size = need[row]
            d = work / "models" / name
            if not (d / "config.json").exists():
                subprocess.run([args.rlx, "tiny-checkpoint", str(d), "--family", "qwen2", "--size", size],
                               check=True, capture_output=True)


def peer(worker_args, args):
    cmd = [sys.executable, __file__, "--worker", *worker_args, "--threads", str(args.threads)]
    if "--repeats" not in worker_args:
        cmd += ["--repeats", str(args.repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def cpu_description():
    """The CPU model and its vector instruction sets: AVX2-only and AVX-512 machines give
    different ratios (rlx's kernels and candle's matmuls pick the widest the CPU has)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"]
    return {"model": model, "features": [f for f in wanted if f in flags]}


def kernels_used(rlx, threads):
    """Which kernels each side actually runs, as each reports it (not what the CPU has: a build
    without rlx's `avx512` feature, `RLX_SIMD`, or torch's `ATEN_CPU_CAPABILITY` /
    `ONEDNN_MAX_CPU_ISA` / `MKL_ENABLE_INSTRUCTIONS` cap them below it)."""
    import torch

    out = subprocess.run(
        [rlx, "bench", "--layers", "1", "--width", "32", "--heads", "1", "--vocab", "64", "--context", "256",
         "--only", "training", "--train-batch", "1", "--train-len", "8", "--repeats", "1", "--warmup", "0", "--json"],
        check=True, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
    ).stdout
    cpu = json.loads(out)["cpu"]
    torch_caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ}
    return {
        "rlx": cpu["kernels"],
        "rlx_matmuls": cpu.get("matmuls", "as the CPU"),
        "torch": torch.backends.cpu.get_cpu_capability(),
        "torch_caps": torch_caps,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rlx", default=str(REPO / "target/release/rlx"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per side per round (median taken)")
    ap.add_argument("--grpo-steps", type=int, default=6, help="GRPO steps per side per round (the first is warm-up)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--out", default=str(REPO / "target/bench-peers"))
    # Worker mode (internal): one peer measurement.
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--shape")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--length", type=int)
    ap.add_argument("--prompt", type=int)
    ap.add_argument("--new", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--data")
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps({"seconds": WORKERS[args.worker](args)}))
        return

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    all_rows = rows(args, work)
    names = [r[0] for r in all_rows]
    unknown = [o for o in args.only if o not in names]
    if unknown:
        sys.exit(f"unknown row(s) {unknown}; rows: {', '.join(names)}")
    chosen = [r for r in all_rows if not args.only or r[0] in args.only]
    checkpoints(args, work, [r[0] for r in chosen])
    write_prompts(work / "grpo_prompts.jsonl")

    import torch
    import transformers
    import trl

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl.__version__}"
    cpu = cpu_description()
    cpu["kernels"] = kernels_used(args.rlx, args.threads)
    k = cpu["kernels"]
    caps = "".join(f", {n}={v}" for n, v in k["torch_caps"].items())
    machine = (f"{cpu['model']} ({', '.join(cpu['features'])}; rlx's kernels {k['rlx']}, its matmuls "
               f"{k['rlx_matmuls']}; torch's ATen {k['torch']}{caps})")
    print(f"{len(chosen)} rows × {args.rounds} rounds, {args.threads} threads; {versions}; {machine}", file=sys.stderr)
    results = []
    for name, what, peer_name, rlx_fn, worker_args in chosen:
        rounds = []
        for i in range(args.rounds):
            mine = statistics.median(rlx_fn())
            theirs = statistics.median(peer(worker_args, args))
            rounds.append({"rlx": mine, "peer": theirs, "ratio": theirs / mine})
            print(f"  {name} round {i + 1}: rlx {mine:.4f} s, {peer_name} {theirs:.4f} s, ratio {theirs / mine:.2f}",
                  file=sys.stderr)
        results.append({
            "row": name, "what": what, "peer": peer_name, "rounds": rounds,
            "rlx_seconds": statistics.median(r["rlx"] for r in rounds),
            "peer_seconds": statistics.median(r["peer"] for r in rounds),
            "ratio": statistics.median(r["ratio"] for r in rounds),
        })

    lines = [
        f"| figure | rlx (s) | peer (s) | ratio (peer time / rlx time) |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['what']} | {r['rlx_seconds']:.4g} | {r['peer']} {r['peer_seconds']:.4g} | **{r['ratio']:.2f}×** |")
    table = "\n".join(lines)
    footer = f"\n\n{args.rounds} alternating rounds, medians; {args.threads} threads on {machine}; {versions}."
    (work / "peers.md").write_text(table + footer + "\n")
    (work / "peers.json").write_text(json.dumps({"versions": versions, "threads": args.threads, "cpu": cpu, "rows": results}, indent=1))
    print(table + footer)


if __name__ == "__main__":
    main()
