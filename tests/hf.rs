//! Hugging Face checkpoints: rlx's Llama-family implementation against candle-transformers'
//! llama, qwen2 and qwen3 on the same tiny random checkpoints (written in HF's layout to a
//! temporary directory), its training path against finite differences, and saved policies
//! loading back into candle-transformers with the same logits.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::VarBuilder;
use rlx::model::hf_tiny;
use rlx::model::transformer::{Heads, init_params};
use rlx::model::{Layout, LlamaSpec, LoraSpec, ModelConfig, Transformer, hf};

const IDS: [u32; 9] = [259, 72, 101, 108, 108, 111, 32, 119, 33];

fn rlx_model(dir: &Path, lora: Option<LoraSpec>, bf16: bool) -> (Transformer, hf::Checkpoint) {
    let ck = hf::load(dir, &Device::Cpu).unwrap();
    let cfg = ModelConfig::llama(LlamaSpec { hf: ck.cfg.clone(), lora, bf16 });
    (Transformer::from_tensors(&cfg, &ck.weights).unwrap(), ck)
}

/// rlx's logits `[L, V]` for `ids` as one row, left-padded by `pad` columns in a batch with a
/// second, longer row (so padding, positions and masks are exercised).
fn rlx_logits(model: &Transformer, ids: &[u32], pad: usize, grad: bool) -> Tensor {
    let longer: Vec<u32> = std::iter::repeat_n(65u32, pad).chain(ids.iter().copied()).collect();
    let (ctx_a, text_a) = ids.split_at(1);
    let (ctx_b, text_b) = longer.split_at(1 + pad);
    let layout = Layout::new(&[ctx_a, ctx_b], &[text_a, text_b], &Device::Cpu).unwrap();
    let hidden = model.hidden_of(&layout, grad).unwrap();
    let logits = model.logits(&hidden).unwrap();
    // Row 0: its prompt token sits at column `prompt_len - 1`, text follows.
    logits.i(0).unwrap().narrow(0, layout.prompt_len - 1, ids.len()).unwrap()
}

