//! `rlx score`: per-token log-probabilities and the summed NLL of texts under a model, or a
//! reward model's score of each text.

use std::process::ExitCode;

use crate::args::ScoreArgs;

/// `rlx score`: one text, or a field of every line of a JSON-lines file.
pub fn main(args: ScoreArgs) -> Result<ExitCode, String> {
    let ScoreArgs { model, text, jsonl, field, chat, question, yes, no, format, device } = args;
    let json = format.json();
    let (model, text, jsonl, field, device) =
        (&model, text.as_deref(), jsonl.as_deref(), &field, &device.device);
    let device = rlx::exec::device::device(device)?;
    let mut loaded = rlx::inspect::load(model, chat, &device)?;
    if let (Some(question), Some(yes), Some(no)) = (question, yes, no) {
        loaded.yes_no = Some(rlx::train::yes_no::YesNoHead { question, yes, no });
    }
    let texts: Vec<String> = match (text, jsonl) {
        (Some(t), _) => vec![t.to_string()],
        (None, Some(path)) => {
            let body =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut out = Vec::new();
            for (i, line) in body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let at = || format!("{}:{}", path.display(), i + 1);
                let doc: serde_json::Value =
                    serde_json::from_str(line.trim_start_matches('\u{feff}'))
                        .map_err(|e| format!("{}: {e}", at()))?;
                let t = doc[field]
                    .as_str()
                    .ok_or_else(|| format!("{}: no text field `{field}`", at()))?;
                out.push(t.to_string());
            }
            out
        }
        (None, None) => return Err("give --text or --jsonl".into()),
    };
    if !json {
        eprintln!("model: {}", loaded.dir.display());
    }
    if loaded.model.has_score_head() || loaded.yes_no.is_some() {
        if let (Some(head), false) = (&loaded.yes_no, json) {
            eprintln!(
                "Yes/No reward model: log p({:?}) − log p({:?}) after the text and {:?}",
                head.yes, head.no, head.question
            );
        }
        for (i, t) in texts.iter().enumerate() {
            let ids = rlx::inspect::ids_of(&loaded.tok, t, chat)?;
            let score = match &loaded.yes_no {
                Some(head) => rlx::inspect::answer_score(&loaded, head, &ids, &device)?,
                None => f64::from(rlx::inspect::reward_of(&loaded, &ids, &device)?),
            };
            if json {
                println!("{}", serde_json::json!({"score": score, "tokens": ids.len()}));
            } else if texts.len() > 1 {
                println!("text {}: {} tokens, score {score:.6}", i + 1, ids.len());
            } else {
                println!("score {score:.6} ({} tokens)", ids.len());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (mut total, mut predicted) = (0.0, 0);
    for (i, t) in texts.iter().enumerate() {
        let ids = rlx::inspect::ids_of(&loaded.tok, t, chat)?;
        let s = rlx::inspect::score_ids(&loaded, &ids, &device)?;
        total += s.nll;
        predicted += s.predicted;
        if json {
            println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
            continue;
        }
        if texts.len() > 1 {
            println!("text {}: {} tokens, NLL {:.6}", i + 1, s.tokens.len(), s.nll);
            continue;
        }
        println!("{:>5}  {:>8}  {:>12}  piece", "pos", "id", "log-prob");
        for (pos, tok) in s.tokens.iter().enumerate() {
            let lp = tok.logp.map_or("-".to_string(), |l| format!("{l:.6}"));
            println!("{pos:>5}  {:>8}  {lp:>12}  {:?}", tok.id, tok.piece);
        }
    }
    if !json {
        let per = if predicted > 0 { total / predicted as f64 } else { 0.0 };
        println!("summed NLL {total:.6} over {predicted} predicted tokens ({per:.6} per token)");
    }
    Ok(ExitCode::SUCCESS)
}
