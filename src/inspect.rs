//! Looking at a model directly: `rlx score` (per-token log-probabilities and the summed NLL of
//! a text, the numbers to compare with transformers to trust a loader) and `rlx generate`
//! (what a trained model writes). Both open any model directory — a Hugging Face checkpoint,
//! a PEFT adapter over one, or a run directory's `models/NAME` — or a run directory itself.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use crate::model::{Family, Layout, LlamaSpec, ModelConfig, Transformer, dir};
use crate::rng::Rng;
use crate::sample::{self, Sampling};
use crate::tokenizer::Tok;
use crate::train::yes_no::YesNoHead;

/// A model ready to score or sample, with its tokenizer.
pub struct Loaded {
    pub model: Transformer,
    pub tok: Tok,
    /// The model directory actually read.
    pub dir: PathBuf,
    /// A Yes/No reward model's head (its `yes_no.json`): texts are scored by its answers.
    pub yes_no: Option<YesNoHead>,
}

/// The model directory a path means: itself, or for a run directory `models/policy` (or its
/// only model with a language-model head).
pub fn model_dir(path: &Path) -> Result<PathBuf, String> {
    let models = path.join("models");
    if path.join("config.json").exists()
        || path.join("adapter_config.json").exists()
        || !models.is_dir()
    {
        return Ok(path.to_path_buf());
    }
    if models.join("policy").is_dir() {
        return Ok(models.join("policy"));
    }
    let mut lms: Vec<PathBuf> = std::fs::read_dir(&models)
        .map_err(|e| format!("{}: {e}", models.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let arch = crate::model::hf::read_json(&p.join("config.json"))
                .map(|c| c["architectures"].to_string())
                .unwrap_or_default();
            p.is_dir() && !arch.contains("SequenceClassification")
        })
        .collect();
    lms.sort();
    match lms.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("{} has no language model", models.display())),
        many => Err(format!(
            "{} has several models ({}): name one, e.g. {}",
            path.display(),
            many.iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", "),
            many[0].display()
        )),
    }
}

