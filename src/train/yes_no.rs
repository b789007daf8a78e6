//! A reward model read as a language model's answer (`yes_no(MODEL, question, yes, no)`): the
//! score of a text is `log p(yes | context text question) − log p(no | context text question)`,
//! each answer's log-probability summed over its tokens. With one-token answers that is the
//! difference of two logits at the question's last position — a linear head fixed to the
//! difference of two unembedding rows, trained through the trunk — and it is how a Tinker
//! server, which has no score heads, holds a reward model: two sequences per scored text,
//! whose log-probabilities rlx reads and whose gradient is `±∂L/∂score` on the answer tokens.

use crate::check::{Checked, params};
use crate::ir::graph::ModelInit;
use crate::tokenizer::Tok;
use crate::train::signals::TextRows;

/// A Yes/No head as the recipe declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// The head in `tok`'s ids: refused when an answer is empty or unknown to the tokenizer, or
    /// both answers are the same tokens (the score would be 0 whatever the text).
    pub fn tokens(&self, tok: &Tok, model: &str) -> Result<YesNoTokens, String> {
        let unk = tok.inner.token_to_id("<unk>");
        let encode = |what: &str, text: &str| -> Result<Vec<u32>, String> {
            let ids = tok.encode(text);
            if unk.is_some_and(|u| ids.contains(&u)) {
                return Err(format!(
                    "`{model}`'s {what} {text:?} has words the tokenizer does not know: choose {what} from its vocabulary (`rlx inspect` lists a checkpoint's)"
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
    pub fn asked(&self, text: &TextRows) -> Vec<Vec<u32>> {
        text.ctx
            .iter()
            .zip(&text.toks)
            .map(|(c, x)| [c.as_slice(), x.as_slice(), &self.question].concat())
            .collect()
    }

    /// The two texts each row is scored by: its question followed by each answer.
    pub fn answers(&self, text: &TextRows) -> [TextRows; 2] {
        let asked = self.asked(text);
        let rows = |answer: &Vec<u32>| TextRows {
            ctx: asked.clone(),
            toks: vec![answer.clone(); asked.len()],
        };
        [rows(&self.yes), rows(&self.no)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tok {
        let pieces = crate::tokenizer::pieces_of(["the", "food", "was", "great", "bad"]);
        Tok::from_json(&Tok::json(&pieces)).unwrap()
    }

    fn head(q: &str, yes: &str, no: &str) -> YesNoHead {
        YesNoHead { question: q.into(), yes: yes.into(), no: no.into() }
    }

    #[test]
    fn each_row_is_asked_after_its_text_and_answered_both_ways() {
        let tok = tok();
        let t = head(" the food was", " great", " bad").tokens(&tok, "rm").unwrap();
        assert_eq!(t.question, tok.encode(" the food was"));
        let text = TextRows { ctx: vec![vec![1, 7]], toks: vec![vec![9, 2]] };
        let [yes, no] = t.answers(&text);
        let asked = [vec![1, 7, 9, 2], t.question.clone()].concat();
        assert_eq!(yes.ctx, vec![asked.clone()]);
        assert_eq!(no.ctx, vec![asked]);
        assert_eq!(yes.toks, vec![tok.encode(" great")]);
        assert_eq!(no.toks, vec![tok.encode(" bad")]);
    }

    /// The score as the local engine computes it, against the candle engine's log-probabilities
    /// of each answer and against its hand-computable gradient: with one-token answers,
    /// ∂score/∂(final norm's bias) = W_yes − W_no, the two unembedding columns.
    #[test]
    fn the_local_score_is_the_answers_log_probability_difference_with_its_exact_gradient() {
        use std::collections::HashMap;

        use candle_core::Device;

        use crate::engine::Seq;
        use crate::model::transformer::{Heads, init_params};
        use crate::model::{ModelConfig, Transformer};
        use crate::rng::Rng;
        use crate::train::signals::{ModelView, SignalCx, answer_score};

        let tok = tok();
        let cfg = ModelConfig {
            vocab: tok.vocab_size(),
            layers: 2,
            width: 16,
            heads: 2,
            context: 32,
            family: Default::default(),
            classifier_pad: None,
        };
        let heads = Heads { lm: true, ..Default::default() };
        let params = init_params(&cfg, heads, &mut Rng::new(7), &Device::Cpu).unwrap();
        for (_, v) in params.iter() {
            v.set(&(v.as_tensor() * 20.0).unwrap()).unwrap();
        }
        let model = Transformer::from_params(&cfg, &params).unwrap();
        let head = head(" the food was", " great", " bad");
        let t = head.tokens(&tok, "rm").unwrap();
        // Two rows of different lengths (the shorter is padded).
        let text = TextRows {
            ctx: vec![tok.prompt(" the food"), tok.prompt(" the")],
            toks: vec![tok.response(" was great . the"), tok.response(" food")],
        };
        let empty = HashMap::new();
        let (tasks, rewards, widths) = (HashMap::new(), Default::default(), HashMap::new());
        let cx = SignalCx {
            models: ModelView { live: &empty, frozen: &empty },
            temperature: 0.7,
            tasks: &tasks,
            rewards: &rewards,
            tok: &tok,
            device: &Device::Cpu,
            widths: &widths,
            frozen_only: false,
            old_is: None,
        };
        let score = answer_score(&model, &head, "rm", &text, true, &cx).unwrap();
        let got = score.to_vec1::<f32>().unwrap();
        let frozen = Transformer::frozen(&cfg, &params).unwrap();
        let [yes, no] = t.answers(&text);
        let logp = |a: &TextRows| -> Vec<f32> {
            let seqs: Vec<Seq> = a
                .ctx
                .iter()
                .zip(&a.toks)
                .map(|(c, x)| Seq { ctx: c.clone(), toks: x.clone() })
                .collect();
            let lp = crate::engine::candle::text_logp(&frozen, &seqs, &Device::Cpu).unwrap();
            lp.iter().map(|r| r.iter().sum()).collect()
        };
        let (y, n) = (logp(&yes), logp(&no));
        for i in 0..2 {
            // At temperature 1 whatever the stage samples at.
            let tol = 1e-5 * y[i].abs().max(n[i].abs()).max(1.0);
            assert!((got[i] - (y[i] - n[i])).abs() < tol, "{got:?} vs {y:?} − {n:?}");
        }
        assert!(got.iter().all(|s| s.abs() > 1e-3), "a score of 0 checks nothing: {got:?}");
        let grads = score.sum_all().unwrap().backward().unwrap();
        let bias = grads.get(params.get("ln_f.bias").unwrap().as_tensor()).unwrap();
        let w = params.get("lm_head.weight").unwrap().as_tensor();
        let column = |id: u32| w.narrow(1, id as usize, 1).unwrap().squeeze(1).unwrap();
        let expected = ((column(t.yes[0]) - column(t.no[0])).unwrap() * 2.0).unwrap();
        let diff = (bias - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "∂score/∂ln_f.bias ≠ 2 (W_yes − W_no)");
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