/// candle-transformers' logits `[L, V]`, one token at a time through its KV cache.
fn oracle_logits(dir: &Path, family: &str) -> Tensor {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut tensors = HashMap::new();
    for f in hf::weight_files(dir).unwrap() {
        tensors.extend(candle_core::safetensors::load(&f, &Device::Cpu).unwrap());
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let dev = &Device::Cpu;
    let mut rows = Vec::new();
    match family {
        "qwen2" => {
            use candle_transformers::models::qwen2;
            let cfg: qwen2::Config = serde_json::from_str(&text).unwrap();
            let mut m = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
            for (i, &t) in IDS.iter().enumerate() {
                let x = Tensor::new(&[[t]], dev).unwrap();
                rows.push(m.forward(&x, i).unwrap().flatten_all().unwrap());
            }
        }
        "qwen3" => {
            use candle_transformers::models::qwen3;
            let cfg: qwen3::Config = serde_json::from_str(&text).unwrap();
            let mut m = qwen3::ModelForCausalLM::new(&cfg, vb).unwrap();
            for (i, &t) in IDS.iter().enumerate() {
                let x = Tensor::new(&[[t]], dev).unwrap();
                rows.push(m.forward(&x, i).unwrap().flatten_all().unwrap());
            }
        }
        _ => {
            // Llama, SmolLM and Mistral (Llama's computation below the sliding window).
            use candle_transformers::models::llama;
            let cfg: llama::LlamaConfig = serde_json::from_str(&text).unwrap();
            let cfg = cfg.into_config(false);
            let m = llama::Llama::load(vb, &cfg).unwrap();
            let mut cache = llama::Cache::new(true, DType::F32, &cfg, dev).unwrap();
            for (i, &t) in IDS.iter().enumerate() {
                let x = Tensor::new(&[[t]], dev).unwrap();
                rows.push(m.forward(&x, i, &mut cache).unwrap().flatten_all().unwrap());
            }
        }
    }
    Tensor::stack(&rows, 0).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn logits_match_candle_transformers_for_every_family() {
    for family in hf_tiny::TINY_FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        // Llama is written in three shards with an index, as large checkpoints are.
        let shards = if *family == "llama" { 3 } else { 1 };
        hf_tiny::write(dir.path(), family, shards, 7).unwrap();
        let oracle = oracle_logits(dir.path(), family);
        let (model, _) = rlx_model(dir.path(), None, false);
        for (grad, pad) in [(false, 0), (true, 0), (false, 3), (true, 2)] {
            let ours = rlx_logits(&model, &IDS, pad, grad);
            let d = max_diff(&ours, &oracle);
            assert!(d < 2e-5, "{family} (grad {grad}, pad {pad}): max |Δlogit| = {d}");
        }
        let scale: f32 = oracle.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(
            scale > 0.1,
            "{family}: logits too small ({scale}) for the comparison to mean much"
        );
    }
}

/// A checkpoint in transformers 5's layout (`rope_parameters`, `dtype`, chat_template.jinja)
/// gives exactly the logits of the same weights in the 4.x layout, which candle-transformers
/// reads: the rotary base (1e6 for Qwen, 5e5 with llama3 scaling for Llama) is not lost.
#[test]
fn transformers_5_layout_gives_the_same_logits() {
    use hf_tiny::{ConfigStyle, TinySpec};
    for family in hf_tiny::TINY_FAMILIES {
        let (v4, v5) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let spec = TinySpec { seed: 9, ..TinySpec::new(family) };
        hf_tiny::write_tiny(v4.path(), &spec).unwrap();
        hf_tiny::write_tiny(v5.path(), &TinySpec { style: ConfigStyle::V5, ..spec }).unwrap();
        let config = std::fs::read_to_string(v5.path().join("config.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert!(doc.get("rope_parameters").is_some() && doc.get("rope_theta").is_none());
        let oracle = oracle_logits(v4.path(), family);
        let (model, _) = rlx_model(v5.path(), None, false);
        let d = max_diff(&rlx_logits(&model, &IDS, 2, false), &oracle);
        assert!(d < 2e-5, "{family}: transformers 5 layout differs by {d}");
        // Reading the rotary base wrongly is not a small error: the check can see it.
        if *family != "smollm" {
            let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
            cfg["rope_parameters"]["rope_theta"] = 10000.0.into();
            std::fs::write(v5.path().join("config.json"), cfg.to_string()).unwrap();
            let (wrong, _) = rlx_model(v5.path(), None, false);
            let d = max_diff(&rlx_logits(&wrong, &IDS, 2, false), &oracle);
            assert!(d > 1e-3, "{family}: theta 10000 gives the same logits ({d})");
        }
    }
}

/// transformers looks for the chat template in chat_template.jinja first, then in
/// tokenizer_config.json (a string, or named templates), then in chat_template.json.
#[test]
fn chat_templates_are_read_from_every_place_transformers_writes_them() {
    use hf_tiny::{CHATML, ConfigStyle, TinySpec};
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec { style: ConfigStyle::V5, ..TinySpec::new("qwen2") };
    hf_tiny::write_tiny(dir.path(), &spec).unwrap();
    let prompt = |d: &Path| {
        let tok = rlx::tokenizer::from_hf_dir(d, true).unwrap();
        tok.decode(&tok.prompt("Hi"))
    };
    assert_eq!(prompt(dir.path()), "user\nHi\nassistant\n");
    let jinja = dir.path().join("chat_template.jinja");
    std::fs::remove_file(&jinja).unwrap();
    let err = rlx::tokenizer::from_hf_dir(dir.path(), true).err().unwrap();
    assert!(err.contains("no chat template"), "{err}");
    // Named templates, as transformers 4 saved several.
    let config = dir.path().join("tokenizer_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["chat_template"] = serde_json::json!([{"name": "tool_use", "template": "x"},
        {"name": "default", "template": CHATML}]);
    std::fs::write(&config, c.to_string()).unwrap();
    assert_eq!(prompt(dir.path()), "user\nHi\nassistant\n");
    // The .jinja file wins over the config.
    std::fs::write(&jinja, "{{ messages[0].content }}!").unwrap();
    assert_eq!(prompt(dir.path()), "Hi!");
}

/// The config decides the architecture, as in transformers: a weight it does not account for
/// (here a bias transformers would ignore) is an error, not silently used or dropped.
#[test]
fn weights_the_config_does_not_use_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    hf_tiny::write(dir.path(), "llama", 1, 1).unwrap();
    let path = dir.path().join("model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    w.insert(
        "model.layers.0.self_attn.o_proj.bias".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, &path).unwrap();
    let err = hf::load(dir.path(), &Device::Cpu).err().unwrap();
    assert!(err.contains("o_proj.bias") && err.contains("attention_bias"), "{err}");
    // With `attention_bias`, q/k/v/o biases are all required, and used.
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["attention_bias"] = true.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = hf::load(dir.path(), &Device::Cpu).err().unwrap();
    assert!(err.contains("no weight `model.layers.0.self_attn.q_proj.bias`"), "{err}");
}

#[test]
fn bf16_compute_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    hf_tiny::write(dir.path(), "qwen2", 1, 3).unwrap();
    let (f32_model, _) = rlx_model(dir.path(), None, false);
    let (bf16_model, _) = rlx_model(dir.path(), None, true);
    let a = rlx_logits(&f32_model, &IDS, 1, true);
    let b = rlx_logits(&bf16_model, &IDS, 1, true);
    assert_eq!(b.dtype(), DType::F32);
    let d = max_diff(&a, &b);
    assert!(d < 0.05, "bf16 vs f32: max |Δlogit| = {d}");
}

