//! Data as the Hub stores it: Parquet files pyarrow wrote (`tests/data/make_parquet.py`; the
//! committed copies in `tests/data/parquet/`, or fresh ones in `RLX_DATA_DIR`), JSON arrays and
//! JSON lines, TRL's conversational form, verl's nested layout — read into the same prompts,
//! answers, pairs and rows as a JSON-lines file, with `FILE:ROW` errors for bad rows.

use std::path::{Path, PathBuf};

use rlx::tasks::answers::AnswerFormat;
use rlx::tasks::jsonl::{Fields, load};
use rlx::tasks::rows;

fn parquet(name: &str) -> PathBuf {
    let dir = std::env::var_os("RLX_DATA_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/parquet"),
        PathBuf::from,
    );
    dir.join(name)
}

fn fields(prompt: &str, answer: &str) -> Fields {
    Fields {
        prompt: prompt.into(),
        answer: answer.into(),
        demonstration: None,
        chosen: "chosen".into(),
        rejected: "rejected".into(),
    }
}

#[test]
fn gsm8k_parquet_in_two_row_groups_and_zstd_reads_as_its_json_lines_would() {
    let snappy = rows::read(&parquet("gsm8k.parquet")).unwrap();
    let zstd = rows::read(&parquet("gsm8k_zstd.parquet")).unwrap();
    assert_eq!(snappy.len(), 10);
    assert_eq!(snappy.iter().map(|r| r.at).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        snappy.iter().map(|r| &r.value).collect::<Vec<_>>(),
        zstd.iter().map(|r| &r.value).collect::<Vec<_>>()
    );
    let t = load(&parquet("gsm8k.parquet"), &fields("question", "answer"), AnswerFormat::Gsm8k, 2)
        .unwrap();
    assert_eq!((t.train.len(), t.eval.len()), (8, 2));
    assert_eq!(t.train[3].text, "What is 3 + 4?");
    assert!(t.train[3].demonstration.ends_with("#### 7"));
    assert_eq!(t.reference("What is 3 + 4?").as_deref(), Some("7"));
    // The same rows as JSON lines give the same task.
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("gsm8k.jsonl");
    let lines: Vec<String> = snappy.iter().map(|r| r.value.to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let j = load(&jsonl, &fields("question", "answer"), AnswerFormat::Gsm8k, 2).unwrap();
    assert_eq!(j.texts, t.texts);
    assert_eq!(j.answers, t.answers);
    // And a JSON array (`.json` starting with `[`).
    let array = dir.path().join("gsm8k.json");
    std::fs::write(&array, format!("[{}]", lines.join(",\n"))).unwrap();
    let a = load(&array, &fields("question", "answer"), AnswerFormat::Gsm8k, 2).unwrap();
    assert_eq!(a.texts, t.texts);
}

#[test]
fn verls_layout_reads_chat_prompts_nested_answers_and_keeps_every_field_of_the_row() {
    let f = fields("prompt", "reward_model.ground_truth");
    let t = load(&parquet("verl.parquet"), &f, AnswerFormat::Exact, 2).unwrap();
    assert_eq!(t.train[0].text, "What is 0 + 1?");
    assert_eq!(t.reference("What is 5 + 6?").as_deref(), Some("11"));
    let row = &t.rows["What is 2 + 3?"];
    assert_eq!(row["data_source"], "openai/gsm8k");
    assert_eq!(row["extra_info"]["index"], 2);
    assert_eq!(row["reward_model"]["style"], "rule");
}

#[test]
fn trl_conversational_preferences_read_as_pairs() {
    let t =
        load(&parquet("trl_prefs.parquet"), &fields("prompt", "answer"), AnswerFormat::Gsm8k, 2)
            .unwrap();
    assert_eq!(t.pairs.len(), 8);
    assert_eq!(t.pairs[1].prompt, "What is 1 + 2?");
    assert_eq!((t.pairs[1].chosen.as_str(), t.pairs[1].rejected.as_str()), ("#### 3", "#### 2"));
}

#[test]
fn bad_rows_and_conversations_rlx_cannot_read_are_file_row_errors() {
    let err =
        load(&parquet("bad_row.parquet"), &fields("question", "answer"), AnswerFormat::Gsm8k, 0)
            .err()
            .unwrap();
    assert!(err.ends_with("bad_row.parquet:2: field `answer` is null, expected a string"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let err = load(&path, &fields("messages", "answer"), AnswerFormat::Exact, 0).err().unwrap();
    assert!(
        err.contains("chat.jsonl:2: field `messages`: a conversation of roles [system, user]"),
        "{err}"
    );
    std::fs::write(&path, r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#)
        .unwrap();
    let t = load(&path, &fields("messages", "answer"), AnswerFormat::Exact, 0).unwrap();
    assert_eq!((t.train[0].text.as_str(), t.train[0].demonstration.as_str()), ("q", "a"));
    let not_parquet = dir.path().join("x.parquet");
    std::fs::write(&not_parquet, "question,answer\n").unwrap();
    let err = rows::read(&not_parquet).unwrap_err();
    assert!(err.contains("x.parquet: not a Parquet file rlx can read"), "{err}");
}

/// A run on verl's Parquet layout: `file(...)`, chat prompts, the nested ground truth as the
/// verifier's answer.
#[test]
fn a_grpo_run_trains_on_a_verl_parquet_file() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.rlx");
    std::fs::write(
        &recipe,
        format!(
            r#"recipe r "GRPO on a verl-layout Parquet file"
data  math   = file("{}", prompt = "prompt", answer = "reward_model.ground_truth", format = "exact", eval = 2)
model policy = builtin("tiny", warm_start = math.texts, width = 32, heads = 2, layers = 1, warm_steps = 2)
stage rl {{
    train   policy
    prompts math.problems
    sample  {{ n = 2, max_tokens = 8 }}
    loss    = seq_mean_token_mean(ppo_clip(policy.logp, old.logp, spread(group_zscore(math.correct(response), eps = 1e-6))))
    optim   {{ lr = 1e-3, steps = 2, batch = 4 }}
}}
"#,
            parquet("verl.parquet").display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlx"))
        .arg("run")
        .arg(&recipe)
        .args(["--quiet", "--eval-prompts", "2", "--out"])
        .arg(dir.path().join("run"))
        .env("RLX_CACHE", std::env::temp_dir().join("rlx-test-cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
