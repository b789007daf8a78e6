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

/// A loaded tokenizer and the token strings, for fast incremental decoding while sampling.
pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    pieces: Vec<String>,
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

    fn wrap(inner: tokenizers::Tokenizer) -> Tok {
        let n = inner.get_vocab_size(true);
        let pieces = (0..n as u32).map(|i| inner.id_to_token(i).unwrap_or_default()).collect();
        Tok { inner, pieces }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.inner.encode(text, false) {
            Ok(e) => e.get_ids().to_vec(),
            Err(_) => vec![UNK],
        }
    }

    /// Text of ids, specials dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_else(|_| self.concat(ids))
    }

    /// The same as `decode`, without going through the library: token strings concatenated.
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