/// Loss `Σ logits · w` for a fixed random `w`, through the training path.
fn loss_of(model: &Transformer, w: &Tensor) -> Tensor {
    (rlx_logits(model, &IDS, 1, true) * w).unwrap().sum_all().unwrap()
}

#[test]
fn training_path_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    hf_tiny::write(dir.path(), "qwen3", 1, 11).unwrap();
    let ck = hf::load(dir.path(), &Device::Cpu).unwrap();
    let lora = LoraSpec { rank: 2, alpha: 4.0, targets: vec!["q_proj".into(), "v_proj".into()] };
    let cfg = ModelConfig::llama(LlamaSpec { hf: ck.cfg.clone(), lora: Some(lora), bf16: false });
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    for (k, v) in &ck.weights {
        vars.insert(k.clone(), Var::from_tensor(v).unwrap());
    }
    let mut rng = rlx::rng::Rng::new(5);
    for (name, shape) in [
        ("model.layers.0.self_attn.q_proj.lora_A.weight", [2, 32]),
        ("model.layers.0.self_attn.q_proj.lora_B.weight", [64, 2]),
    ] {
        let data: Vec<f32> = (0..shape[0] * shape[1]).map(|_| 0.1 * rng.normal() as f32).collect();
        vars.insert(
            name.into(),
            Var::from_tensor(&Tensor::from_vec(data, &shape, &Device::Cpu).unwrap()).unwrap(),
        );
    }
    // A fixed random `w` (an unseeded one made the test's outcome vary from run to run).
    let mut wrng = rlx::rng::Rng::new(13);
    let wv: Vec<f32> = (0..IDS.len() * 272).map(|_| wrng.normal() as f32).collect();
    let w = Tensor::from_vec(wv, (IDS.len(), 272), &Device::Cpu).unwrap();
    let build = |vars: &BTreeMap<String, Var>| {
        let map: BTreeMap<String, Tensor> =
            vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        Transformer::from_tensors(&cfg, &map).unwrap()
    };
    let grads = loss_of(&build(&vars), &w).backward().unwrap();
    // One entry of each kind of weight: embedding, q-norm (Qwen3), attention, MLP, final norm,
    // and both LoRA factors.
    for (name, index) in [
        ("model.embed_tokens.weight", 72 * 32 + 5),
        ("model.layers.0.self_attn.q_norm.weight", 3),
        ("model.layers.0.self_attn.k_proj.weight", 17),
        ("model.layers.1.mlp.gate_proj.weight", 40),
        ("model.layers.1.input_layernorm.weight", 9),
        ("model.norm.weight", 30),
        ("model.layers.0.self_attn.q_proj.lora_A.weight", 11),
        ("model.layers.0.self_attn.q_proj.lora_B.weight", 21),
    ] {
        let var = &vars[name];
        let analytic: f32 = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .get(index)
            .unwrap()
            .to_scalar()
            .unwrap();
        let original = var.as_tensor().copy().unwrap();
        let shift = |h: f32| {
            let mut flat = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            flat[index] += h;
            var.set(&Tensor::from_vec(flat, original.shape(), &Device::Cpu).unwrap()).unwrap();
            let l: f32 = loss_of(&build(&vars), &w).to_scalar().unwrap();
            l
        };
        // Central differences with Richardson extrapolation, (4·D(h/2) − D(h))/3: the h² term
        // cancels (a 1e-2 step is large against 0.02-scale embedding entries under RMS norm).
        let h = 1e-2;
        let central = |h: f32| (shift(h) - shift(-h)) / (2.0 * h);
        let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        var.set(&original).unwrap();
        let tol = 2e-2 * analytic.abs().max(1.0);
        assert!(
            (analytic - numeric).abs() < tol,
            "{name}[{index}]: analytic {analytic}, numeric {numeric}"
        );
    }
}

