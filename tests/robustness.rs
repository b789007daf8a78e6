//! No input, however broken, makes rlx panic or hang: arbitrary bytes, mutated recipes and
//! pathological shapes all end in a diagnostic or a success. Formatting is idempotent and never
//! changes what a recipe means.

mod common;

use std::fs;

use proptest::prelude::*;
use rlx::check::lints::LintConfig;
use rlx::source::{SourceFile, analyze};

fn recipe_texts() -> Vec<String> {
    common::recipe_paths().into_iter().map(|p| fs::read_to_string(p).unwrap()).collect()
}

/// Runs the whole front half and, where the text parses, the formatter and its properties.
fn exercise(bytes: &[u8]) {
    let (src, _) = SourceFile::from_bytes("fuzz.rlx", bytes);
    let analysis = analyze(&src, &LintConfig::defaults());
    if let Some(checked) = &analysis.checked {
        let _ =
            rlx::graph_view::text(checked, None, rlx::graph_view::ViewOptions { resolved: true });
        let _ =
            rlx::graph_view::dot(checked, None, rlx::graph_view::ViewOptions { resolved: false });
        let _ = rlx::diff::render(&rlx::diff::diff(checked, checked), "a", "b");
    }
    for d in &analysis.diagnostics {
        let _ = rlx::render::human(d, &src, rlx::render::Style::plain());
        let _ = rlx::render::json(d, &src);
    }
    if let Ok(formatted) = rlx::syntax::format::format(&src.text) {
        assert_eq!(
            rlx::syntax::format::format(&formatted).ok().as_deref(),
            Some(formatted.as_str()),
            "not idempotent"
        );
        let again = analyze(&SourceFile::new("fmt.rlx", formatted), &LintConfig::defaults());
        if !analysis.has_errors() {
            assert!(!again.has_errors(), "formatting introduced errors: {:?}", again.diagnostics);
            let d = rlx::diff::diff(
                analysis.checked.as_ref().unwrap(),
                again.checked.as_ref().unwrap(),
            );
            assert!(d.is_empty(), "formatting changed the meaning: {d:?}");
        }
    }
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "{",
    "}",
    "=",
    ",",
    ".",
    "|>",
    "+",
    "-",
    "*",
    "/",
    "^",
    "let",
    "loss",
    "stage",
    "train",
    "\"",
    "#",
    "1e999",
    "0",
    "-1",
    "policy.logp",
    "response",
    "\n",
    "é",
    "\u{0}",
    "x",
    "sample { n = 1 }",
    "optim { lr = 0 }",
    "spread(",
    "at_end(",
    "whiten(",
    "kl(",
    "none",
    "k3",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, usize),
    Swap(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..40).prop_map(|(a, b)| Mutation::Delete(a, b)),
        (any::<usize>(), 1usize..40).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), any::<usize>(), 1usize..20).prop_map(|(a, b, c)| Mutation::Swap(a, b, c)),
    ]
}

