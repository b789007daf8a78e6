//! `rlx values RUN`: how well a trained policy's value estimates predict what its states are
//! worth — VinePPO's claim that Monte-Carlo values from a few rollouts rank reasoning steps
//! better than a learned critic. On held-out prompts the policy writes responses; every
//! reasoning-step start is a state; its "true" value is the verifier's mean reward over many
//! fresh rollouts from it, and each estimator — the run's value head (when it has one) and a
//! K-rollout Monte-Carlo estimate drawn independently — is scored against it.

use crate::ir::graph::ScorerRef;
use crate::rewards::Rewards;
use crate::train::scoring::HostScorers;
use std::path::Path;

use candle_core::Device;
use serde::Serialize;

use crate::check::Checked;
use crate::model::{Family, Layout, Transformer};
use crate::rng::Rng;
use crate::sample;
use crate::syntax::ast::SourceKind as DataKw;
use crate::tasks::Task;
use crate::tokenizer::Tok;
use crate::train::run::stage_sampling;
use crate::train::signals::{self, SourceKind, step_starts};
use crate::train::vine;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The RL stage whose model and sampling settings are probed (default: the first stage
    /// that samples from a task with a verifier).
    pub stage: Option<String>,
    /// Held-out prompts.
    pub prompts: usize,
    /// Responses per prompt.
    pub samples: usize,
    /// Rollouts per state of the Monte-Carlo estimate (default: the recipe's `vine_values`
    /// `k`, else 9).
    pub k: Option<usize>,
    /// Rollouts per state of the reference value.
    pub truth: usize,
    pub seed: u64,
}

/// One estimator scored against the reference values.
#[derive(Debug, Clone, Serialize)]
pub struct EstimatorScore {
    pub name: String,
    /// Mean squared error against the reference value, with its standard error over states.
    pub mse: f64,
    pub mse_se: f64,
    /// Of consecutive step starts whose reference values differ by at least `MARGIN`, the
    /// fraction whose step advantage `V(next) − V(this)` the estimator signs correctly (ties
    /// count half): whether it ranks a step as helping or hurting.
    pub step_sign: f64,
    pub step_pairs: usize,
}

/// The probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub stage: String,
    pub model: String,
    pub prompts: usize,
    pub samples: usize,
    pub states: usize,
    pub truth_rollouts: usize,
    /// The reference's own sampling noise, `mean p(1 − p) / (n − 1)`: part of every MSE.
    pub truth_noise: f64,
    /// Mean reference value (how often the policy's states lead to a correct answer).
    pub mean_value: f64,
    pub estimators: Vec<EstimatorScore>,
}

/// A step pair counts when its reference advantage is at least this large: well above the
/// reference's noise (≤ 0.09 at 64 rollouts per state).
pub const MARGIN: f64 = 0.2;

/// Scores estimators against reference values. `rows[r][s]` is one estimator's value of the
/// s-th step start of response r (`None` where the response has fewer steps).
pub fn score(
    name: &str,
    estimate: &[Vec<Option<f64>>],
    truth: &[Vec<Option<f64>>],
) -> EstimatorScore {
    let mut sq = Vec::new();
    let (mut right, mut pairs) = (0.0, 0usize);
    for (est, tru) in estimate.iter().zip(truth) {
        let both: Vec<(f64, f64)> =
            est.iter().zip(tru).filter_map(|(e, t)| Some(((*e)?, (*t)?))).collect();
        sq.extend(both.iter().map(|(e, t)| (e - t).powi(2)));
        for w in both.windows(2) {
            let (dt, de) = (w[1].1 - w[0].1, w[1].0 - w[0].0);
            if dt.abs() < MARGIN {
                continue;
            }
            pairs += 1;
            right += if de == 0.0 {
                0.5
            } else if de.signum() == dt.signum() {
                1.0
            } else {
                0.0
            };
        }
    }
    let (mse, mse_se) = mean_se(&sq);
    EstimatorScore {
        name: name.to_string(),
        mse,
        mse_se,
        step_sign: if pairs > 0 { right / pairs as f64 } else { f64::NAN },
        step_pairs: pairs,
    }
}