#[test]
fn saved_checkpoints_load_into_candle_transformers_with_the_same_logits() {
    for family in ["qwen2", "llama"] {
        let src = tempfile::tempdir().unwrap();
        hf_tiny::write(src.path(), family, 1, 21).unwrap();
        let ck = hf::load(src.path(), &Device::Cpu).unwrap();
        // A LoRA update: saved merged into the weights, and as a PEFT adapter.
        let lora =
            LoraSpec { rank: 2, alpha: 8.0, targets: vec!["v_proj".into(), "down_proj".into()] };
        let mut weights = ck.weights.clone();
        for (module, a, b) in hf::lora_names(&ck.cfg, &lora) {
            let w = &weights[&format!("{module}.weight")];
            let (o, i) = w.dims2().unwrap();
            weights.insert(a, Tensor::randn(0f32, 0.3, (2, i), &Device::Cpu).unwrap());
            weights.insert(b, Tensor::randn(0f32, 0.3, (o, 2), &Device::Cpu).unwrap());
        }
        let cfg = ModelConfig::llama(LlamaSpec {
            hf: ck.cfg.clone(),
            lora: Some(lora.clone()),
            bf16: false,
        });
        let adapted = Transformer::from_tensors(&cfg, &weights).unwrap();
        let ours = rlx_logits(&adapted, &IDS, 0, false);
        let out = tempfile::tempdir().unwrap();
        let adapter_dir = tempfile::tempdir().unwrap();
        hf::save(
            out.path(),
            src.path(),
            &ck.raw_config,
            &ck.cfg,
            &weights,
            Some(&lora),
            DType::F32,
        )
        .unwrap();
        hf::save_adapter(adapter_dir.path(), src.path(), &ck.cfg, &weights, &lora).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            assert!(out.path().join(f).exists(), "{family}: no {f}");
        }
        // The adapter lives alone: beside merged weights PEFT would apply it a second time.
        assert!(!out.path().join("adapter_config.json").exists());
        let theirs = oracle_logits(out.path(), family);
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-4, "{family}: saved model's logits differ by {d}");
        let before = oracle_logits(src.path(), family);
        assert!(max_diff(&before, &theirs) > 1e-3, "{family}: the adapter changed nothing");
        let adapter = candle_core::safetensors::load(
            adapter_dir.path().join("adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(adapter.len(), 2 * 2 * ck.cfg.num_hidden_layers);
        assert!(
            adapter.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight")
        );
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(adapter_dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(2), Some(8.0)));
        let base = std::path::PathBuf::from(config["base_model_name_or_path"].as_str().unwrap());
        assert!(base.is_absolute() && base.join("config.json").exists(), "{base:?}");
        // rlx reads the adapter back over its base: the same model as the merged directory.
        let loaded = rlx::inspect::load(adapter_dir.path(), false, &Device::Cpu).unwrap();
        let d = max_diff(&rlx_logits(&loaded.model, &IDS, 0, false), &ours);
        assert!(d < 2e-5, "{family}: adapter read back differs by {d}");
    }
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = hf::load(&dir.path().join("nope"), &Device::Cpu).err().unwrap();
    assert!(err.contains("does not exist"), "{err}");
    hf_tiny::write(dir.path(), "llama", 1, 1).unwrap();
    // A weight missing.
    let path = dir.path().join("model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    w.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&w, &path).unwrap();
    let err = hf::load(dir.path(), &Device::Cpu).err().unwrap();
    assert!(err.contains("no weight `model.layers.1.mlp.up_proj.weight`"), "{err}");
    // A shape that disagrees with config.json.
    w.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        Tensor::zeros((64, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, &path).unwrap();
    let err = hf::load(dir.path(), &Device::Cpu).err().unwrap();
    assert!(err.contains("has shape [64, 16], config.json implies [64, 32]"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = hf::load(dir.path(), &Device::Cpu).err().unwrap();
    assert!(err.contains("no model.safetensors"), "{err}");
}

#[test]
fn hf_tokenizers_give_their_special_ids_and_chat_prompts() {
    let dir = tempfile::tempdir().unwrap();
    hf_tiny::write(dir.path(), "llama", 1, 1).unwrap();
    let tok = rlx::tokenizer::from_hf_dir(dir.path(), false).unwrap();
    assert_eq!((tok.bos, tok.eos), (Some(259), 256));
    assert_eq!(tok.prompt("Hi"), vec![259, 72, 105]);
    assert_eq!(tok.response("Hi\n"), vec![72, 105, 10, 256]);
    assert_eq!(tok.piece(10), "\n"); // byte-level `Ċ` read as text
    let qwen = tempfile::tempdir().unwrap();
    hf_tiny::write(qwen.path(), "qwen2", 1, 1).unwrap();
    let tok = rlx::tokenizer::from_hf_dir(qwen.path(), true).unwrap();
    assert_eq!(tok.bos, None);
    let chat = tok.decode(&tok.prompt("Hi"));
    assert_eq!(chat, "user\nHi\nassistant\n"); // specials dropped by decode
    let ids = tok.prompt("Hi");
    assert_eq!(ids[0], 257); // <|im_start|>
    assert_eq!(tok.context_and_text("ab"), (vec![97], vec![98, 256]));
}

fn rlx_cli() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rlx"));
    c.env("RLX_CACHE", std::env::temp_dir().join("rlx-test-cache"));
    c
}

/// A recipe over a local checkpoint and JSON-lines file: a supervised stage on the file's
/// demonstrations, then GRPO with the file's verifier, all through LoRA adapters.
fn recipe_text(model: &Path, data: &Path) -> String {
    format!(
        r#"recipe local "SFT then GRPO on a local checkpoint"
data  gsm   = jsonl("{data}", prompt = "question", answer = "answer", eval = 4)
model policy = pretrained("{model}", lora_rank = 4, lora_alpha = 8, lora_targets = "q_proj,v_proj,down_proj", chat = true)
stage sft {{
    train policy
    data  gsm.texts
    loss  = token_mean(nll(policy.logp))
    optim {{ lr = 1e-2, steps = 3, batch = 4 }}
}}
stage rl {{
    train   policy
    prompts gsm.problems
    sample  {{ n = 4, max_tokens = 24 }}
    let adv = group_zscore(gsm.correct(response), eps = 1e-6)
    loss    = seq_mean_token_mean(ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.2))
    optim   {{ lr = 1e-3, steps = 2, batch = 8 }}
}}
"#,
        data = data.display(),
        model = model.display()
    )
}

#[test]
fn a_run_on_a_local_checkpoint_saves_a_policy_candle_transformers_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, run) = (tmp.path().join("model"), tmp.path().join("run"));
    hf_tiny::write(&model, "qwen2", 2, 5).unwrap();
    let recipe = tmp.path().join("local.rlx");
    let data = Path::new("data/gsm8k-sample.jsonl").canonicalize().unwrap();
    std::fs::write(&recipe, recipe_text(&model, &data)).unwrap();
    let o = rlx_cli()
        .args(["run", "--quiet", "--eval-prompts", "2", "--out"])
        .arg(&run)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let saved = run.join("models/policy");
    // The trained adapters, from the run's last checkpoint, over the base weights…
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    let ckpt =
        candle_core::safetensors::load(run.join(state["file"].as_str().unwrap()), &Device::Cpu)
            .unwrap();
    let base = hf::load(&model, &Device::Cpu).unwrap();
    let mut weights = base.weights.clone();
    let mut adapters = 0;
    for (k, v) in &ckpt {
        if let Some(name) = k.strip_prefix("model.policy.") {
            adapters += name.contains(".lora_") as usize;
            weights.insert(name.to_string(), v.clone());
        }
    }
    assert_eq!(adapters, 2 * 3 * base.cfg.num_hidden_layers);
    let lora = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    let cfg = ModelConfig::llama(LlamaSpec { hf: base.cfg.clone(), lora: Some(lora), bf16: false });
    let trained = rlx_logits(&Transformer::from_tensors(&cfg, &weights).unwrap(), &IDS, 0, false);
    // …give the logits candle-transformers computes from the saved, merged checkpoint.
    let theirs = oracle_logits(&saved, "qwen2");
    assert!(max_diff(&trained, &theirs) < 2e-5, "{}", max_diff(&trained, &theirs));
    assert!(max_diff(&oracle_logits(&model, "qwen2"), &theirs) > 1e-3, "training changed nothing");
    // The adapter alone, in its own directory, reads back over its base to the same model.
    assert!(!saved.join("adapter_model.safetensors").exists());
    let adapter = run.join("adapters/policy");
    let loaded = rlx::inspect::load(&adapter, false, &Device::Cpu).unwrap();
    let d = max_diff(&rlx_logits(&loaded.model, &IDS, 0, false), &trained);
    assert!(d < 2e-5, "adapter read back differs by {d}");
    // And `rlx score` of the run directory reads its policy.
    let o = rlx_cli().args(["score", "--json", "--text", "Hello!"]).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let scored: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(scored["predicted"], 5);
    assert!(scored["nll"].as_f64().unwrap() > 0.0);
}

