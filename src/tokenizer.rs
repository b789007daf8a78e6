//! Tokenizers for the built-in tasks: a standard `tokenizer.json` (a word-level model behind a
//! GPT-2-style split that keeps a word's leading space, and a fusing decoder), written out by rlx
//! and loaded with the `tokenizers` crate like any Hugging Face tokenizer.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

/// The special tokens, with fixed ids.
pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
/// Separates a text from its rewrite (RLMEC's rewriter reads `prompt text <sep>` and writes).
pub const SEP: u32 = 4;
const SPECIALS: [&str; 5] = ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>"];

/// Words and digits, each optionally with one leading space; any other character alone.
const SPLIT: &str = r" ?[A-Za-z]+| ?\d| ?[^A-Za-z\d\s]|\s";

/// A loaded tokenizer, its special ids, and the token strings.
pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    pieces: Vec<String>,
    /// Prepended to every prompt (`None`: the model family does not use one, like Qwen).
    pub bos: Option<u32>,
    /// Ends a response; appended to training targets.
    pub eos: u32,
    /// Every id that ends generation (`eos` among them; Llama 3 instruct models have several).
    pub stops: Vec<u32>,
    /// Fills padded columns (always masked, so any id works).
    pub pad: u32,
    /// Separates a text from its rewrite (RLMEC's rewriter).
    pub sep: u32,
    /// A chat template to render prompts with (`tokenizer_config.json`'s `chat_template`).
    pub chat_template: Option<crate::chat::ChatTemplate>,
}

impl Tok {
    /// The `tokenizer.json` text for a vocabulary of pieces (specials are added first).
    pub fn json(pieces: &[String]) -> String {
        let mut vocab = BTreeMap::new();
        let mut added = Vec::new();
        for (i, s) in SPECIALS.iter().enumerate() {
            vocab.insert(s.to_string(), i as u32);
            added.push(json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}));
        }
        for p in pieces {
            let next = vocab.len() as u32;
            vocab.entry(p.clone()).or_insert(next);
        }
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": SPLIT},
                "behavior": "Isolated", "invert": false},
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        });
        serde_json::to_string_pretty(&doc).expect("JSON")
    }

    pub fn from_json(text: &str) -> Result<Tok, String> {
        let inner =
            tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| e.to_string())?;
        Ok(Tok::wrap(inner))
    }

    pub fn from_file(path: &Path) -> Result<Tok, String> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Tok::wrap(inner))
    }

    /// A tokenizer with the built-in special ids.
    fn wrap(inner: tokenizers::Tokenizer) -> Tok {
        let n = inner.get_vocab_size(true);
        let pieces = (0..n as u32).map(|i| inner.id_to_token(i).unwrap_or_default()).collect();
        Tok {
            inner,
            pieces,
            bos: Some(BOS),
            eos: EOS,
            stops: vec![EOS],
            pad: PAD,
            sep: SEP,
            chat_template: None,
        }
    }

    /// Whether `id` ends a response.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stops.contains(&id)
    }

    /// The tokens of a prompt: BOS (where the model uses one) and the text, or the text
    /// rendered as a user message through the chat template (which writes its own BOS).
    pub fn prompt(&self, text: &str) -> Vec<u32> {
        if let Some(template) = &self.chat_template
            && let Ok(rendered) = template.render_user(text)
        {
            return self.encode(&rendered);
        }
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        ids.extend(self.encode(text));
        if ids.is_empty() {
            // A position to predict the first response token from (families without BOS).
            ids.push(self.eos);
        }
        ids
    }

    /// A whole text for supervised training as (context, target): BOS and the text, or for
    /// families without BOS the first token and the rest.
    pub fn context_and_text(&self, text: &str) -> (Vec<u32>, Vec<u32>) {
        let ids = self.response(text);
        match self.bos {
            Some(b) => (vec![b], ids),
            None => (ids[..1].to_vec(), ids[1..].to_vec()),
        }
    }

    /// The tokens of a response to train on: the text and EOS.
    pub fn response(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(text);
        ids.push(self.eos);
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.inner.encode(text, false) {
            Ok(e) => e.get_ids().to_vec(),
            Err(_) => vec![self.inner.token_to_id("<unk>").unwrap_or(UNK)],
        }
    }

    /// Text of ids, specials dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_else(|_| self.concat(ids))
    }

    /// The same as `decode` for the built-in tokenizers, without going through the library:
    /// token strings concatenated.
    pub fn concat(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&i| i as usize >= SPECIALS.len())
            .filter_map(|&i| self.pieces.get(i as usize))
            .map(String::as_str)
            .collect()
    }

    pub fn piece(&self, id: u32) -> &str {
        self.pieces.get(id as usize).map_or("", String::as_str)
    }
}