fn mean_se(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Runs the probe on the model a run saved. `checked` is the run's recipe, checked with the
/// overrides it was run with.
pub fn probe(
    run: &Path,
    checked: &Checked,
    opts: &ProbeOptions,
    device: &Device,
) -> Result<ProbeReport, String> {
    let stages = &checked.program.stages;
    let index = match &opts.stage {
        Some(name) => stages
            .iter()
            .position(|s| s.name.name == *name)
            .ok_or_else(|| format!("the recipe has no stage `{name}`"))?,
        None => stages
            .iter()
            .position(|s| s.source_kind() == Some(DataKw::Prompts))
            .ok_or("the recipe has no stage that samples prompts")?,
    };
    let stage = &stages[index];
    let Some((DataKw::Prompts, data)) = &stage.source else {
        return Err(format!("stage `{}` does not sample prompts", stage.name.name));
    };
    let decl = checked
        .program
        .data
        .iter()
        .find(|d| d.name.name == data.data)
        .ok_or_else(|| format!("no data set `{}`", data.data))?;
    let resolved = checked.decl_params.get(&decl.name.name).cloned().unwrap_or_default();
    let task = Task::build(decl.spec.name, &resolved)?;
    if !task.has_verifier() {
        return Err(format!(
            "`{}` has no verifier: true values need a reward that can score rollouts",
            data.data
        ));
    }
    let model_name = stage.trained().ok_or("the stage trains no model")?.to_string();
    let dir = run.join("models").join(&model_name);
    if !dir.is_dir() {
        return Err(format!("{} is missing: did the run finish?", dir.display()));
    }
    let loaded = crate::inspect::load(&dir, false, device)?;
    // The run's own tokenizer for the built-in model (the saved copy adds a post-processor).
    let tok = match loaded.model.cfg.family {
        Family::Gpt => Tok::from_file(&run.join("tokenizer.json"))?,
        Family::Llama(_) => loaded.tok,
    };
    let model = loaded.model;
    let (sources, delimiter) = signals::sources(checked, index);
    let recipe_k = sources.iter().find_map(|s| match &s.kind {
        SourceKind::StepRollouts { k, .. } => Some(*k),
        _ => None,
    });
    let k = opts.k.or(recipe_k).unwrap_or(9).max(1);
    let delimiter = delimiter.unwrap_or_else(|| "\n".to_string());
    let sampling = stage_sampling(checked, index);

    let n = opts.prompts.min(task.eval.len()).max(1);
    let samples = opts.samples.max(1);
    let mut prompt_texts = Vec::new();
    let mut prompt_toks = Vec::new();
    for p in &task.eval[..n] {
        for _ in 0..samples {
            prompt_texts.push(p.text.clone());
            prompt_toks.push(tok.prompt(&p.text));
        }
    }
    let mut rng = Rng::new(opts.seed);
    let generation = sample::generate(&model, &tok, &prompt_toks, &sampling, &mut rng, device)
        .map_err(|e| e.to_string())?;
    let responses = generation.tokens.clone();
    let verifier = ScorerRef::Verifier { data: data.data.clone(), member: "correct".into() };
    let tasks = std::collections::HashMap::from([(data.data.clone(), task.clone())]);
    let estimate = |k: usize, seed: u64| -> Result<Vec<Vec<f32>>, String> {
        let mut rng = Rng::new(seed);
        let (t, _) = vine::values(
            &model,
            &tok,
            &generation,
            &prompt_toks,
            &prompt_texts,
            &responses,
            HostScorers { tasks: &tasks, rewards: &Rewards::default() },
            &verifier,
            k,
            None,
            &delimiter,
            &sampling,
            &mut rng,
            device,
        )?;
        t.to_vec2::<f32>().map_err(|e| e.to_string())
    };
    let truth_raw = estimate(opts.truth.max(2), opts.seed ^ 0x7A07)?;
    let mc_raw = estimate(k, opts.seed ^ 0x3C9)?;
    let starts: Vec<Vec<usize>> =
        responses.iter().map(|r| step_starts(r, &tok, &delimiter)).collect();
    let at_starts = |raw: &[Vec<f32>]| -> Vec<Vec<Option<f64>>> {
        raw.iter()
            .zip(&starts)
            .map(|(row, st)| (0..st.len()).map(|s| row.get(s).map(|v| *v as f64)).collect())
            .collect()
    };
    let truth = at_starts(&truth_raw);
    let mut estimators = Vec::new();
    if model.has_value_head() {
        let critic = critic_values(&model, &prompt_toks, &responses, &starts, device)?;
        estimators.push(score("critic (value head)", &critic, &truth));
    }
    estimators.push(score(&format!("monte-carlo, k = {k}"), &at_starts(&mc_raw), &truth));
    let flat: Vec<f64> = truth.iter().flatten().flatten().copied().collect();
    let m = opts.truth.max(2) as f64;
    let truth_noise =
        flat.iter().map(|p| p * (1.0 - p) / (m - 1.0)).sum::<f64>() / flat.len().max(1) as f64;
    Ok(ProbeReport {
        stage: stage.name.name.clone(),
        model: model_name,
        prompts: n,
        samples,
        states: flat.len(),
        truth_rollouts: opts.truth.max(2),
        truth_noise,
        mean_value: mean_se(&flat).0,
        estimators,
    })
}

/// The value head's prediction at each step start: the state before the step's first token.
fn critic_values(
    model: &Transformer,
    prompts: &[Vec<u32>],
    responses: &[Vec<u32>],
    starts: &[Vec<usize>],
    device: &Device,
) -> Result<Vec<Vec<Option<f64>>>, String> {
    let err = |e: candle_core::Error| e.to_string();
    let mut out = Vec::new();
    let rows = prompts.chunks(64).zip(responses.chunks(64)).zip(starts.chunks(64));
    for ((prompts, responses), starts) in rows {
        let ps: Vec<&[u32]> = prompts.iter().map(|p| &p[..]).collect();
        // An empty response still has the state after its prompt.
        let rs: Vec<&[u32]> = responses.iter().map(|r| &r[..]).collect();
        let layout = Layout::new(&ps, &rs, device).map_err(err)?;
        let hidden = model.hidden_of(&layout, false).map_err(err)?;
        let values: Vec<Vec<f32>> =
            model.token_values(&hidden, &layout).and_then(|t| t.to_vec2()).map_err(err)?;
        for (row, st) in values.iter().zip(starts) {
            out.push(st.iter().map(|&o| row.get(o).map(|v| *v as f64)).collect());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_squared_errors_and_signed_step_advantages() {
        let truth = vec![vec![Some(0.5), Some(0.9), Some(0.2)], vec![Some(0.3), None]];
        // Row 0: steps +0.4 and −0.7 (both count); row 1 has one state, no pair.
        let est = vec![vec![Some(0.4), Some(0.6), Some(0.7)], vec![Some(0.5), None]];
        let s = score("e", &est, &truth);
        let sq = [0.01, 0.09, 0.25, 0.04];
        let mean = sq.iter().sum::<f64>() / 4.0;
        assert!((s.mse - mean).abs() < 1e-12, "{}", s.mse);
        assert_eq!(s.step_pairs, 2);
        // +0.2 agrees with +0.4; +0.1 disagrees with −0.7.
        assert!((s.step_sign - 0.5).abs() < 1e-12);
        let var = sq.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0;
        assert!((s.mse_se - (var / 4.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn small_reference_steps_and_ties_are_handled() {
        let truth = vec![vec![Some(0.5), Some(0.55), Some(0.0)]];
        let est = vec![vec![Some(0.3), Some(0.3), Some(0.3)]];
        let s = score("e", &est, &truth);
        // 0.5 → 0.55 is below the margin; 0.55 → 0.0 counts, and a tie scores half.
        assert_eq!(s.step_pairs, 1);
        assert_eq!(s.step_sign, 0.5);
        let none = score("e", &[vec![]], &[vec![]]);
        assert!(none.mse.is_nan() && none.step_sign.is_nan() && none.step_pairs == 0);
    }
}