/// A bf16 checkpoint in transformers 5's layout (chat template in chat_template.jinja) trains
/// with `chat = true`; `save_dtype = source` writes bf16 with one consistent dtype in the config
/// and keeps the template; `pretrained(ADAPTER_DIR)` continues from a saved adapter.
#[test]
fn transformers_5_bf16_checkpoints_train_save_in_their_dtype_and_continue_from_adapters() {
    use hf_tiny::{ConfigStyle, TinySpec};
    let tmp = tempfile::tempdir().unwrap();
    let (model, run) = (tmp.path().join("model"), tmp.path().join("run"));
    let spec = TinySpec { seed: 4, style: ConfigStyle::V5, bf16: true, ..TinySpec::new("qwen2") };
    hf_tiny::write_tiny(&model, &spec).unwrap();
    let data = Path::new("data/gsm8k-sample.jsonl").canonicalize().unwrap();
    let recipe = |model: &Path, extra: &str, lr: &str| {
        format!(
            r#"data  gsm   = jsonl("{data}", prompt = "question", answer = "answer", eval = 2)
model policy = pretrained("{model}", lora_rank = 4, lora_alpha = 8, chat = true{extra})
stage sft {{
    train policy
    data  gsm.texts
    loss  = token_mean(nll(policy.logp))
    optim {{ lr = {lr}, steps = 2, batch = 4 }}
}}
"#,
            data = data.display(),
            model = model.display()
        )
    };
    let run_recipe = |text: String, out: &Path| {
        let path = out.with_extension("rlx");
        std::fs::write(&path, text).unwrap();
        let o = rlx_cli().args(["run", "--quiet", "--out"]).arg(out).arg(&path).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run_recipe(recipe(&model, ", save_dtype = source", "1e-2"), &run);
    let saved = run.join("models/policy");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["dtype"].as_str(), config["torch_dtype"].as_str()),
        (Some("bfloat16"), Some("bfloat16"))
    );
    assert!(config.get("rope_parameters").is_some());
    let tensors =
        candle_core::safetensors::load(saved.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.values().all(|t| t.dtype() == DType::BF16));
    assert_eq!(
        std::fs::read_to_string(saved.join("chat_template.jinja")).unwrap(),
        hf_tiny::CHATML
    );
    // Continue from the saved adapter with a learning rate too small to move it: the model
    // saved at the end is the one the first run trained.
    let first = rlx::inspect::load(&run.join("adapters/policy"), false, &Device::Cpu).unwrap();
    let again = tmp.path().join("again");
    run_recipe(recipe(&run.join("adapters/policy"), "", "1e-12"), &again);
    let second = rlx::inspect::load(&again.join("adapters/policy"), false, &Device::Cpu).unwrap();
    let d = max_diff(
        &rlx_logits(&first.model, &IDS, 0, false),
        &rlx_logits(&second.model, &IDS, 0, false),
    );
    assert!(d < 1e-5, "continued adapter differs by {d}");
    let base = rlx::inspect::load(&model, false, &Device::Cpu).unwrap();
    let moved = max_diff(
        &rlx_logits(&base.model, &IDS, 0, false),
        &rlx_logits(&second.model, &IDS, 0, false),
    );
    assert!(moved > 1e-3, "the continued adapter is the base ({moved})");
    // An adapter whose settings disagree with the recipe is refused, naming both.
    let bad = tmp.path().join("bad");
    let text =
        recipe(&run.join("adapters/policy"), "", "1e-3").replace("lora_rank = 4", "lora_rank = 8");
    std::fs::write(bad.with_extension("rlx"), text).unwrap();
    let o = rlx_cli()
        .args(["run", "--quiet", "--out"])
        .arg(&bad)
        .arg(bad.with_extension("rlx"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("lora_rank 8 vs r = 4"), "{err}");
    assert!(!err.contains("--resume"), "advice to resume without a checkpoint: {err}");
}