/// A `tokenizer.json` text with a post-processor that prepends `piece` (id `id`) when special
/// tokens are added, as Llama's tokenizers do with their BOS.
pub fn with_bos(json: &str, piece: &str, id: u32) -> Result<String, String> {
    let mut doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("tokenizer.json: {e}"))?;
    let special = |seq: &str, type_id: u32| json!({"Sequence": {"id": seq, "type_id": type_id}});
    doc["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": piece, "type_id": 0}}, special("A", 0)],
        "pair": [{"SpecialToken": {"id": piece, "type_id": 0}}, special("A", 0), special("B", 1)],
        "special_tokens": {piece: {"id": piece, "ids": [id], "tokens": [piece]}},
    });
    Ok(serde_json::to_string_pretty(&doc).expect("JSON"))
}

/// The directory whose tokenizer files serve a model directory: an adapter's own when it has
/// them, else its base's.
pub fn tokenizer_dir(dir: &Path) -> Result<std::path::PathBuf, String> {
    if crate::model::hf::is_adapter_dir(dir) && !dir.join("tokenizer.json").exists() {
        return crate::model::hf::adapter_base(dir);
    }
    Ok(dir.to_path_buf())
}

/// The pieces of a word list: each word with and without a leading space.
pub fn pieces_of<'a>(words: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for w in words {
        for p in [w.to_string(), format!(" {w}")] {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    for s in ["\n", " "] {
        out.push(s.to_string());
    }
    out
}

/// A directory's default chat template, where transformers looks for it, first match wins:
/// `chat_template.jinja` (transformers 5 and late 4.x), `tokenizer_config.json`'s
/// `chat_template` (a string, or a list of named templates of which `default` is taken), then
/// the older processors' `chat_template.json`.
pub fn chat_template(dir: &Path, tok_config: &serde_json::Value) -> Result<Option<String>, String> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| format!("{}: {e}", jinja.display()));
    }
    match &tok_config["chat_template"] {
        serde_json::Value::String(t) => return Ok(Some(t.clone())),
        serde_json::Value::Array(named) => {
            let default =
                named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str());
            return Ok(default.map(str::to_string));
        }
        _ => {}
    }
    let legacy = dir.join("chat_template.json");
    if legacy.exists() {
        let doc = crate::model::hf::read_json(&legacy)?;
        return Ok(doc["chat_template"].as_str().map(str::to_string));
    }
    Ok(None)
}

/// Reads a Hugging Face model directory's tokenizer: `tokenizer.json`, with special ids from
/// `generation_config.json`, `config.json` and `tokenizer_config.json`. With `chat`, prompts are
/// rendered through the directory's chat template as one user message.
pub fn from_hf_dir(dir: &Path, chat: bool) -> Result<Tok, String> {
    let mut tok = Tok::from_file(&dir.join("tokenizer.json"))?;
    // Token strings as text (byte-level BPE stores `Ġ`/`Ċ` for space/newline): step
    // delimiters and stop strings are matched against these.
    tok.pieces = (0..tok.pieces.len() as u32)
        .map(|i| tok.inner.decode(&[i], false).unwrap_or_else(|_| tok.pieces[i as usize].clone()))
        .collect();
    // Each file is optional; one that is there must parse.
    let read = |name: &str| -> Result<Option<serde_json::Value>, String> {
        let path = dir.join(name);
        path.exists().then(|| crate::model::hf::read_json(&path)).transpose()
    };
    let config = read("config.json")?.unwrap_or_default();
    let generation = read("generation_config.json")?.unwrap_or_default();
    let tok_config = read("tokenizer_config.json")?.unwrap_or_default();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32).into_iter().collect(),
            serde_json::Value::Array(a) => {
                a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect()
            }
            _ => vec![],
        }
    };
    // A special token in tokenizer_config.json is a string or `{"content": ...}`.
    let named = |key: &str| -> Option<u32> {
        let v = &tok_config[key];
        let text = v.as_str().or_else(|| v["content"].as_str())?;
        tok.inner.token_to_id(text)
    };
    // BOS is whatever the tokenizer's own post-processor prepends (Llama: yes; Qwen: no).
    tok.bos = match (tok.inner.encode("a", true), tok.inner.encode("a", false)) {
        (Ok(with), Ok(without)) if with.get_ids().len() > without.get_ids().len() => {
            with.get_ids().first().copied()
        }
        _ => None,
    };
    let mut stops = ids(&generation["eos_token_id"]);
    stops.extend(ids(&config["eos_token_id"]));
    let eos = named("eos_token").or_else(|| stops.first().copied()).ok_or_else(|| {
        format!("{}: no end-of-sequence token: set `eos_token_id` in config.json", dir.display())
    })?;
    stops.insert(0, eos);
    stops.dedup();
    tok.eos = eos;
    tok.stops = stops;
    tok.pad = named("pad_token").unwrap_or(eos);
    tok.sep = eos;
    tok.chat_template = if chat {
        let template = chat_template(dir, &tok_config)?.ok_or_else(|| {
            format!(
                "{}: `chat = true` but the directory has no chat template (chat_template.jinja, or `chat_template` in tokenizer_config.json)",
                dir.display()
            )
        })?;
        let bos = tok.bos.map(|b| tok.piece(b).to_string()).unwrap_or_default();
        let eos = tok.piece(eos).to_string();
        let template = crate::chat::ChatTemplate::new(template, bos, eos)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Some(template)
    } else {
        None
    };
    Ok(tok)
}