fn apply(text: &str, m: &Mutation) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    let n = bytes.len().max(1);
    match *m {
        Mutation::Truncate(at) => bytes.truncate(at % n),
        Mutation::Delete(at, len) => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Duplicate(at, len) => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            let piece: Vec<u8> = bytes[at..end].to_vec();
            bytes.splice(at..at, piece);
        }
        Mutation::Insert(at, tok) => {
            let at = at % n;
            bytes.splice(at..at, TOKENS[tok].bytes());
        }
        Mutation::Swap(a, b, len) => {
            let (a, b) = (a % n, b % n);
            let (lo, hi) = (a.min(b), a.max(b));
            if hi + len <= bytes.len() && lo + len <= hi {
                let first: Vec<u8> = bytes[lo..lo + len].to_vec();
                let second: Vec<u8> = bytes[hi..hi + len].to_vec();
                bytes.splice(hi..hi + len, first);
                bytes.splice(lo..lo + len, second);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_token_soup_never_panics(tokens in proptest::collection::vec(0..TOKENS.len(), 0..80)) {
        let text: String = tokens.iter().map(|t| TOKENS[*t]).collect::<Vec<_>>().join(" ");
        exercise(text.as_bytes());
    }

    #[test]
    fn mutated_recipes_never_panic(which in 0usize..64, mutations in proptest::collection::vec(mutation(), 1..4)) {
        let recipes = recipe_texts();
        let mut text = recipes[which % recipes.len()].clone();
        for m in &mutations {
            text = String::from_utf8_lossy(&apply(&text, m)).into_owned();
        }
        exercise(text.as_bytes());
    }
}

#[test]
fn pathological_shapes_are_diagnostics() {
    let stage = |body: String| format!("stage s {{\n train p\n loss = {body}\n}}\n");
    let cases = [
        stage("(".repeat(100_000)),
        stage(format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000))),
        stage(format!("{}1", "-".repeat(100_000))),
        stage(vec!["x"; 100_000].join(" + ")),
        stage(format!("x{}", ".m".repeat(100_000))),
        stage(format!("f{}", "()".repeat(50_000))),
        stage("9".repeat(5_000)),
        format!(
            "stage s {{\n{}\n loss = a4999\n}}",
            (0..5_000)
                .map(|i| format!(" let a{} = a{} + 1", i + 1, i))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        "\u{feff}recipe x".to_string(),
        "stage s { loss = \"unterminated }".to_string(),
        String::new(),
    ];
    for text in cases {
        exercise(text.as_bytes());
    }
    let mut big = b"# x\n".repeat(300_000);
    big.extend_from_slice(b"\xff");
    exercise(&big);
}

/// JSON values a corrupted or hand-edited config might hold.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        Just(json!(0)),
        Just(json!(-3)),
        Just(json!(1e300)),
        Just(json!(18446744073709551615u64)),
        Just(json!(2.5)),
        Just(json!("yarn")),
        Just(json!("gpt2")),
        Just(json!([1, 2])),
        Just(json!({"rope_type": "llama3", "factor": 0})),
        Just(json!({"full_attention": {"rope_type": "default"}})),
        (1u64..5000).prop_map(|v| json!(v)),
    ]
}

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "max_position_embeddings",
    "tie_word_embeddings",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "n_inner",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// A Hugging Face config with fields replaced by odd values: a named error or a config
    /// whose shapes are bounded; never a panic, an overflow or an allocation beyond reason.
    #[test]
    fn corrupted_hf_configs_are_errors_not_panics(
        family in 0usize..5,
        edits in proptest::collection::vec((0..CONFIG_KEYS.len(), json_value()), 1..6),
    ) {
        let family = rlx::model::hf_tiny::TINY_FAMILIES[family];
        let mut cfg = rlx::model::hf_tiny::config(family).unwrap();
        for (k, v) in &edits {
            cfg[CONFIG_KEYS[*k]] = v.clone();
        }
        let text = cfg.to_string();
        if let Ok(c) = rlx::model::hf_config::HfConfig::parse(&text) {
            let shapes = rlx::model::hf::expected_shapes(&c);
            prop_assert!(shapes.len() < 100_000);
            prop_assert!(c.inv_freq().iter().all(|f| f.is_finite()));
        }
        let _ = rlx::model::gpt2::parse_config(&cfg);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), &text).unwrap();
        let _ = rlx::model::dir::check(dir.path());
    }

    /// Any bytes as a `--batch` file: an error, or a batch the executor validates.
    #[test]
    fn arbitrary_batch_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(batch) = candle_core::safetensors::load(&path, &candle_core::Device::Cpu) {
            let (src, _) = SourceFile::from_bytes("ppo.rlx", &fs::read("recipes/ppo.rlx").unwrap());
            let checked = analyze(&src, &LintConfig::defaults()).checked.unwrap();
            let batch = batch.into_iter().collect();
            let options = rlx::exec::Options { grads: true, profile: false };
            let _ = rlx::exec::evaluate(&checked, 0, &batch, &candle_core::Device::Cpu, options);
        }
    }
}

/// A safetensors header that claims more data than the file holds is an error, read without
/// allocating what it claims.
#[test]
fn a_batch_file_claiming_huge_tensors_is_refused() {
    let header =
        r#"{"policy.logp":{"dtype":"F32","shape":[100000,100000],"data_offsets":[0,40000000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 64]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    assert!(candle_core::safetensors::load(&path, &candle_core::Device::Cpu).is_err());
}
