"""rlx against Hugging Face transformers and PEFT, on checkpoints transformers itself writes.

Run by `tests/interop/run.sh` (which makes the Python environment) with the rlx binary:

    python tests/interop/hf_interop.py path/to/rlx

Checks, for Llama, SmolLM (tied), Mistral, Qwen2 and Qwen3 checkpoints saved by
`save_pretrained` in transformers 5's layout (rope_parameters, dtype, chat_template.jinja):
  1. `rlx score --json` gives the token ids and per-token log-probs transformers gives;
  2. after `rlx run` with LoRA, RUN/models/policy loads in transformers (PEFT installed) with the
     trained logits, and RUN/adapters/policy loads with PEFT's AutoPeftModelForCausalLM to the
     same logits (the adapter applied once), and rlx reads both back to the same numbers;
  3. saved configs state one dtype, `save_dtype = source` keeps bf16, the chat template is kept;
  4. a built-in model saved in GPT-2's layout loads as GPT2LMHeadModel with rlx's log-probs;
  5. reward models transformers writes (`AutoModelForSequenceClassification`, one label, pad =
     EOS) for Llama, Mistral, Qwen2 and Qwen3, in transformers 5's and 4's config layouts, and
     GPT-2's:
     `rlx score` gives transformers' score, read at the last token that is not padding (texts
     ending in EOS included); RCfD trains one with LoRA in a `pairs` stage and uses it in RL, and
     the reward model rlx saves loads in transformers with no missing weight and the same score.
Prints what it measured; exits non-zero on the first failure.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedTokenizerFast)

RLX = os.path.abspath(sys.argv[1])
TEXT = "Natalia sold clips to 48 of her friends in April, and then half as many in May."
CHATML = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
    " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TINY = dict(vocab_size=272, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            initializer_range=0.2, eos_token_id=256)
FAMILIES = {
    "llama": ("LlamaConfig", dict(rope_theta=500000.0, bos_token_id=259, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}, attention_bias=True)),
    "smollm": ("LlamaConfig", dict(rope_theta=10000.0, bos_token_id=259, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(rope_theta=1e6, sliding_window=4096, bos_token_id=259)),
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(rope_theta=1e6, head_dim=16)),
}
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def rlx(*args):
    out = subprocess.run([RLX, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"rlx {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def rlx_score(model_dir, text=TEXT):
    return json.loads(rlx("score", model_dir, "--text", text, "--json").strip().splitlines()[-1])


def hf_logps(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def compare(name, model, tokenizer, model_dir, tol=2e-5):
    ids = tokenizer(TEXT)["input_ids"]
    ours = rlx_score(model_dir)
    check([t["id"] for t in ours["tokens"]] == ids, f"{name}: rlx tokenises as transformers")
    theirs = hf_logps(model, ids)
    mine = [t["logp"] for t in ours["tokens"][1:]]
    worst = max(abs(a - b) for a, b in zip(mine, theirs))
    nll = -sum(theirs)
    check(worst < tol and abs(ours["nll"] - nll) < 1e-3,
          f"{name}: log-probs match transformers (max |Δ| {worst:.2e}, NLL {ours['nll']:.4f} vs {nll:.4f})")
    return theirs


def tokenizer_from(tmp, bos):
    src = os.path.join(tmp, "tok-src")
    rlx("tiny-checkpoint", src, "--family", "llama" if bos else "qwen2")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(src, "tokenizer.json"),
                                  eos_token="<|endoftext|>",
                                  bos_token="<|begin_of_text|>" if bos else None)
    tok.chat_template = CHATML
    return tok


def write_checkpoint(tmp, family, dtype=torch.float32):
    cls_name, extra = FAMILIES[family]
    cfg = getattr(transformers, cls_name)(**{**TINY, **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    out = os.path.join(tmp, f"{family}-{str(dtype).split('.')[-1]}")
    model.save_pretrained(out)
    tokenizer_from(tmp, "bos_token_id" in extra).save_pretrained(out)
    return out


RECIPE = """recipe interop "two LoRA steps of supervised training"
data  gsm    = jsonl("{data}", prompt = "question", answer = "answer", eval = 2)
model policy = pretrained("{model}", lora_rank = 4, lora_alpha = 8, lora_targets = "q_proj,v_proj,down_proj", chat = true{extra})
stage sft {{
    train policy
    data  gsm.texts
    loss  = token_mean(nll(policy.logp))
    optim {{ lr = 5e-2, steps = 2, batch = 4 }}
}}
"""


RM_TEXTS = [TEXT, TEXT + "<|endoftext|>", TEXT + "<|endoftext|><|endoftext|>", "<|endoftext|>", "a"]

RCFD_HF = """recipe rcfd_hf "RCfD on a reward model transformers wrote"
data   reviews = builtin("reviews", prompts = 64)
model  policy  = pretrained("{policy}", lora_rank = 4, lora_alpha = 8)
model  rm      = reward_model(pretrained("{rm}", lora_rank = 4, lora_alpha = 8))
stage reward_model {{
    train rm
    pairs reviews.preferences
    loss  = seq_mean(pairwise_rm(rm(chosen), rm(rejected)))
    optim {{ lr = 1e-2, steps = 3, batch = 8 }}
}}
stage rl {{
    train   policy
    prompts reviews.prompts
    sample  {{ n = 1, max_tokens = 16 }}
    let r   = calibrate(rm(response), rm(demonstration), distance = squared)
    loss    = token_mean(ppo_clip(policy.logp, old.logp, spread(whiten(r, scope = batch)), eps = 0.3))
    optim   {{ lr = 1e-3, steps = 2, batch = 8 }}
}}
"""


def hf_rm_scores(model, tokenizer, texts):
    out = []
    for t in texts:
        with torch.no_grad():
            out.append(model(torch.tensor([tokenizer(t)["input_ids"]])).logits[0, 0].item())
    return out


def rlx_rm_scores(model_dir, texts):
    return [json.loads(rlx("score", model_dir, "--text", t, "--json"))["score"] for t in texts]


def to_v4(model_dir, out):
    """The same checkpoint with transformers 4's config layout (rope_theta and rope_scaling at the
    top level, torch_dtype)."""
    import shutil
    shutil.copytree(model_dir, out)
    cfg = json.load(open(os.path.join(out, "config.json")))
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rope
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    return out


def reward_models(tmp):
    for family in ["llama", "mistral", "qwen2", "qwen3"]:
        cls_name, extra = FAMILIES[family]
        cfg = getattr(transformers, cls_name)(**{**TINY, **extra}, num_labels=1, pad_token_id=256)
        torch.manual_seed(1)
        model = AutoModelForSequenceClassification.from_config(cfg).eval()
        d = os.path.join(tmp, f"rm-{family}")
        model.save_pretrained(d)
        tokenizer_from(tmp, "bos_token_id" in extra).save_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        theirs = hf_rm_scores(model, tok, RM_TEXTS)
        check(abs(theirs[0] - theirs[1]) < 1e-5 and abs(theirs[0] - theirs[2]) < 1e-5
              and abs(theirs[0] - theirs[4]) > 1e-3,
              f"{family} RM: transformers skips trailing padding (pad = EOS)")
        for layout, path in [("5", d), ("4", to_v4(d, d + "-v4"))]:
            mine = rlx_rm_scores(path, RM_TEXTS)
            worst = max(abs(a - b) for a, b in zip(mine, theirs))
            check(worst < 1e-5, f"{family} RM (transformers {layout} layout): rlx's scores are transformers' "
                                f"(max |Δ| {worst:.2e} over {len(RM_TEXTS)} texts)")
    # GPT-2's classifier (the trunk under `transformer.`, `score` without bias).
    cfg = transformers.GPT2Config(vocab_size=272, n_positions=512, n_embd=32, n_layer=2, n_head=4,
                                  num_labels=1, pad_token_id=256, eos_token_id=256, bos_token_id=None)
    torch.manual_seed(2)
    model = transformers.GPT2ForSequenceClassification(cfg).eval()
    d = os.path.join(tmp, "rm-gpt2")
    model.save_pretrained(d)
    tokenizer_from(tmp, False).save_pretrained(d)
    theirs = hf_rm_scores(model, AutoTokenizer.from_pretrained(d), RM_TEXTS)
    worst = max(abs(a - b) for a, b in zip(rlx_rm_scores(d, RM_TEXTS), theirs))
    check(worst < 1e-5, f"gpt2 RM: rlx's scores are transformers' (max |Δ| {worst:.2e} over {len(RM_TEXTS)} texts)")
    policy = write_checkpoint(tmp, "qwen2")
    recipe = os.path.join(tmp, "rcfd_hf.rlx")
    open(recipe, "w").write(RCFD_HF.format(policy=policy, rm=os.path.join(tmp, "rm-qwen2")))
    run = os.path.join(tmp, "run-rcfd-hf")
    rlx("run", recipe, "--quiet", "--eval-prompts", "2", "--out", run)
    saved = os.path.join(run, "models", "rm")
    trained, info = AutoModelForSequenceClassification.from_pretrained(saved, output_loading_info=True)
    check(not info["missing_keys"] and not info["unexpected_keys"],
          f"the RM rlx trained loads as {trained.config.architectures[0]} with every weight ({info})")
    theirs = hf_rm_scores(trained.eval(), AutoTokenizer.from_pretrained(saved), RM_TEXTS)
    before = hf_rm_scores(AutoModelForSequenceClassification.from_pretrained(
        os.path.join(tmp, "rm-qwen2")).eval(), AutoTokenizer.from_pretrained(saved), RM_TEXTS)
    worst = max(abs(a - b) for a, b in zip(rlx_rm_scores(saved, RM_TEXTS), theirs))
    moved = max(abs(a - b) for a, b in zip(before, theirs))
    check(worst < 1e-5 and moved > 1e-4,
          f"the trained RM: rlx's scores are transformers' (max |Δ| {worst:.2e}); training moved it ({moved:.2e})")


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    data = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "data", "gsm8k-sample.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RLX_CACHE"] = os.path.join(tmp, "cache")  # warm starts stay in the scratch dir
        # 1. Checkpoints saved by transformers 5 itself.
        for family in FAMILIES:
            d = write_checkpoint(tmp, family)
            cfg = json.load(open(os.path.join(d, "config.json")))
            check("rope_parameters" in cfg and "rope_theta" not in cfg,
                  f"{family}: transformers wrote rope_parameters only")
            model = AutoModelForCausalLM.from_pretrained(d).eval()
            compare(family, model, AutoTokenizer.from_pretrained(d), d)
        bf16 = write_checkpoint(tmp, "qwen2", torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.float32).eval()
        compare("qwen2 bf16", model, AutoTokenizer.from_pretrained(bf16), bf16)

        # 2./3. Train with LoRA, then load what rlx saved.
        for source, extra in [(os.path.join(tmp, "qwen2-float32"), ""), (bf16, ", save_dtype = source")]:
            recipe = os.path.join(tmp, "interop.rlx")
            open(recipe, "w").write(RECIPE.format(data=data, model=source, extra=extra))
            run = os.path.join(tmp, "run-" + os.path.basename(source))
            rlx("run", recipe, "--quiet", "--eval-prompts", "2", "--out", run)
            merged, adapter = os.path.join(run, "models", "policy"), os.path.join(run, "adapters", "policy")
            saved = json.load(open(os.path.join(merged, "config.json")))
            want = "bfloat16" if extra else "float32"
            check(saved.get("dtype") == want and saved.get("torch_dtype") == want,
                  f"saved config states one dtype ({saved.get('dtype')}, {saved.get('torch_dtype')}; want {want})")
            check(not os.path.exists(os.path.join(merged, "adapter_config.json")),
                  "the merged directory holds no adapter")
            check(os.path.exists(os.path.join(merged, "chat_template.jinja")), "the chat template is kept")
            tok = AutoTokenizer.from_pretrained(merged)
            check(tok.chat_template == CHATML, "transformers reads the saved chat template")
            ids = tok(TEXT)["input_ids"]
            trained = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
            base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
            t_merged, t_base = hf_logps(trained, ids), hf_logps(base, ids)
            moved = max(abs(a - b) for a, b in zip(t_merged, t_base))
            check(moved > 1e-3, f"training moved the model (max |Δ logp| {moved:.3f})")
            from peft import AutoPeftModelForCausalLM
            peft_model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32).eval()
            t_peft = hf_logps(peft_model, ids)
            ours_adapter = [t["logp"] for t in rlx_score(adapter)["tokens"][1:]]
            ours_merged = [t["logp"] for t in rlx_score(merged)["tokens"][1:]]
            d_adapter = max(abs(a - b) for a, b in zip(ours_adapter, t_peft))
            d_merged = max(abs(a - b) for a, b in zip(ours_merged, t_merged))
            check(d_adapter < 2e-5 and d_merged < 2e-5,
                  f"{want}: rlx and transformers/PEFT agree on both saved forms "
                  f"(adapter {d_adapter:.2e}, merged {d_merged:.2e})")
            # Merged in f32 the two forms are one model; a bf16 save rounds the merged weights.
            tol = 0.05 if extra else 2e-5
            d_forms = max(abs(a - b) for a, b in zip(t_peft, t_merged))
            check(d_forms < tol, f"{want}: adapter over the base = merged model (max |Δ| {d_forms:.2e})")

        # 4. A built-in model in GPT-2's layout.
        run = os.path.join(tmp, "run-builtin")
        rlx("run", "recipes/dpo.rlx", "--quiet", "--steps", "2", "--eval-prompts", "2",
            "--set", "policy.warm_steps=20", "--out", run)
        policy = os.path.join(run, "models", "policy")
        gpt2 = transformers.GPT2LMHeadModel.from_pretrained(policy).eval()
        tok = AutoTokenizer.from_pretrained(policy)
        text = "the food was great and the staff were friendly ."
        ids = tok(text)["input_ids"]
        ours = json.loads(rlx("score", policy, "--text", text, "--json"))
        check([t["id"] for t in ours["tokens"]] == ids, "GPT-2 layout: same ids (BOS first)")
        theirs = hf_logps(gpt2, ids)
        worst = max(abs(t["logp"] - b) for t, b in zip(ours["tokens"][1:], theirs))
        check(worst < 2e-5, f"GPT-2 layout: transformers' log-probs equal rlx's (max |Δ| {worst:.2e})")
        run = os.path.join(tmp, "run-rcfd")
        rlx("run", "recipes/rcfd.rlx", "--quiet", "--steps", "2", "--eval-prompts", "2",
            "--set", "policy.warm_steps=20", "--set", "reward_model.optim.steps=2", "--out", run)
        rm, info = transformers.GPT2ForSequenceClassification.from_pretrained(
            os.path.join(run, "models", "rm"), output_loading_info=True)
        check(not info["missing_keys"] and not info["unexpected_keys"],
              f"GPT-2 layout: the reward model loads as GPT2ForSequenceClassification ({info})")

        # 5. Reward models transformers writes.
        reward_models(tmp)
    if failures:
        raise SystemExit(f"{len(failures)} interop check(s) failed")
    print("all interop checks passed")


if __name__ == "__main__":
    main()
