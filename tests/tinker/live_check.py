"""The adapters rlx pulled back from the live SkyRL server, read by transformers + PEFT.

Usage: live_check.py RUNS_DIR BASE_DIR

Every `RUNS_DIR/*/adapters/NAME` must load over the base checkpoint with PEFT with an adapter
on every module its safetensors file holds (SkyRL writes `target_modules: null`, which PEFT
would read as its per-architecture defaults, dropping the MLP's adapters; rlx names them), its
`base_model_name_or_path` must be the base, and the adapted model must differ from the base
(the server trained it) while staying finite. rlx itself already checked, inside each run,
that its own forward of the adapter gives the server's log-probabilities on a probe.
"""

import glob
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

runs, base_dir = sys.argv[1], sys.argv[2]
adapters = sorted(glob.glob(os.path.join(runs, "*", "adapters", "*")))
assert adapters, f"no adapters pulled under {runs}"
tok = AutoTokenizer.from_pretrained(base_dir)
ids = torch.tensor([tok("12 + 7 * 3\n12 + 7 = 19\n19 * 3 = 57\n")["input_ids"]])
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
with torch.no_grad():
    base_logits = base(ids).logits
for adapter in adapters:
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert os.path.realpath(cfg["base_model_name_or_path"]) == os.path.realpath(base_dir), cfg
    with safe_open(os.path.join(adapter, "adapter_model.safetensors"), "pt") as f:
        a_tensors = [k for k in f.keys() if "lora_A" in k]
    fresh = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(fresh, adapter).eval()
    loaded = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(loaded) == len(a_tensors), f"{adapter}: PEFT applied {len(loaded)} of {len(a_tensors)} adapters"
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all(), adapter
    moved = (logits - base_logits).abs().max().item()
    assert moved > 1e-6, f"{adapter}: the adapted model is the base ({moved:.2e})"
    name = os.path.relpath(adapter, runs)
    print(f"{name}: PEFT loads {len(loaded)} adapters over the base; max |Δ logit| vs the base {moved:.2e}")