/// Opens a model (and its tokenizer) for scoring or sampling. With `chat`, prompts go through
/// the tokenizer's chat template.
pub fn load(path: &Path, chat: bool, device: &Device) -> Result<Loaded, String> {
    let path = model_dir(path)?;
    let md = dir::open(&path, device)?;
    let tok = crate::tokenizer::from_hf_dir(&crate::tokenizer::tokenizer_dir(&path)?, chat)?;
    let mut weights = md.weights;
    let cfg = match (md.cfg.family.clone(), &md.adapter) {
        (Family::Llama(spec), adapter) => {
            if let Some(a) = adapter {
                weights.extend(a.tensors.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            let lora = adapter.as_ref().map(|a| a.spec.clone());
            ModelConfig::llama(LlamaSpec { hf: spec.hf, lora, bf16: false })
        }
        (Family::Gpt, _) => md.cfg.clone(),
    };
    let classifier = match &cfg.family {
        Family::Llama(s) => s.hf.classifier_labels() == Some(1),
        Family::Gpt => crate::model::gpt2::classifier_labels(&md.raw_config) == Some(1),
    };
    if !classifier
        && !weights.contains_key("lm_head.weight")
        && !matches!(&cfg.family, Family::Llama(s) if s.hf.tie_word_embeddings)
    {
        return Err(format!(
            "{} is a reward model (no language-model head): there is nothing to score or sample",
            path.display()
        ));
    }
    let model = Transformer::from_tensors(&cfg, &weights).map_err(|e| e.to_string())?;
    let yes_no = YesNoHead::read(&path)?;
    Ok(Loaded { model, tok, dir: path, yes_no })
}

/// One token of a scored text.
#[derive(Debug, Clone, Serialize)]
pub struct TokenScore {
    pub id: u32,
    pub piece: String,
    /// `log p(token | tokens before it)`; none for the first token, which nothing predicts.
    pub logp: Option<f64>,
}

/// A scored text.
#[derive(Debug, Clone, Serialize)]
pub struct TextScore {
    pub tokens: Vec<TokenScore>,
    /// `−Σ logp` over the predicted tokens.
    pub nll: f64,
    /// How many tokens were predicted.
    pub predicted: usize,
}

/// The token ids `rlx score` reads for a text: transformers' `tokenizer(text)` (special
/// tokens added, e.g. Llama's BOS), or with `chat` the prompt a `chat = true` recipe feeds (one
/// user message through the chat template, generation prompt included).
pub fn ids_of(tok: &Tok, text: &str, chat: bool) -> Result<Vec<u32>, String> {
    if chat {
        return Ok(tok.prompt(text));
    }
    let enc = tok.inner.encode(text, true).map_err(|e| e.to_string())?;
    Ok(enc.get_ids().to_vec())
}

/// Per-token log-probabilities of `ids` under the model.
pub fn score_ids(loaded: &Loaded, ids: &[u32], device: &Device) -> Result<TextScore, String> {
    let err = |e: candle_core::Error| e.to_string();
    let piece = |id: u32| {
        loaded.tok.inner.id_to_token(id).unwrap_or_else(|| loaded.tok.piece(id).to_string())
    };
    let mut tokens: Vec<TokenScore> =
        ids.iter().map(|&id| TokenScore { id, piece: piece(id), logp: None }).collect();
    if ids.len() < 2 {
        return Ok(TextScore { tokens, nll: 0.0, predicted: 0 });
    }
    if ids.len() > loaded.model.cfg.context {
        return Err(format!(
            "{} tokens exceed the model's context of {}",
            ids.len(),
            loaded.model.cfg.context
        ));
    }
    let layout = Layout::new(&[&ids[..1]], &[&ids[1..]], device).map_err(err)?;
    let hidden = loaded.model.hidden_of(&layout, false).map_err(err)?;
    let logp = loaded.model.token_logp(&hidden, &layout, 1.0).map_err(err)?;
    let logp: Vec<f32> = logp.squeeze(0).and_then(|t| t.to_vec1()).map_err(err)?;
    let mut nll = 0.0;
    for (t, lp) in tokens[1..].iter_mut().zip(&logp) {
        t.logp = Some(*lp as f64);
        nll -= *lp as f64;
    }
    Ok(TextScore { tokens, nll, predicted: ids.len() - 1 })
}

/// A reward model's score of a whole text (the Hugging Face sequence classifier's logit at the
/// last token that is not padding).
pub fn reward_of(loaded: &Loaded, ids: &[u32], device: &Device) -> Result<f32, String> {
    let err = |e: candle_core::Error| e.to_string();
    if ids.is_empty() || ids.len() > loaded.model.cfg.context {
        return Err(format!(
            "{} tokens: a text must have 1 to {}",
            ids.len(),
            loaded.model.cfg.context
        ));
    }
    // The whole text as the row's text (a one-token text has no prompt/response split).
    let layout = Layout::new(&[&[]], &[ids], device).map_err(err)?;
    let hidden = loaded.model.hidden_of(&layout, false).map_err(err)?;
    let score = loaded.model.score(&hidden, &layout).map_err(err)?;
    score.to_vec1::<f32>().map_err(err).map(|v| v[0])
}

/// A Yes/No reward model's score of a whole text, as a run computes it: `Σ log p(yes) −
/// Σ log p(no)` after `text question`, at temperature 1.
pub fn answer_score(
    loaded: &Loaded,
    head: &YesNoHead,
    ids: &[u32],
    device: &Device,
) -> Result<f64, String> {
    let err = |e: candle_core::Error| e.to_string();
    let name = loaded.dir.display().to_string();
    let t = head.tokens(&loaded.tok, &name)?;
    let asked = [ids, &t.question].concat();
    let longest = asked.len() + t.yes.len().max(t.no.len());
    if ids.is_empty() || longest > loaded.model.cfg.context {
        return Err(format!(
            "{} tokens with the question and answer: a text must have 1 to {} in all",
            longest, loaded.model.cfg.context
        ));
    }
    let logp = |answer: &[u32]| -> Result<f64, String> {
        let layout = Layout::new(&[&asked], &[answer], device).map_err(err)?;
        let hidden = loaded.model.hidden_of(&layout, false).map_err(err)?;
        let lp = loaded.model.token_logp(&hidden, &layout, 1.0).map_err(err)?;
        lp.sum_all().and_then(|s| s.to_scalar::<f32>()).map(f64::from).map_err(err)
    };
    Ok(logp(&t.yes)? - logp(&t.no)?)
}

/// Samples `n` responses to one prompt; temperature 0 decodes greedily.
pub fn generate(
    loaded: &Loaded,
    prompt: &str,
    n: usize,
    sampling: &Sampling,
    seed: u64,
    device: &Device,
) -> Result<Vec<String>, String> {
    if loaded.model.has_score_head() {
        return Err(format!(
            "{} is a reward model (a score head, no language-model head): it scores texts (`rlx score`), it does not generate",
            loaded.dir.display()
        ));
    }
    let ids = loaded.tok.prompt(prompt);
    let prompts = vec![ids; n];
    let mut rng = Rng::new(seed);
    let generation =
        sample::generate(&loaded.model, &loaded.tok, &prompts, sampling, &mut rng, device)
            .map_err(|e| e.to_string())?;
    Ok(generation
        .tokens
        .iter()
        .map(|t| {
            let text: Vec<u32> = t.iter().copied().filter(|&i| !loaded.tok.is_stop(i)).collect();
            loaded.tok.decode(&text)
        })
        .collect())
}
