//! A reward model read as a language model's answer (`yes_no(MODEL, question, yes, no)`): the
//! score of a text is `log p(yes | context text question) − log p(no | context text question)`,
//! each answer's log-probability summed over its tokens. With one-token answers that is the
//! difference of two logits at the question's last position — a linear head fixed to the
//! difference of two unembedding rows, trained through the trunk — and it is how a Tinker
//! server, which has no score heads, holds a reward model: two sequences per scored text,
//! whose log-probabilities rlx reads and whose gradient is `±∂L/∂score` on the answer tokens.

use std::path::Path;

use crate::check::{Checked, params};
use crate::ir::graph::ModelInit;
use crate::tokenizer::Tok;

/// A Yes/No head as the recipe declares it. A run saves it beside the model's checkpoint
/// (`RUN/models/NAME/yes_no.json`), so that `rlx score` scores texts the way the run did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct YesNoHead {
    pub question: String,
    pub yes: String,
    pub no: String,
}

/// A head's texts as token ids of the run's tokenizer.
#[derive(Debug, Clone)]
pub struct YesNoTokens {
    pub question: Vec<u32>,
    pub yes: Vec<u32>,
    pub no: Vec<u32>,
}

impl YesNoHead {
    /// The head `model` is scored with, where it is a `yes_no(...)` model (or a copy of one).
    pub fn of(checked: &Checked, model: &str) -> Option<YesNoHead> {
        let decl = checked.program.yes_no_decl(model)?;
        debug_assert!(matches!(decl.init, ModelInit::YesNo(_)));
        let p = checked.decl_params.get(&decl.name.name)?;
        let text =
            |k: &str| params::get(p, k).and_then(|v| v.str()).unwrap_or_default().to_string();
        Some(YesNoHead { question: text("question"), yes: text("yes"), no: text("no") })
    }

    /// The file beside a checkpoint that makes it a Yes/No reward model.
    pub const FILE: &'static str = "yes_no.json";

    pub fn save(&self, model_dir: &Path) -> Result<(), String> {
        let path = model_dir.join(Self::FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The head saved beside a checkpoint, if one is.
    pub fn read(model_dir: &Path) -> Result<Option<YesNoHead>, String> {
        let path = model_dir.join(Self::FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map(Some).map_err(|e| {
            format!("{}: {e} (expected {{\"question\", \"yes\", \"no\"}})", path.display())
        })
    }

    /// The head in `tok`'s ids: refused when an answer is empty or unknown to the tokenizer, or
    /// both answers are the same tokens (the score would be 0 whatever the text).
    pub fn tokens(&self, tok: &Tok, model: &str) -> Result<YesNoTokens, String> {
        let unk = tok.inner.token_to_id("<unk>");
        let encode = |what: &str, text: &str| -> Result<Vec<u32>, String> {
            let ids = tok.encode(text);
            if unk.is_some_and(|u| ids.contains(&u)) {
                return Err(format!(
                    "`{model}`'s {what} {text:?} has words the tokenizer does not know: choose {what} from its vocabulary (`rlx score MODEL --text TEXT` shows the tokens a text becomes)"
                ));
            }
            Ok(ids)
        };
        let t = YesNoTokens {
            question: encode("question", &self.question)?,
            yes: encode("yes answer", &self.yes)?,
            no: encode("no answer", &self.no)?,
        };
        if t.yes.is_empty() || t.no.is_empty() || t.yes == t.no {
            return Err(format!(
                "`{model}`'s answers {:?} and {:?} must be two different non-empty texts of the tokenizer",
                self.yes, self.no
            ));
        }
        Ok(t)
    }
}

impl YesNoTokens {
    /// Each row's `context text question`: what an answer is read after.
    pub fn asked(&self, ctx: &[Vec<u32>], toks: &[Vec<u32>]) -> Vec<Vec<u32>> {
        ctx.iter()
            .zip(toks)
            .map(|(c, x)| [c.as_slice(), x.as_slice(), &self.question].concat())
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tok() -> Tok {
        let pieces = crate::tokenizer::pieces_of(["the", "food", "was", "great", "bad"]);
        Tok::from_json(&Tok::json(&pieces)).unwrap()
    }

    pub(crate) fn head(q: &str, yes: &str, no: &str) -> YesNoHead {
        YesNoHead { question: q.into(), yes: yes.into(), no: no.into() }
    }

    #[test]
    fn each_row_is_asked_after_its_text() {
        let tok = tok();
        let t = head(" the food was", " great", " bad").tokens(&tok, "rm").unwrap();
        assert_eq!(t.question, tok.encode(" the food was"));
        assert_eq!(t.yes, tok.encode(" great"));
        assert_eq!(t.no, tok.encode(" bad"));
        let asked = t.asked(&[vec![1, 7]], &[vec![9, 2]]);
        assert_eq!(asked, vec![[vec![1, 7, 9, 2], t.question.clone()].concat()]);
    }

    #[test]
    fn a_saved_head_reads_back_and_a_malformed_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(YesNoHead::read(dir.path()).unwrap(), None);
        let h = head(" the food was", " great", " bad");
        h.save(dir.path()).unwrap();
        assert_eq!(YesNoHead::read(dir.path()).unwrap(), Some(h));
        std::fs::write(dir.path().join(YesNoHead::FILE), "{\"question\": 1}").unwrap();
        let e = YesNoHead::read(dir.path()).unwrap_err();
        assert!(e.contains("yes_no.json") && e.contains("expected"), "{e}");
    }

    #[test]
    fn unknown_equal_or_empty_answers_are_refused() {
        let tok = tok();
        let e = head(" the food was", " Yes", " bad").tokens(&tok, "rm").unwrap_err();
        assert!(e.contains("does not know"), "{e}");
        let e = head("", " great", " great").tokens(&tok, "rm").unwrap_err();
        assert!(e.contains("two different"), "{e}");
        let e = head("", "", " bad").tokens(&tok, "rm").unwrap_err();
        assert!(e.contains("non-empty"), "{e}");
    }
}