#[test]
fn a_malformed_data_line_stops_the_run_with_its_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    hf_tiny::write(&model, "llama", 1, 5).unwrap();
    let data = tmp.path().join("bad.jsonl");
    let good = "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}";
    std::fs::write(&data, format!("{good}\n{good}\n{{\"question\": \"2+2?\"}}\n")).unwrap();
    let recipe = tmp.path().join("local.rlx");
    std::fs::write(&recipe, recipe_text(&model, &data)).unwrap();
    let o = rlx_cli()
        .args(["run", "--quiet", "--out"])
        .arg(tmp.path().join("run"))
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:3: missing field `answer`"), "{err}");
    // A model directory that is not there is named too.
    std::fs::write(
        &recipe,
        recipe_text(&tmp.path().join("nowhere"), Path::new("data/gsm8k-sample.jsonl")),
    )
    .unwrap();
    let o = rlx_cli()
        .args(["run", "--quiet", "--out"])
        .arg(tmp.path().join("run2"))
        .arg(&recipe)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("nowhere"), "{err}");
    assert!(err.contains("does not exist") && err.contains("pretrained("), "{err}");
    assert!(!err.contains("--resume"), "advice to resume without a checkpoint: {err}");
}

/// Log-probabilities `Σ logp · w` of a batch whose rows repeat two prompts of different lengths
/// (texts of different lengths too), through `hidden_of` (which runs each prompt once) and
/// through one forward over every row: equal values, and equal gradients for every weight.
fn shared_and_full(model: &Transformer, vars: &[(String, Var)]) {
    // Prompts long enough against the texts for `hidden_of` to share them.
    let (a, b): (&[u32], &[u32]) = (&[259, 72, 101, 108, 108, 111, 32, 119], &[259, 33, 119]);
    let prompts = [a, a, b, a, b];
    let texts: [&[u32]; 5] =
        [&[65, 66, 67, 68], &[70, 71], &[72, 73, 74], &[75], &[76, 77, 78, 79]];
    let layout = Layout::new(&prompts, &texts, &Device::Cpu).unwrap();
    let mut rng = rlx::rng::Rng::new(17);
    let wv: Vec<f32> = (0..5 * layout.text_len).map(|_| rng.normal() as f32).collect();
    let w = Tensor::from_vec(wv, (5, layout.text_len), &Device::Cpu).unwrap();
    let run = |hidden: Tensor| {
        let logp = model.token_logp(&hidden, &layout, 1.0).unwrap();
        let grads = (&logp * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Tensor> =
            vars.iter().map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone()).collect();
        (logp, g)
    };
    let (shared, gs) = run(model.hidden_of(&layout, true).unwrap());
    let (full, gf) =
        run(model.hidden(&layout.ids, &layout.positions, &layout.bias, None, true).unwrap());
    let d = max_diff(&shared, &full);
    assert!(d < 1e-5, "log-probabilities differ by {d}");
    for ((name, _), (s, f)) in vars.iter().zip(gs.iter().zip(&gf)) {
        let scale = f.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-3);
        let d = max_diff(s, f);
        assert!(d <= 1e-4 * scale, "gradient of {name} differs by {d} (largest entry {scale})");
    }
}

#[test]
fn rows_sharing_a_prompt_give_the_values_and_gradients_of_a_full_forward() {
    // A Hugging Face Qwen2 (biases on q/k/v, grouped-query attention) …
    let dir = tempfile::tempdir().unwrap();
    hf_tiny::write(dir.path(), "qwen2", 1, 11).unwrap();
    let ck = hf::load(dir.path(), &Device::Cpu).unwrap();
    let cfg = ModelConfig::llama(LlamaSpec { hf: ck.cfg.clone(), lora: None, bf16: false });
    let vars: Vec<(String, Var)> =
        ck.weights.iter().map(|(k, v)| (k.clone(), Var::from_tensor(v).unwrap())).collect();
    let map: BTreeMap<String, Tensor> =
        vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    shared_and_full(&Transformer::from_tensors(&cfg, &map).unwrap(), &vars);
    // … and the built-in GPT-style model (learned positions, GELU, layer norm).
    let cfg = ModelConfig::preset("tiny", 272).unwrap();
    let heads = Heads { lm: true, ..Default::default() };
    let params = init_params(&cfg, heads, &mut rlx::rng::Rng::new(3), &Device::Cpu).unwrap();
    let vars: Vec<(String, Var)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    shared_and_full(&Transformer::from_params(&cfg, &params).unwrap(), &vars);
}

/// RCfD with the given policy and reward-model declarations: two reward-model steps on the
/// reviews preferences, then two RL steps calibrated to the demonstrations.
fn rcfd_recipe(policy: &str, rm: &str, prompts: usize) -> String {
    format!(
        r#"recipe t "RCfD on a Hugging Face reward model"
data   reviews = builtin("reviews", prompts = {prompts})
model  policy  = {policy}
model  rm      = {rm}
stage reward_model {{
    train rm
    pairs reviews.preferences
    loss  = seq_mean(pairwise_rm(rm(chosen), rm(rejected)))
    optim {{ lr = 1e-2, steps = 2, batch = 8 }}
}}
stage rl {{
    train   policy
    prompts reviews.prompts
    sample  {{ n = 1, max_tokens = 8 }}
    let r   = calibrate(rm(response), rm(demonstration), distance = squared)
    loss    = token_mean(ppo_clip(policy.logp, old.logp, spread(whiten(r, scope = batch)), eps = 0.3))
    optim   {{ lr = 1e-3, steps = 2, batch = 8 }}
}}
"#
    )
}

/// A Hugging Face reward model (`*ForSequenceClassification`, one label, pad = EOS): the score
/// is `score.weight · h` at the last token that is not padding (trailing EOS skipped, as
/// transformers does); `pretrained` refuses it and `reward_model(pretrained(...))` refuses a
/// language model; RCfD trains it (LoRA and full) in a pairs stage, every score head weight
/// moves, and it is saved back as a classifier rlx reads to the trained scores.
#[test]
fn hf_reward_models_score_at_the_last_non_padding_token_train_and_save_as_classifiers() {
    let tmp = tempfile::tempdir().unwrap();
    let rm_dir = tmp.path().join("rm");
    let spec = hf_tiny::TinySpec { reward_model: true, seed: 3, ..hf_tiny::TinySpec::new("qwen2") };
    hf_tiny::write_tiny(&rm_dir, &spec).unwrap();
    let ck = hf::load(&rm_dir, &Device::Cpu).unwrap();
    assert_eq!(ck.cfg.classifier_labels(), Some(1));
    assert!(!ck.weights.contains_key("lm_head.weight"));
    let cfg = ModelConfig::llama(LlamaSpec { hf: ck.cfg.clone(), lora: None, bf16: false });
    let model = Transformer::from_tensors(&cfg, &ck.weights).unwrap();
    let eos = 256u32;
    let ids = [72u32, 101, 108, 108, 111];
    let score_of = |text: &[u32]| {
        let layout = Layout::new(&[&[]], &[text], &Device::Cpu).unwrap();
        let hidden = model.hidden_of(&layout, false).unwrap();
        let s = model.score(&hidden, &layout).unwrap().to_vec1::<f32>().unwrap()[0];
        (s, hidden, layout.prompt_len)
    };
    let (plain, hidden, p) = score_of(&ids);
    let with_eos: Vec<u32> = ids.iter().copied().chain([eos, eos]).collect();
    let (padded, _, _) = score_of(&with_eos);
    assert!((plain - padded).abs() < 1e-6, "trailing EOS is skipped: {plain} vs {padded}");
    // By hand: the head over the hidden state of the last real token.
    let h = hidden.i((0, p + ids.len() - 1)).unwrap();
    let w = ck.weights["score.weight"].i(0).unwrap();
    let by_hand = (h * w).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((plain - by_hand).abs() < 1e-5, "{plain} vs {by_hand}");

    let lm_dir = tmp.path().join("policy");
    hf_tiny::write_tiny(&lm_dir, &hf_tiny::TinySpec { seed: 4, ..hf_tiny::TinySpec::new("qwen2") })
        .unwrap();
    let recipe = |policy: &str, rm: &str| rcfd_recipe(policy, rm, 32);
    let run = |name: &str, text: String| {
        let path = tmp.path().join(format!("{name}.rlx"));
        std::fs::write(&path, text).unwrap();
        let out = tmp.path().join(name);
        let o = rlx_cli()
            .arg("run")
            .arg(&path)
            .args(["--quiet", "--eval-prompts", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        (o, out)
    };
    let policy = format!(r#"pretrained("{}", lora_rank = 4)"#, lm_dir.display());
    for (name, rm) in [
        ("lora", format!(r#"reward_model(pretrained("{}", lora_rank = 4))"#, rm_dir.display())),
        ("full", format!(r#"reward_model(pretrained("{}"))"#, rm_dir.display())),
    ] {
        let (o, out) = run(name, recipe(&policy, &rm));
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let saved = out.join("models/rm");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], "Qwen2ForSequenceClassification", "{name}");
        let trained = hf::load(&saved, &Device::Cpu).unwrap();
        assert!(!trained.weights.contains_key("lm_head.weight"), "{name}");
        let moved = (&trained.weights["score.weight"] - &ck.weights["score.weight"])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(moved.iter().all(|d| *d > 0.0), "{name}: every score head weight trained");
        assert!(!out.join("adapters/rm").exists(), "{name}: no adapter without its score head");
    }
    // Each kind of checkpoint declared as the other is refused, by name.
    let rm_as_lm = format!(r#"pretrained("{}")"#, rm_dir.display());
    let rm = format!(r#"reward_model(pretrained("{}"))"#, rm_dir.display());
    let (o, _) = run("rm_as_lm", recipe(&rm_as_lm, &rm));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is a sequence classifier"), "{err}");
    let lm_as_rm = format!(r#"reward_model(pretrained("{}"))"#, lm_dir.display());
    let (o, _) = run("lm_as_rm", recipe(&policy, &lm_as_rm));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("needs a `*ForSequenceClassification`"), "{err}");
}

/// A reward model in GPT-2's layout (`GPT2ForSequenceClassification`, here one rlx wrote for
/// RCfD's built-in reward model) reads back as `reward_model(pretrained(...))`, scores as
/// before, trains in full and is saved in the same layout.
#[test]
fn a_gpt2_classifier_reads_back_as_a_pretrained_reward_model_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("rcfd");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/rcfd.rlx");
    let mut c = rlx_cli();
    c.arg("run").arg(&recipe).args(["--steps", "1", "--quiet", "--eval-prompts", "2", "--out"]);
    c.arg(&first);
    for s in [
        "policy.width=32",
        "policy.layers=1",
        "policy.heads=2",
        "policy.warm_steps=3",
        "rm.width=32",
        "rm.layers=1",
        "rm.heads=2",
        "reviews.prompts=64",
        "reward_model.optim.batch=8",
        "rl.optim.batch=8",
    ] {
        c.args(["--set", s]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let score = |dir: &Path| -> f64 {
        let o = rlx_cli()
            .arg("score")
            .arg(dir)
            .args(["--text", "the food was great .", "--format", "json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["score"].as_f64().unwrap()
    };
    let rm = first.join("models/rm");
    let before = score(&rm);
    let text = rcfd_recipe(
        &format!(r#"pretrained("{}")"#, first.join("models/policy").display()),
        &format!(r#"reward_model(pretrained("{}"))"#, rm.display()),
        64,
    );
    let path = tmp.path().join("again.rlx");
    std::fs::write(&path, text).unwrap();
    let again = tmp.path().join("again");
    let o = rlx_cli()
        .arg("run")
        .arg(&path)
        .args(["--quiet", "--eval-prompts", "2", "--out"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let saved = again.join("models/rm");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "GPT2ForSequenceClassification");
    let names =
        candle_core::safetensors::load(saved.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(names.contains_key("score.weight") && !names.contains_key("lm_head.weight"));
    let after = score(&saved);
    assert!((after - before).abs() > 1e-4, "training moved the score ({before} → {after})");
}
