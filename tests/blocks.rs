//! Every block's forward against hand-computed values (derivations in comments), the conformance
//! traps where peers disagree (peers.md §B11–B12), and every differentiable block's gradient
//! against central finite differences in f64.

use candle_core::{DType, Device, Tensor, Var};
use rlx::blocks::ctx::{Arg, Ctx, StepsData, TextData, Value};
use rlx::blocks::lookup;
use rlx::blocks::spec::{GradRule, InputKind, Level, LevelRule, OutputGrad, OutputKind};
use rlx::check::params::{self, Resolved};
use rlx::diag::Span;
use rlx::ir::graph::Const;

const CPU: Device = Device::Cpu;

fn t1(v: &[f64]) -> Tensor {
    Tensor::new(v, &CPU).unwrap()
}

fn t2(rows: &[&[f64]]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &CPU).unwrap()
}

fn ints(rows: &[&[i64]]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &CPU).unwrap()
}

fn resolve(block: &str, given: &[(&str, Const)]) -> Vec<Resolved> {
    let spec = lookup(block).unwrap();
    let given: Vec<(usize, Const, Span)> = given
        .iter()
        .map(|(k, v)| {
            (spec.param(k).unwrap_or_else(|| panic!("{block}.{k}")), v.clone(), Span::default())
        })
        .collect();
    let mut diags = Vec::new();
    let out = params::resolve(
        spec.params,
        &given,
        block,
        Span::default(),
        &|_| Some(params::Value::Num(64.0)),
        &mut diags,
    );
    assert!(diags.is_empty(), "{diags:?}");
    out
}

/// One input: a value, its level and the mask of its axis.
struct In {
    value: Value,
    level: Option<Level>,
    mask: Option<Tensor>,
}

fn tok(x: Tensor, mask: &Tensor) -> In {
    In { value: Value::Tensor(x), level: Some(Level::Token), mask: Some(mask.clone()) }
}

fn seq(x: Tensor) -> In {
    In { value: Value::Tensor(x), level: Some(Level::Seq), mask: None }
}

fn step(x: Tensor, mask: &Tensor) -> In {
    In { value: Value::Tensor(x), level: Some(Level::Step), mask: Some(mask.clone()) }
}

fn run_full(
    block: &str,
    ins: &[In],
    given: &[(&str, Const)],
    level: Level,
    mask: Option<&Tensor>,
    groups: Option<&Tensor>,
) -> Value {
    let spec = lookup(block).unwrap();
    let params = resolve(block, given);
    let args: Vec<Arg> = ins
        .iter()
        .map(|i| Arg { value: &i.value, level: i.level, mask: i.mask.as_ref() })
        .collect();
    let ctx = Ctx { device: &CPU, args, params: &params, level, mask, groups };
    (spec.forward.unwrap())(&ctx).unwrap_or_else(|e| panic!("{block}: {e}"))
}

fn run(
    block: &str,
    ins: &[In],
    given: &[(&str, Const)],
    level: Level,
    mask: Option<&Tensor>,
) -> Vec<f64> {
    run_groups(block, ins, given, level, mask, None)
}

fn run_groups(
    block: &str,
    ins: &[In],
    given: &[(&str, Const)],
    level: Level,
    mask: Option<&Tensor>,
    groups: Option<&Tensor>,
) -> Vec<f64> {
    match run_full(block, ins, given, level, mask, groups) {
        Value::Tensor(t) => {
            t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
        }
        other => panic!("{block} returned {other:?}"),
    }
}

fn close(actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= tol * (1.0 + e.abs()), "{actual:?} vs {expected:?}");
    }
}

fn num(v: f64) -> Const {
    Const::Num(v)
}

fn word(w: &str) -> Const {
    Const::Word(w.into())
}

/// The gradient of `sum(block output)` with respect to input `i`.
fn grad_of(
    block: &str,
    mut ins: Vec<In>,
    i: usize,
    given: &[(&str, Const)],
    level: Level,
    mask: Option<&Tensor>,
) -> Vec<f64> {
    let Value::Tensor(x) = ins[i].value.clone() else { panic!() };
    let var = Var::from_tensor(&x).unwrap();
    ins[i].value = Value::Tensor(var.as_tensor().clone());
    let Value::Tensor(out) = run_full(block, &ins, given, level, mask, None) else { panic!() };
    let grads = out.sum_all().unwrap().backward().unwrap();
    grads
        .get(var.as_tensor())
        .map(|g| g.flatten_all().unwrap().to_vec1::<f64>().unwrap())
        .unwrap_or_else(|| vec![0.0; x.elem_count()])
}

#[test]
fn ppo_clip_values_gradients_and_dual_clip() {
    // ρ = e^{logp − old} = [1.5, 0.5, 1, 1.1], A = [1, −1, 2, −1], ε = 0.2:
    // t0: max(−1.5, −1.2) = −1.2 (clipped, no gradient); t1: max(0.5, 0.8) = 0.8 (clipped);
    // t2: −2 (on-policy: −A); t3: ρ inside the range: 1.1, gradient −Aρ = 1.1.
    let m = t2(&[&[1.0, 1.0, 1.0, 1.0]]);
    let logp = t2(&[&[1.5f64.ln(), 0.5f64.ln(), 0.0, 1.1f64.ln()]]);
    let ins = || {
        vec![
            tok(logp.clone(), &m),
            tok(t2(&[&[0.0; 4]]), &m),
            tok(t2(&[&[1.0, -1.0, 2.0, -1.0]]), &m),
        ]
    };
    close(&run("ppo_clip", &ins(), &[], Level::Token, Some(&m)), &[-1.2, 0.8, -2.0, 1.1], 1e-12);
    close(
        &grad_of("ppo_clip", ins(), 0, &[], Level::Token, Some(&m)),
        &[0.0, 0.0, -2.0, 1.1],
        1e-12,
    );
    // Dual clip, A = −1 and ρ = 5: max(5, 1.2) = 5, bounded by −A·c = 3, with no gradient.
    let m1 = t2(&[&[1.0]]);
    let ins =
        || vec![tok(t2(&[&[5f64.ln()]]), &m1), tok(t2(&[&[0.0]]), &m1), tok(t2(&[&[-1.0]]), &m1)];
    close(
        &run("ppo_clip", &ins(), &[("dual_clip", num(3.0))], Level::Token, Some(&m1)),
        &[3.0],
        1e-12,
    );
    close(
        &grad_of("ppo_clip", ins(), 0, &[("dual_clip", num(3.0))], Level::Token, Some(&m1)),
        &[0.0],
        0.0,
    );
    close(&run("ppo_clip", &ins(), &[], Level::Token, Some(&m1)), &[5.0], 1e-12);
    // Clip-higher: ρ = 1.25 with A = 1 is inside (0.8, 1.28): −1.25.
    let ins =
        vec![tok(t2(&[&[1.25f64.ln()]]), &m1), tok(t2(&[&[0.0]]), &m1), tok(t2(&[&[1.0]]), &m1)];
    close(
        &run("ppo_clip", &ins, &[("eps_high", num(0.28))], Level::Token, Some(&m1)),
        &[-1.25],
        1e-12,
    );
    // Masking happens once, in the reduction: a padded position (ρ = e³) does not reach the mean.
    let half = t2(&[&[1.0, 0.0]]);
    let ins = vec![
        tok(t2(&[&[0.0, 3.0]]), &half),
        tok(t2(&[&[0.0, 0.0]]), &half),
        tok(t2(&[&[1.0, 1.0]]), &half),
    ];
    let Value::Tensor(per_token) = run_full("ppo_clip", &ins, &[], Level::Token, Some(&half), None)
    else {
        panic!()
    };
    close(&run("token_mean", &[tok(per_token, &half)], &[], Level::Scalar, None), &[-1.0], 1e-12);
}

#[test]
fn kl_estimators() {
    // d = logp − ref = [0.5, −0.2]: k1 = d; k2 = mse = d²/2 = [0.125, 0.02];
    // k3 = e^{−d} + d − 1 = [0.606531 − 0.5, 1.221403 − 1.2] = [0.106531, 0.021403]; abs = |d|.
    let m = t2(&[&[1.0, 1.0]]);
    let ins = || vec![tok(t2(&[&[0.5, -0.2]]), &m), tok(t2(&[&[0.0, 0.0]]), &m)];
    let k = |e: &str| run("kl", &ins(), &[("estimator", word(e))], Level::Token, Some(&m));
    close(&k("k1"), &[0.5, -0.2], 1e-12);
    close(&k("k2"), &[0.125, 0.02], 1e-12);
    close(&k("mse"), &[0.125, 0.02], 1e-12);
    close(&k("k3"), &[(-0.5f64).exp() - 0.5, 0.2f64.exp() - 1.2], 1e-12);
    close(&k("abs"), &[0.5, 0.2], 1e-12);
    close(
        &run(
            "kl",
            &ins(),
            &[("estimator", word("k1")), ("clamp", num(0.3))],
            Level::Token,
            Some(&m),
        ),
        &[0.3, -0.2],
        1e-12,
    );
    // ∇k1 = ∇logp; ∇k2 = d·∇logp; ∇k3 = (1 − e^{−d})·∇logp.
    let g = |e: &str| grad_of("kl", ins(), 0, &[("estimator", word(e))], Level::Token, Some(&m));
    close(&g("k1"), &[1.0, 1.0], 1e-12);
    close(&g("k2"), &[0.5, -0.2], 1e-12);
    close(&g("k3"), &[1.0 - (-0.5f64).exp(), 1.0 - 0.2f64.exp()], 1e-12);
    // Straight-through (verl's `k3+`): k3's value, k2's gradient d·∇logp.
    let st = [("estimator", word("k3")), ("gradient", word("k2"))];
    close(&run("kl", &ins(), &st, Level::Token, Some(&m)), &k("k3"), 1e-12);
    close(&grad_of("kl", ins(), 0, &st, Level::Token, Some(&m)), &[0.5, -0.2], 1e-12);
    // IS-corrected k3 (TRL): r·k3 with r = e^{logp − old}; ∇ = r·(k3 + 1 − e^{−d}).
    let old = t2(&[&[0.3, 0.0]]);
    let three =
        || vec![tok(t2(&[&[0.5, -0.2]]), &m), tok(t2(&[&[0.0, 0.0]]), &m), tok(old.clone(), &m)];
    let r = [0.2f64.exp(), (-0.2f64).exp()];
    let k3 = [(-0.5f64).exp() - 0.5, 0.2f64.exp() - 1.2];
    close(
        &run("kl_unbiased", &three(), &[], Level::Token, Some(&m)),
        &[r[0] * k3[0], r[1] * k3[1]],
        1e-12,
    );
    let g = grad_of("kl_unbiased", three(), 0, &[], Level::Token, Some(&m));
    close(
        &g,
        &[r[0] * (k3[0] + 1.0 - (-0.5f64).exp()), r[1] * (k3[1] + 1.0 - 0.2f64.exp())],
        1e-12,
    );
    // k3 ≥ 0 everywhere.
    let mut rng = rlx::exec::synthetic::Rng::new(7);
    let d: Vec<f64> = (0..200).map(|_| 6.0 * rng.normal()).collect();
    let m = Tensor::ones((1, 200), DType::F64, &CPU).unwrap();
    let ins = vec![
        tok(Tensor::from_vec(d, (1, 200), &CPU).unwrap(), &m),
        tok(m.zeros_like().unwrap(), &m),
    ];
    assert!(
        run("kl", &ins, &[("estimator", word("k3"))], Level::Token, Some(&m))
            .iter()
            .all(|k| *k >= 0.0)
    );
}

/// The sequential estimators (GAE, returns, whitening) compute in f32, as their peers do, so
/// their checks use f32 tolerances.
#[test]
fn gae_returns_and_holes() {
    // r = [0, 0, 1], V = 0.5, γ = λ = 1: every advantage is R − V = 0.5.
    // λ = 0.5: t2 = 1 − 0.5 = 0.5; t1 = δ 0 + 0.5·0.5 = 0.25; t0 = 0.125.
    let m = t2(&[&[1.0, 1.0, 1.0]]);
    let ins = || vec![tok(t2(&[&[0.0, 0.0, 1.0]]), &m), tok(t2(&[&[0.5, 0.5, 0.5]]), &m)];
    close(
        &run("gae", &ins(), &[("lambda", num(1.0))], Level::Token, Some(&m)),
        &[0.5, 0.5, 0.5],
        1e-6,
    );
    close(
        &run("gae", &ins(), &[("lambda", num(0.5))], Level::Token, Some(&m)),
        &[0.125, 0.25, 0.5],
        1e-6,
    );
    // A hole at t1 (r = 9, V = 7 there must not matter when skipped, as in verl):
    // skip, λ = 0.5: t2 = 0.5; t0: δ = 0 + 0.5 − 0.5 = 0, A = 0.5·0.5 = 0.25.
    // zero (OpenRLHF), λ = 0.5: t1 counts as r = V = 0: δ = 0.5, A = 0.5 + 0.25 = 0.75;
    // t0: δ = 0 + 0 − 0.5, A = −0.5 + 0.5·0.75 = −0.125.
    let hole = t2(&[&[1.0, 0.0, 1.0]]);
    let ins =
        |v1: f64| vec![tok(t2(&[&[0.0, 9.0, 1.0]]), &hole), tok(t2(&[&[0.5, v1, 0.5]]), &hole)];
    let skip = |v1| run("gae", &ins(v1), &[("lambda", num(0.5))], Level::Token, Some(&hole));
    close(&skip(7.0), &[0.25, 0.0, 0.5], 1e-6);
    close(&skip(-300.0), &skip(7.0), 0.0);
    close(
        &run(
            "gae",
            &ins(7.0),
            &[("lambda", num(0.5)), ("holes", word("zero"))],
            Level::Token,
            Some(&hole),
        ),
        &[-0.125, 0.0, 0.5],
        1e-6,
    );
    // Reward-to-go with γ = 0.5: [1 + 0.5·(0 + 0.5·2), 0 + 0.5·2, 2] = [1.5, 1, 2].
    let ins = vec![tok(t2(&[&[1.0, 0.0, 2.0]]), &m)];
    close(
        &run("returns", &ins, &[("gamma", num(0.5))], Level::Token, Some(&m)),
        &[1.5, 1.0, 2.0],
        1e-6,
    );
    // REINFORCE++ (verl): returns [[1, 1], [0, 1]] whitened over the 4 tokens: mean 0.75,
    // unbiased var 0.25 → (x − 0.75)/0.5 = [0.5, 0.5, −1.5, 0.5].
    let m2 = t2(&[&[1.0, 1.0], &[1.0, 1.0]]);
    let ins = vec![tok(t2(&[&[0.0, 1.0], &[0.0, 1.0]]), &m2)];
    let ins2 = vec![tok(t2(&[&[0.0, 1.0], &[-1.0, 1.0]]), &m2)];
    close(
        &run("reinforce_pp", &ins, &[("eps", num(0.0))], Level::Token, Some(&m2)),
        &[0.0; 4],
        1e-6,
    );
    close(
        &run("reinforce_pp", &ins2, &[("eps", num(0.0))], Level::Token, Some(&m2)),
        &[0.5, 0.5, -1.5, 0.5],
        1e-6,
    );
}

#[test]
fn group_estimators_and_singleton_profiles() {
    let g = ints(&[&[0, 0, 0, 1, 1, 1]]).squeeze(0).unwrap();
    let r = || vec![seq(t1(&[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]))];
    // Group 0 = [1, 0, 1]: mean 2/3, unbiased std √(1/3) = 0.57735: [0.57735, −1.15470, 0.57735];
    // group 1 = [1, 0, 0]: [1.15470, −0.57735, −0.57735].
    let s = 1.0 / 3f64.sqrt();
    close(
        &run_groups("group_zscore", &r(), &[("eps", num(0.0))], Level::Seq, None, Some(&g)),
        &[s, -2.0 * s, s, 2.0 * s, -s, -s],
        1e-9,
    );
    // Dr.GRPO: centre only.
    close(
        &run_groups("group_zscore", &r(), &[("scale", word("none"))], Level::Seq, None, Some(&g)),
        &[1.0 / 3.0, -2.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0],
        1e-12,
    );
    // Zero variance gives a finite 0; a singleton gives 0 (TRL) or r/(1 + eps) (verl).
    let g2 = t1(&[0.0, 0.0, 1.0]).to_dtype(DType::I64).unwrap();
    let ins = || vec![seq(t1(&[1.0, 1.0, 0.7]))];
    close(
        &run_groups("group_zscore", &ins(), &[], Level::Seq, None, Some(&g2)),
        &[0.0, 0.0, 0.0],
        0.0,
    );
    close(
        &run_groups(
            "group_zscore",
            &ins(),
            &[("singleton", word("raw"))],
            Level::Seq,
            None,
            Some(&g2),
        ),
        &[0.0, 0.0, 0.7 / (1.0 + 1e-6)],
        1e-12,
    );
    // RLOO on [1, 0, 1, 1]: r_i − (3 − r_i)/3 = [1/3, −1, 1/3, 1/3]; singleton → 0 or raw.
    let g4 = t1(&[0.0; 4]).to_dtype(DType::I64).unwrap();
    close(
        &run_groups("rloo", &[seq(t1(&[1.0, 0.0, 1.0, 1.0]))], &[], Level::Seq, None, Some(&g4)),
        &[1.0 / 3.0, -1.0, 1.0 / 3.0, 1.0 / 3.0],
        1e-12,
    );
    close(&run_groups("rloo", &ins(), &[], Level::Seq, None, Some(&g2)), &[0.0, 0.0, 0.0], 0.0);
    close(
        &run_groups("rloo", &ins(), &[("singleton", word("raw"))], Level::Seq, None, Some(&g2)),
        &[0.0, 0.0, 0.7],
        0.0,
    );
    // REINFORCE++-baseline (verl): [1, 0 | 1, 1] − group means = c = [0.5, −0.5, 0, 0], spread
    // over ragged responses of 3, 1, 2, 2 tokens and whitened over those 8 tokens:
    // μ = (3·0.5 − 0.5)/8 = 0.125; Σ L(c − μ)² = 3·0.375² + 0.625² + 4·0.125² = 0.875;
    // unbiased v = 0.875/7 = 0.125, scale 1/√0.125 = 2√2.
    let gp = t1(&[0.0, 0.0, 1.0, 1.0]).to_dtype(DType::I64).unwrap();
    let lens = t2(&[&[1.0, 1.0, 1.0], &[1.0, 0.0, 0.0], &[1.0, 1.0, 0.0], &[1.0, 1.0, 0.0]]);
    let s = 2.0 * 2f64.sqrt();
    let (a, b, c) = (0.375 * s, -0.625 * s, -0.125 * s);
    close(
        &run_groups(
            "reinforce_pp_baseline",
            &[seq(t1(&[1.0, 0.0, 1.0, 1.0]))],
            &[("eps", num(0.0))],
            Level::Token,
            Some(&lens),
            Some(&gp),
        ),
        &[a, a, a, b, 0.0, 0.0, c, c, 0.0, c, c, 0.0],
        1e-9,
    );
    // Equal lengths: token weighting equals sequence weighting, [1.224745, −1.224745, 0, 0].
    let k = 0.5 / (1.0f64 / 6.0).sqrt();
    let one = t2(&[&[1.0], &[1.0], &[1.0], &[1.0]]);
    close(
        &run_groups(
            "reinforce_pp_baseline",
            &[seq(t1(&[1.0, 0.0, 1.0, 1.0]))],
            &[("eps", num(0.0))],
            Level::Token,
            Some(&one),
            Some(&gp),
        ),
        &[k, -k, 0.0, 0.0],
        1e-12,
    );
    // ReMax: r − r_greedy.
    close(
        &run("remax", &[seq(t1(&[1.0, 0.0])), seq(t1(&[0.5, 0.5]))], &[], Level::Seq, None),
        &[0.5, -0.5],
        0.0,
    );
}

#[test]
fn whitening_scopes_and_conventions() {
    // [1, 2, 3, 4]: mean 2.5; unbiased var 5/3 → ±1.161895, ±0.387298; biased var 1.25.
    let x = || vec![seq(t1(&[1.0, 2.0, 3.0, 4.0]))];
    let (a, b) = (1.5 / (5.0f64 / 3.0).sqrt(), 0.5 / (5.0f64 / 3.0).sqrt());
    close(&run("whiten", &x(), &[("eps", num(0.0))], Level::Seq, None), &[-a, -b, b, a], 1e-6);
    let (c, d) = (1.5 / 1.25f64.sqrt(), 0.5 / 1.25f64.sqrt());
    close(
        &run("whiten", &x(), &[("eps", num(0.0)), ("var", word("biased"))], Level::Seq, None),
        &[-c, -d, d, c],
        1e-6,
    );
    // shift_mean = false adds the mean back (verl).
    close(
        &run(
            "whiten",
            &x(),
            &[("eps", num(0.0)), ("shift_mean", Const::Bool(false))],
            Level::Seq,
            None,
        ),
        &[2.5 - a, 2.5 - b, 2.5 + b, 2.5 + a],
        1e-6,
    );
    // Per group: [1, 2 | 3, 4] each become [−0.7071, 0.7071].
    let g = t1(&[0.0, 0.0, 1.0, 1.0]).to_dtype(DType::I64).unwrap();
    let h = 0.5f64.sqrt();
    close(
        &run_groups(
            "whiten",
            &x(),
            &[("eps", num(0.0)), ("scope", word("group"))],
            Level::Seq,
            None,
            Some(&g),
        ),
        &[-h, h, -h, h],
        1e-6,
    );
    // Tokens: statistics over unmasked entries only; padding stays 0 (100 is ignored).
    let m = t2(&[&[1.0, 1.0, 0.0]]);
    close(
        &run(
            "whiten",
            &[tok(t2(&[&[1.0, 2.0, 100.0]]), &m)],
            &[("eps", num(0.0))],
            Level::Token,
            Some(&m),
        ),
        &[-h, h, 0.0],
        1e-6,
    );
    // `floor = max`: max(v, eps)^-½ with v = 0 gives (x − μ)/√eps = 0 for constant input.
    close(
        &run("whiten", &[seq(t1(&[2.0, 2.0]))], &[("floor", word("max"))], Level::Seq, None),
        &[0.0, 0.0],
        0.0,
    );
}

#[test]
fn steps_placement_and_vineppo_telescoping() {
    // Two steps with V = [0.2, 0.6], outcome R = 1: A_0 = V_1 − V_0 = 0.4, A_1 = R − V_1 = 0.4.
    // They telescope: Σ A = R − V(s_0) = 0.8.
    let sm = t2(&[&[1.0, 1.0, 0.0]]);
    let adv = run(
        "step_advantage",
        &[seq(t1(&[1.0])), step(t2(&[&[0.2, 0.6, 0.9]]), &sm)],
        &[],
        Level::Step,
        Some(&sm),
    );
    close(&adv, &[0.4, 0.4, 0.0], 1e-12);
    assert!((adv.iter().sum::<f64>() - (1.0 - 0.2)).abs() < 1e-12);
    // Tokens [s0, s0, s1, pad] get [1, 1, 2, 0]; step ends get [0, 1, 2, 0].
    let ids = ints(&[&[0, 0, 1, -1]]);
    let mask = t2(&[&[1.0, 1.0, 1.0, 0.0]]);
    let text = TextData {
        name: "response".into(),
        mask: mask.clone(),
        tokens: None,
        step_ids: Some(ids.clone()),
    };
    let Value::Steps(steps) = run_full(
        "split_steps",
        &[In { value: Value::Text(text), level: None, mask: None }],
        &[],
        Level::Scalar,
        None,
        None,
    ) else {
        panic!()
    };
    assert_eq!(steps.mask.to_vec2::<f32>().unwrap(), vec![vec![1.0, 1.0]]);
    let steps_in =
        || In { value: Value::Steps(StepsData { ..steps.clone() }), level: None, mask: None };
    let x = t2(&[&[1.0, 2.0]]);
    close(
        &run(
            "to_tokens",
            &[step(x.clone(), &steps.mask.to_dtype(DType::F64).unwrap()), steps_in()],
            &[],
            Level::Token,
            Some(&mask),
        ),
        &[1.0, 1.0, 2.0, 0.0],
        0.0,
    );
    // Step values that carry a gradient take the differentiable gather: the same values.
    let tracked = candle_core::Var::from_tensor(&x).unwrap();
    close(
        &run(
            "to_tokens",
            &[
                step(tracked.as_tensor().clone(), &steps.mask.to_dtype(DType::F64).unwrap()),
                steps_in(),
            ],
            &[],
            Level::Token,
            Some(&mask),
        ),
        &[1.0, 1.0, 2.0, 0.0],
        0.0,
    );
    close(
        &run(
            "at_step_ends",
            &[step(x, &steps.mask.to_dtype(DType::F64).unwrap()), steps_in()],
            &[],
            Level::Token,
            Some(&mask),
        ),
        &[0.0, 1.0, 2.0, 0.0],
        0.0,
    );
    // Sequence placement: at_end puts 3 on the last real token; spread on every real token.
    let m = t2(&[&[1.0, 1.0, 0.0]]);
    close(&run("at_end", &[seq(t1(&[3.0]))], &[], Level::Token, Some(&m)), &[0.0, 3.0, 0.0], 0.0);
    close(&run("spread", &[seq(t1(&[3.0]))], &[], Level::Token, Some(&m)), &[3.0, 3.0, 0.0], 0.0);
}

#[test]
fn reward_shaping_blocks() {
    // RCfD: r = 2, r_demo = 1.5: squared −0.25, absolute −0.5.
    let ins = || vec![seq(t1(&[2.0])), seq(t1(&[1.5]))];
    close(&run("calibrate", &ins(), &[], Level::Seq, None), &[-0.25], 1e-12);
    close(
        &run("calibrate", &ins(), &[("distance", word("absolute"))], Level::Seq, None),
        &[-0.5],
        1e-12,
    );
    // RTO: 0.05·(0 − 0) = 0; 0.05·(2 − 0.5) = 0.075 → clipped to 0.05 (scale first, then clip).
    let m = t2(&[&[1.0, 1.0]]);
    let ins = vec![tok(t2(&[&[0.0, 2.0]]), &m), tok(t2(&[&[0.0, 0.5]]), &m)];
    close(&run("dpo_token_reward", &ins, &[], Level::Token, Some(&m)), &[0.0, 0.05], 1e-12);
    // The summed unclipped DPO token reward is DPO's implicit sequence reward β·Σ(logp − ref).
    close(
        &run(
            "dpo_token_reward",
            &ins,
            &[("clip", word("none")), ("beta", num(0.1))],
            Level::Token,
            Some(&m),
        ),
        &[0.0, 0.15],
        1e-12,
    );
    // RLMEC: keep = [0.9, 0.2]; correct: clamp(p − 0.5, 0, 0.5) = [0.4, 0];
    // wrong: clamp(p − 0.5, −0.1, 0) = [0, −0.1].
    let keep = || tok(t2(&[&[0.9, 0.2]]), &m);
    close(
        &run("grm_token_reward", &[keep(), seq(t1(&[1.0]))], &[], Level::Token, Some(&m)),
        &[0.4, 0.0],
        1e-12,
    );
    close(
        &run("grm_token_reward", &[keep(), seq(t1(&[0.0]))], &[], Level::Token, Some(&m)),
        &[0.0, -0.1],
        1e-12,
    );
    close(
        &run("reward_clip", &[seq(t1(&[-20.0, 3.0, 20.0]))], &[], Level::Seq, None),
        &[-10.0, 3.0, 10.0],
        0.0,
    );
    close(
        &run(
            "normalize",
            &[seq(t1(&[3.0]))],
            &[("mean", num(1.0)), ("std", num(4.0))],
            Level::Seq,
            None,
        ),
        &[0.5],
        1e-12,
    );
    let text = TextData {
        name: "response".into(),
        mask: t2(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]),
        tokens: None,
        step_ids: None,
    };
    close(
        &run(
            "length",
            &[In { value: Value::Text(text), level: None, mask: None }],
            &[],
            Level::Seq,
            None,
        ),
        &[2.0, 1.0],
        0.0,
    );
}

#[test]
fn policy_and_value_losses() {
    let m1 = t2(&[&[1.0]]);
    // Vanilla PG: −A·logp = −2·(−1) = 2.
    close(
        &run(
            "pg",
            &[tok(t2(&[&[-1.0]]), &m1), tok(t2(&[&[2.0]]), &m1)],
            &[],
            Level::Token,
            Some(&m1),
        ),
        &[2.0],
        0.0,
    );
    // Value loss: V = 1, V_old = 0.5, R = 2, clip 0.2: unclipped (1 − 2)² = 1; clipped V = 0.7,
    // (0.7 − 2)² = 1.69; ½·max = 0.845. Unclipped: ½·1 = 0.5.
    let v = || vec![tok(t2(&[&[1.0]]), &m1), tok(t2(&[&[0.5]]), &m1), tok(t2(&[&[2.0]]), &m1)];
    close(&run("value_loss", &v(), &[], Level::Token, Some(&m1)), &[0.845], 1e-12);
    close(
        &run("value_loss", &v(), &[("clip", word("none"))], Level::Token, Some(&m1)),
        &[0.5],
        1e-12,
    );
    // RLMEC: ρ = 1.5, r = 0.4, ε = 0.3: w = sg(min(0.6, 1.3·0.4)) = 0.52; ℓ = −0.52·ln 1.5.
    // Its gradient stays −0.52 although the ratio is clipped (in PPO it would be 0).
    let ins =
        || vec![tok(t2(&[&[1.5f64.ln()]]), &m1), tok(t2(&[&[0.0]]), &m1), tok(t2(&[&[0.4]]), &m1)];
    close(&run("rlmec_pg", &ins(), &[], Level::Token, Some(&m1)), &[-0.52 * 1.5f64.ln()], 1e-12);
    close(&grad_of("rlmec_pg", ins(), 0, &[], Level::Token, Some(&m1)), &[-0.52], 1e-12);
    // NLL and its weighted form.
    close(&run("nll", &[tok(t2(&[&[-0.5]]), &m1)], &[], Level::Token, Some(&m1)), &[0.5], 0.0);
    close(
        &run(
            "weighted_nll",
            &[tok(t2(&[&[-0.5]]), &m1), tok(t2(&[&[0.5]]), &m1)],
            &[],
            Level::Token,
            Some(&m1),
        ),
        &[0.25],
        0.0,
    );
}

#[test]
fn symmetric_losses_match_their_gradient_identities() {
    // Reverse PPO at ρ = 1 (inside the clip), π = 0.3, A = 1, Z = −1:
    // ℓ = −f·A·Z·(1 − π)/π_old = 0.7/0.3; ∂ℓ/∂logp = −f·A·Z·(−π)/π_old = −1 = |Z|·(−Aρ), PPO's.
    let m1 = t2(&[&[1.0]]);
    let lp = 0.3f64.ln();
    let ins = || vec![tok(t2(&[&[lp]]), &m1), tok(t2(&[&[lp]]), &m1), tok(t2(&[&[1.0]]), &m1)];
    close(&run("reverse_ppo", &ins(), &[], Level::Token, Some(&m1)), &[0.7 / 0.3], 1e-12);
    let rce = grad_of("reverse_ppo", ins(), 0, &[], Level::Token, Some(&m1));
    let ppo = grad_of("ppo_clip", ins(), 0, &[], Level::Token, Some(&m1));
    close(&rce, &ppo, 1e-12);
    // With Z = −2 the gradient doubles: SPPO's gradient is (α + β|Z|) × PPO's.
    close(
        &grad_of("reverse_ppo", ins(), 0, &[("z", num(-2.0))], Level::Token, Some(&m1)),
        &[2.0 * ppo[0]],
        1e-12,
    );
    // Outside the clip with the clipped branch as the max, f = 0: no loss, no gradient.
    let out =
        || vec![tok(t2(&[&[0.0]]), &m1), tok(t2(&[&[0.6f64.ln()]]), &m1), tok(t2(&[&[1.0]]), &m1)];
    close(&run("reverse_ppo", &out(), &[], Level::Token, Some(&m1)), &[0.0], 0.0);
    // Reverse PG (SA2C): ℓ = −A·Z·(1 − π) = 0.7; gradient −A·Z·(−π) = −0.3 = |Z|·π·(−A), i.e.
    // A2C's gradient reweighted by the token's own probability.
    let ins = || vec![tok(t2(&[&[lp]]), &m1), tok(t2(&[&[1.0]]), &m1)];
    close(&run("reverse_pg", &ins(), &[], Level::Token, Some(&m1)), &[0.7], 1e-12);
    let a2c = grad_of("pg", ins(), 0, &[], Level::Token, Some(&m1));
    close(&grad_of("reverse_pg", ins(), 0, &[], Level::Token, Some(&m1)), &[0.3 * a2c[0]], 1e-12);
}

#[test]
fn preference_losses() {
    // Σ chosen = −2, Σ rejected = −4, refs −3 each: ρ_c = 1, ρ_r = −1, logits = 2.
    // sigmoid, β = 0.1: −log σ(0.2) = ln(1 + e^{−0.2}) = 0.598139; ipo: (2 − 1/0.2)² = 9;
    // hinge: max(0, 1 − 0.2) = 0.8; label smoothing 0.1: 0.9·0.598139 + 0.1·0.798139.
    let m = t2(&[&[1.0, 1.0]]);
    let ins = || {
        vec![
            tok(t2(&[&[-1.0, -1.0]]), &m),
            tok(t2(&[&[-2.0, -2.0]]), &m),
            tok(t2(&[&[-1.5, -1.5]]), &m),
            tok(t2(&[&[-1.5, -1.5]]), &m),
        ]
    };
    let sig = (1.0 + (-0.2f64).exp()).ln();
    close(&run("dpo", &ins(), &[], Level::Seq, None), &[sig], 1e-12);
    close(&run("dpo", &ins(), &[("loss", word("ipo"))], Level::Seq, None), &[9.0], 1e-12);
    close(&run("dpo", &ins(), &[("loss", word("hinge"))], Level::Seq, None), &[0.8], 1e-12);
    close(
        &run("dpo", &ins(), &[("label_smoothing", num(0.1))], Level::Seq, None),
        &[0.9 * sig + 0.1 * (1.0 + 0.2f64.exp()).ln()],
        1e-12,
    );
    // IPO length-normalised (TRL): 1/2 − (−1/2) = 1 → (1 − 5)² = 16.
    close(
        &run(
            "dpo",
            &ins(),
            &[("loss", word("ipo")), ("length_norm", Const::Bool(true))],
            Level::Seq,
            None,
        ),
        &[16.0],
        1e-12,
    );
    // Bradley–Terry: −log σ(1 − 0) = ln(1 + e^{−1}) = 0.313262.
    close(
        &run("pairwise_rm", &[seq(t1(&[1.0])), seq(t1(&[0.0]))], &[], Level::Seq, None),
        &[(1.0 + (-1.0f64).exp()).ln()],
        1e-12,
    );
    // Large margins stay finite.
    let v = run("pairwise_rm", &[seq(t1(&[-800.0])), seq(t1(&[800.0]))], &[], Level::Seq, None);
    assert!(v[0].is_finite() && (v[0] - 1600.0).abs() < 1e-9);
}

#[test]
fn edit_weights_follow_the_minimum_edit() {
    // [1, 2, 3] → [1, 5, 3, 4]: keep 1, substitute 2→5, keep 3, insert 4 → [0.5, 1, 0.5, 1].
    let text = |name: &str, toks: &[i64], mask: &[f64]| In {
        value: Value::Text(TextData {
            name: name.into(),
            mask: t2(&[mask]),
            tokens: Some(ints(&[toks])),
            step_ids: None,
        }),
        level: None,
        mask: None,
    };
    let m = t2(&[&[1.0, 1.0, 1.0, 1.0]]);
    let ins = [
        text("response", &[1, 2, 3, 0], &[1.0, 1.0, 1.0, 0.0]),
        text("fix", &[1, 5, 3, 4], &[1.0; 4]),
    ];
    close(&run("edit_weights", &ins, &[], Level::Token, Some(&m)), &[0.5, 1.0, 0.5, 1.0], 0.0);
    // An unchanged rewrite is all "kept".
    let same = [
        text("response", &[7, 8, 9, 0], &[1.0, 1.0, 1.0, 0.0]),
        text("fix", &[7, 8, 9, 0], &[1.0, 1.0, 1.0, 0.0]),
    ];
    close(&run("edit_weights", &same, &[], Level::Token, Some(&m)), &[0.5, 0.5, 0.5, 0.0], 0.0);
}

#[test]
fn aggregations_and_their_conventions() {
    // x = [[1, 2, 3], [4, 9, 9]] with mask [[1, 1, 1], [1, 0, 0]] and an empty row:
    // token_mean = 10/4; token_sum = 10; seq_mean_token_sum = (6 + 4)/2 (empty rows excluded);
    // seq_mean_token_mean = (2 + 4)/2; …_norm(10) = 0.5. Values at padding (9) never count.
    let m = t2(&[&[1.0, 1.0, 1.0], &[1.0, 0.0, 0.0], &[0.0, 0.0, 0.0]]);
    let x = || vec![tok(t2(&[&[1.0, 2.0, 3.0], &[4.0, 9.0, 9.0], &[9.0, 0.0, 0.0]]), &m)];
    let agg = |b: &str| run(b, &x(), &[], Level::Scalar, None);
    close(&agg("token_mean"), &[2.5], 1e-12);
    close(&agg("token_sum"), &[10.0], 1e-12);
    close(&agg("seq_mean_token_sum"), &[5.0], 1e-12);
    close(&agg("seq_mean_token_mean"), &[3.0], 1e-12);
    close(
        &run("seq_mean_token_sum_norm", &x(), &[("norm", num(10.0))], Level::Scalar, None),
        &[0.5],
        1e-12,
    );
    close(&run("sum_tokens", &x(), &[], Level::Seq, None), &[6.0, 4.0, 0.0], 1e-12);
    close(&run("mean_tokens", &x(), &[], Level::Seq, None), &[2.0, 4.0, 0.0], 1e-12);
    close(&agg("sum"), &[10.0], 1e-12);
    close(&agg("mean"), &[2.5], 1e-12);
    close(&agg("count_nonzero"), &[4.0], 0.0);
    close(&run("seq_mean", &[seq(t1(&[1.0, 2.0, 6.0]))], &[], Level::Scalar, None), &[3.0], 1e-12);
    // mask = none counts padding in the denominator as zeros: (1 + 0)/2 (what the
    // `unmasked-loss` lint warns about; torchrl's `_kl_to_ref` convention).
    let y = vec![tok(t2(&[&[1.0, 3.0]]), &t2(&[&[1.0, 0.0]]))];
    close(&run("token_mean", &y, &[("mask", word("none"))], Level::Scalar, None), &[0.5], 1e-12);
    // Splitting a batch into two halves and summing token sums gives the whole (micro-batch
    // invariance of `token_sum`).
    let (a, b) = (t2(&[&[1.0, 2.0]]), t2(&[&[3.0, 4.0]]));
    let ones = t2(&[&[1.0, 1.0]]);
    let whole = run(
        "token_sum",
        &[tok(t2(&[&[1.0, 2.0], &[3.0, 4.0]]), &t2(&[&[1.0, 1.0], &[1.0, 1.0]]))],
        &[],
        Level::Scalar,
        None,
    );
    let parts = run("token_sum", &[tok(a, &ones)], &[], Level::Scalar, None)[0]
        + run("token_sum", &[tok(b, &ones)], &[], Level::Scalar, None)[0];
    close(&whole, &[parts], 1e-12);
}

#[test]
fn maths_blocks() {
    let m = t2(&[&[1.0, 1.0]]);
    let ab = || vec![tok(t2(&[&[2.0, -3.0]]), &m), tok(t2(&[&[4.0, 2.0]]), &m)];
    let bin = |b: &str| run(b, &ab(), &[], Level::Token, Some(&m));
    close(&bin("add"), &[6.0, -1.0], 0.0);
    close(&bin("sub"), &[-2.0, -5.0], 0.0);
    close(&bin("mul"), &[8.0, -6.0], 0.0);
    close(&bin("div"), &[0.5, -1.5], 0.0);
    close(&bin("min"), &[2.0, -3.0], 0.0);
    close(&bin("max"), &[4.0, 2.0], 0.0);
    // A computed exponent needs a positive base: e^{b·ln a}.
    let pos = vec![tok(t2(&[&[2.0, 3.0]]), &m), tok(t2(&[&[4.0, 2.0]]), &m)];
    close(&run("pow", &pos, &[], Level::Token, Some(&m)), &[16.0, 9.0], 1e-12);
    // A scalar exponent broadcasts, and negative bases work: (−3)² = 9.
    let sq = vec![
        tok(t2(&[&[2.0, -3.0]]), &m),
        In {
            value: Value::Tensor(Tensor::new(2.0f64, &CPU).unwrap()),
            level: Some(Level::Scalar),
            mask: None,
        },
    ];
    close(&run("pow", &sq, &[], Level::Token, Some(&m)), &[4.0, 9.0], 1e-12);
    let x = || vec![tok(t2(&[&[4.0, 0.25]]), &m)];
    let un = |b: &str| run(b, &x(), &[], Level::Token, Some(&m));
    close(&un("neg"), &[-4.0, -0.25], 0.0);
    close(&un("abs"), &[4.0, 0.25], 0.0);
    close(&un("square"), &[16.0, 0.0625], 0.0);
    close(&un("sqrt"), &[2.0, 0.5], 1e-12);
    close(&un("exp"), &[4f64.exp(), 0.25f64.exp()], 1e-12);
    close(&un("log"), &[4f64.ln(), 0.25f64.ln()], 1e-12);
    close(&un("stopgrad"), &[4.0, 0.25], 0.0);
    close(
        &run("clamp", &x(), &[("lo", num(0.5)), ("hi", num(3.0))], Level::Token, Some(&m)),
        &[3.0, 0.5],
        0.0,
    );
    close(&run("clamp", &x(), &[("hi", num(1.0))], Level::Token, Some(&m)), &[1.0, 0.25], 0.0);
    // where(cond, then, otherwise), with a sequence condition broadcast by an explicit spread.
    let w =
        vec![tok(t2(&[&[1.0, 0.0]]), &m), tok(t2(&[&[5.0, 5.0]]), &m), tok(t2(&[&[7.0, 7.0]]), &m)];
    close(&run("where", &w, &[], Level::Token, Some(&m)), &[5.0, 7.0], 0.0);
    assert_eq!(grad_of("stopgrad", x(), 0, &[], Level::Token, Some(&m)), vec![0.0, 0.0]);
}

/// Inputs for any block: tokens `[3, 4]` with a padded row, sequences `[3]`, two steps, groups
/// [0, 0, 1]. Values lie in [0.2, 1.2], away from the kinks of clips, abs and logs.
fn generic_inputs(
    block: &str,
    rng: &mut rlx::exec::synthetic::Rng,
) -> (Vec<In>, Level, Option<Tensor>) {
    let spec = lookup(block).unwrap();
    let mask = t2(&[&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 0.0], &[1.0, 1.0, 0.0, 0.0]]);
    let step_mask = t2(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 0.0]]);
    let ids = ints(&[&[0, 0, 1, 1], &[0, 1, 1, -1], &[0, 0, -1, -1]]);
    let text = TextData {
        name: "response".into(),
        mask: mask.clone(),
        tokens: Some(ints(&[&[1, 2, 3, 4], &[1, 2, 3, 0], &[5, 6, 0, 0]])),
        step_ids: Some(ids.clone()),
    };
    let steps =
        StepsData { text: "response".into(), ids, mask: step_mask.to_dtype(DType::F32).unwrap() };
    let mut rand = |shape: (usize, usize)| {
        let v: Vec<f64> = (0..shape.0 * shape.1).map(|_| 0.2 + rng.uniform()).collect();
        Tensor::from_vec(v, shape, &CPU).unwrap()
    };
    let level_of = |rule: LevelRule| match rule {
        LevelRule::Exact(l) => l,
        _ => Level::Token,
    };
    let mut ins = Vec::new();
    for input in spec.inputs {
        ins.push(match input.kind {
            InputKind::Tensor(rule, _) => match level_of(rule) {
                Level::Token => tok(rand((3, 4)), &mask),
                Level::Step => step(rand((3, 2)), &step_mask),
                Level::Seq => seq(rand((3, 1)).squeeze(1).unwrap()),
                Level::Scalar => In {
                    value: Value::Tensor(rand((1, 1)).squeeze(1).unwrap().squeeze(0).unwrap()),
                    level: Some(Level::Scalar),
                    mask: None,
                },
            },
            InputKind::Text => In { value: Value::Text(text.clone()), level: None, mask: None },
            InputKind::Steps => In { value: Value::Steps(steps.clone()), level: None, mask: None },
            InputKind::Scorer => {
                In { value: Value::Scorer("arith.correct".into()), level: None, mask: None }
            }
        });
    }
    let generic_level = Level::Token;
    let level = match spec.output {
        OutputKind::Tensor(l) => l,
        OutputKind::Generic => generic_level,
        OutputKind::Steps => Level::Scalar,
    };
    let out_mask = match level {
        Level::Token => Some(mask),
        Level::Step => Some(step_mask),
        _ => None,
    };
    (ins, level, out_mask)
}

#[test]
fn every_differentiable_block_matches_finite_differences() {
    let groups = t1(&[0.0, 0.0, 1.0]).to_dtype(DType::I64).unwrap();
    let mut checked = Vec::new();
    for spec in rlx::blocks::ALL {
        // `rlmec_pg` detaches its weight on purpose, so its gradient is not the derivative of its
        // value; `policy_and_value_losses` checks it by hand.
        // Score-function losses detach their weight on purpose (`cispo`, `dppo`), and GSPO-token
        // gives each token the sequence ratio's gradient: their gradients are not the derivative
        // of their per-token values. `new_policy_losses` checks them by hand.
        if spec.grad == OutputGrad::Never
            || matches!(spec.name, "vine_values" | "rlmec_pg" | "cispo" | "dppo" | "gspo")
        {
            continue;
        }
        let mut rng = rlx::exec::synthetic::Rng::new(spec.name.len() as u64);
        let (ins, level, out_mask) = generic_inputs(spec.name, &mut rng);
        // Parameters without a default (`dro`'s beta) get 1.
        let required: Vec<(&str, Const)> = spec
            .params
            .iter()
            .filter(|p| p.default == rlx::blocks::spec::DefaultRule::Required)
            .map(|p| (p.name, num(1.0)))
            .collect();
        let weights: Option<Tensor> = None;
        let objective = |ins: &[In]| -> f64 {
            let Value::Tensor(out) =
                run_full(spec.name, ins, &required, level, out_mask.as_ref(), Some(&groups))
            else {
                panic!()
            };
            let w = weights.clone().unwrap_or_else(|| {
                let n = out.elem_count();
                let v: Vec<f64> = (0..n).map(|i| 0.5 + (i % 7) as f64 / 7.0).collect();
                Tensor::from_vec(v, out.shape(), &CPU).unwrap()
            });
            out.mul(&w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        for (i, input) in spec.inputs.iter().enumerate() {
            if !matches!(input.kind, InputKind::Tensor(_, GradRule::Any)) {
                continue;
            }
            let Value::Tensor(x) = &ins[i].value else { continue };
            // Analytic gradient.
            let var = Var::from_tensor(x).unwrap();
            let mut with_var: Vec<In> = ins
                .iter()
                .map(|j| In { value: j.value.clone(), level: j.level, mask: j.mask.clone() })
                .collect();
            with_var[i].value = Value::Tensor(var.as_tensor().clone());
            let Value::Tensor(out) =
                run_full(spec.name, &with_var, &required, level, out_mask.as_ref(), Some(&groups))
            else {
                panic!()
            };
            let n = out.elem_count();
            let w: Vec<f64> = (0..n).map(|k| 0.5 + (k % 7) as f64 / 7.0).collect();
            let w = Tensor::from_vec(w, out.shape(), &CPU).unwrap();
            let store = out.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let analytic: Vec<f64> = match store.get(var.as_tensor()) {
                Some(g) => g.flatten_all().unwrap().to_vec1().unwrap(),
                None => vec![0.0; x.elem_count()],
            };
            // Central differences.
            let flat: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
            let h = 1e-6;
            for k in 0..flat.len() {
                let eval_at = |delta: f64| {
                    let mut v = flat.clone();
                    v[k] += delta;
                    let mut moved: Vec<In> = ins
                        .iter()
                        .map(|j| In {
                            value: j.value.clone(),
                            level: j.level,
                            mask: j.mask.clone(),
                        })
                        .collect();
                    moved[i].value = Value::Tensor(Tensor::from_vec(v, x.shape(), &CPU).unwrap());
                    objective(&moved)
                };
                let numeric = (eval_at(h) - eval_at(-h)) / (2.0 * h);
                assert!(
                    (numeric - analytic[k]).abs() <= 1e-5 * (1.0 + numeric.abs()),
                    "{}: d/d{}[{k}] analytic {} vs numeric {numeric}",
                    spec.name,
                    input.name,
                    analytic[k]
                );
            }
            checked.push(format!("{}.{}", spec.name, input.name));
        }
    }
    // The check covered the losses, shaping and maths blocks that carry gradient.
    for must in [
        "ppo_clip.logp",
        "kl.logp",
        "reverse_ppo.logp",
        "value_loss.values",
        "dpo.chosen",
        "token_mean.x",
        "log.x",
        "where.then",
    ] {
        assert!(checked.iter().any(|c| c == must), "{must} not checked; checked: {checked:?}");
    }
}

fn f32s(rows: &[&[f64]]) -> Tensor {
    t2(rows).to_dtype(DType::F32).unwrap()
}

/// The gradient of `Σ out` with respect to input `i`, in f32 (where exp overflows at 88.7).
fn grad_f32(
    block: &str,
    mut ins: Vec<In>,
    i: usize,
    given: &[(&str, Const)],
    mask: &Tensor,
) -> Vec<f32> {
    let Value::Tensor(x) = ins[i].value.clone() else { panic!() };
    let var = Var::from_tensor(&x).unwrap();
    ins[i].value = Value::Tensor(var.as_tensor().clone());
    let Value::Tensor(out) = run_full(block, &ins, given, Level::Token, Some(mask), None) else {
        panic!()
    };
    let grads = out.sum_all().unwrap().backward().unwrap();
    grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Log-ratios far below −88 (e^{100} overflows f32), at real and at padded positions: every
/// exp inside a block is guarded, so no finite input gives NaN or inf (verl clamps log-ratios to
/// ±20 before exp).
#[test]
fn extreme_finite_log_ratios_give_finite_values_and_gradients() {
    let m = f32s(&[&[1.0, 1.0, 0.0]]);
    let logp = || f32s(&[&[-100.0, -0.5, -100.0]]);
    let zero = || f32s(&[&[0.0, 0.0, 0.0]]);
    let adv = || f32s(&[&[1.0, -1.0, 0.0]]);
    let finite = |v: &[f32], what: &str| assert!(v.iter().all(|x| x.is_finite()), "{what}: {v:?}");
    // k3 with verl's clamp: at d = −100 the value is clamp(e^{20} − 21, ±10) = 10, gradient 0.
    let kl = || vec![tok(logp(), &m), tok(zero(), &m)];
    let given = [("estimator", word("k3")), ("clamp", num(10.0))];
    let Value::Tensor(v) = run_full("kl", &kl(), &given, Level::Token, Some(&m), None) else {
        panic!()
    };
    let v = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!((v[0], v[2]), (10.0, 10.0));
    assert!((v[1] - ((0.5f32).exp() - 1.5)).abs() < 1e-6);
    let g = grad_f32("kl", kl(), 0, &given, &m);
    finite(&g, "kl k3");
    assert_eq!((g[0], g[2]), (0.0, 0.0));
    // Without the estimate's clamp, the guarded value e^{20} − 21 stays finite.
    finite(&grad_f32("kl", kl(), 0, &[("estimator", word("k3"))], &m), "kl k3 unclamped");
    // Policy losses with ratios e^{±100}.
    let three = || vec![tok(logp(), &m), tok(zero(), &m), tok(adv(), &m)];
    let flipped = || vec![tok(zero(), &m), tok(logp(), &m), tok(adv(), &m)];
    for (block, given) in [
        ("ppo_clip", vec![]),
        ("ppo_clip", vec![("max_log_ratio", Const::Word("none".into()))]),
        ("reverse_ppo", vec![]),
        ("rlmec_pg", vec![]),
    ] {
        for ins in [three(), flipped()] {
            let Value::Tensor(v) = run_full(block, &ins, &given, Level::Token, Some(&m), None)
            else {
                panic!()
            };
            finite(&v.flatten_all().unwrap().to_vec1::<f32>().unwrap(), block);
            finite(&grad_f32(block, ins, 0, &given, &m), block);
        }
    }
}

/// Aggregations read padding as 0 whatever it holds: an inf or NaN at a padded position (the
/// log-probability of a padded token, say) neither poisons the loss nor its gradient.
#[test]
fn non_finite_values_at_padding_do_not_reach_the_loss() {
    let m = f32s(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]);
    let x = f32s(&[&[1.0, 2.0, f64::NEG_INFINITY], &[3.0, f64::NAN, f64::INFINITY]]);
    for (block, expected) in [
        ("token_mean", 2.0),
        ("token_sum", 6.0),
        ("seq_mean_token_sum", 3.0),
        ("seq_mean_token_mean", 2.25),
        ("mean", 2.0),
        ("sum", 6.0),
    ] {
        let var = Var::from_tensor(&x).unwrap();
        let ins = vec![tok(var.as_tensor().clone(), &m)];
        let Value::Tensor(out) = run_full(block, &ins, &[], Level::Scalar, None, None) else {
            panic!()
        };
        let v = out.to_scalar::<f32>().unwrap();
        assert_eq!(v, expected as f32, "{block}");
        let g = out.backward().unwrap();
        let g = g.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{block}: {g:?}");
        assert_eq!((g[2], g[4], g[5]), (0.0, 0.0, 0.0), "{block}");
    }
}

/// `whiten(mask = none)` counts padding as zeros whatever the tensor holds there, as its
/// documentation says; with the mask, padding is ignored and stays 0. (Whitening computes in
/// f32, as its peers do.)
#[test]
fn whiten_without_mask_reads_padding_as_zero() {
    let m = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    // Real entries 1, 2, 3 and padding holding 100: statistics over [1, 2, 3, 0]: mean 1.5,
    // unbiased var 5/3.
    let x = t2(&[&[1.0, 2.0], &[3.0, 100.0]]);
    let s = 1.0 / (5.0f64 / 3.0).sqrt();
    close(
        &run(
            "whiten",
            &[tok(x.clone(), &m)],
            &[("eps", num(0.0)), ("mask", word("none"))],
            Level::Token,
            Some(&m),
        ),
        &[-0.5 * s, 0.5 * s, 1.5 * s, -1.5 * s],
        1e-6,
    );
    // The same tensor with 0 at the padding gives the same result.
    let zeroed = t2(&[&[1.0, 2.0], &[3.0, 0.0]]);
    close(
        &run(
            "whiten",
            &[tok(zeroed, &m)],
            &[("eps", num(0.0)), ("mask", word("none"))],
            Level::Token,
            Some(&m),
        ),
        &[-0.5 * s, 0.5 * s, 1.5 * s, -1.5 * s],
        1e-6,
    );
    // Masked: statistics over [1, 2, 3] (mean 2, var 1); padding out as 0.
    close(
        &run("whiten", &[tok(x, &m)], &[("eps", num(0.0))], Level::Token, Some(&m)),
        &[-1.0, 0.0, 1.0, 0.0],
        1e-6,
    );
}

/// GSPO, GMPO, CISPO, SAPO, DPPO, DRO, KL-Cov and Clip-Cov against hand-computed values and
/// the gradients their papers define.
#[test]
fn new_policy_losses() {
    let m = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    let logp = || t2(&[&[-0.2, -0.6], &[-1.0, -3.0]]);
    let old = || t2(&[&[-0.4, -0.5], &[-1.2, 0.0]]);
    let adv = || t2(&[&[1.0, 1.0], &[-2.0, -2.0]]);
    let ins = || vec![tok(logp(), &m), tok(old(), &m), tok(adv(), &m)];
    let wide = [("eps", num(0.9)), ("eps_high", num(9.0))];
    // GSPO: s_0 = ((−0.2+0.4) + (−0.6+0.5))/2 = 0.05, s_1 = 0.2 (padding ignored); inside the
    // clip every token of row b carries −A_b·e^{s_b}.
    let (e0, e1) = (0.05f64.exp(), 0.2f64.exp());
    close(
        &run("gspo", &ins(), &wide, Level::Token, Some(&m)),
        &[-e0, -e0, 2.0 * e1, 2.0 * e1],
        1e-12,
    );
    // Its gradient after seq_mean_token_mean is GSPO's: d/dlogp_bt (−A_b e^{s_b}) = −A_b e^{s_b}/L_b,
    // here halved again by the mean over the two sequences.
    let var = Var::from_tensor(&logp()).unwrap();
    let mut vin = ins();
    vin[0] = tok(var.as_tensor().clone(), &m);
    let Value::Tensor(per_token) = run_full("gspo", &vin, &wide, Level::Token, Some(&m), None)
    else {
        panic!()
    };
    let loss =
        run_full("seq_mean_token_mean", &[tok(per_token, &m)], &[], Level::Scalar, None, None);
    let Value::Tensor(loss) = loss else { panic!() };
    let g: Vec<f64> = loss
        .backward()
        .unwrap()
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    close(&g, &[-e0 / 4.0, -e0 / 4.0, 2.0 * e1 / 2.0, 0.0], 1e-12);
    // Default clip (3e-4, 4e-4): e^{0.05} and e^{0.2} are far outside; A>0 takes the clipped
    // −(1 + 4e-4); A<0 the unclipped 2e^{0.2}.
    close(
        &run("gspo", &ins(), &[], Level::Token, Some(&m)),
        &[-1.0004, -1.0004, 2.0 * e1, 2.0 * e1],
        1e-12,
    );
    // GMPO (eps 0.4; lengths + 1e-8 as verl): row 0, A>0: Δ = [0.2, −0.1] (inside), ρ =
    // e^{0.1/L}, Ā = 2/L → −(2/L)e^{0.1/L} with L = 2 + 1e-8; row 1, A<0: Δ = [0.2], ρ =
    // e^{0.2/L}, Ā = −2/L → (2/L)e^{0.2/L} with L = 1 + 1e-8.
    let (l0, l1): (f64, f64) = (2.0 + 1e-8, 1.0 + 1e-8);
    let row1 = 2.0 / l1 * (0.2 / l1).exp();
    close(
        &run("gmpo", &ins(), &[], Level::Seq, None),
        &[-(2.0 / l0) * (0.1 / l0).exp(), row1],
        1e-15,
    );
    // With eps 0.1: row 0's 0.2 is capped at 0.1 → ρ = e^{(0.1 − 0.1)/L} = 1; row 1 (A<0) keeps
    // its 0.2 (only the lower side is clipped).
    close(
        &run("gmpo", &ins(), &[("eps", num(0.1))], Level::Seq, None),
        &[-(2.0 / l0), row1],
        1e-15,
    );
    // CISPO: ρ = [e^{0.2}, e^{−0.1}, e^{0.2}, ·], clipped into [0.8, 1.2]: [1.2, e^{−0.1}, 1.2];
    // ℓ = −w·A·logp; gradient −w·A (the weight is detached).
    let w = [1.2, (-0.1f64).exp(), 1.2];
    close(
        &run("cispo", &ins(), &[], Level::Token, Some(&m)),
        &[w[0] * 0.2, w[1] * 0.6, -2.0 * w[2], -4.8],
        1e-12,
    );
    close(
        &grad_of("cispo", ins(), 0, &[], Level::Token, Some(&m))[..3],
        &[-w[0], -w[1], 2.0 * w[2]],
        1e-12,
    );
    // TRL's absolute cap of 1.1: w = min(ρ, 1.1).
    let abs = [("bound", word("absolute")), ("eps_high", num(1.1))];
    close(
        &grad_of("cispo", ins(), 0, &abs, Level::Token, Some(&m))[..3],
        &[-1.1, -(-0.1f64).exp(), 2.0 * 1.1],
        1e-12,
    );
    // SAPO: on-policy (logp = old) its gradient is the plain policy gradient −A, since f′(1) = 1.
    let on = vec![tok(logp(), &m), tok(logp(), &m), tok(adv(), &m)];
    close(&grad_of("sapo", on, 0, &[], Level::Token, Some(&m))[..3], &[-1.0, -1.0, 2.0], 1e-9);
    // Its value at ρ = 1: −A·(4/τ)·σ(0) = −2A/τ.
    let on = vec![tok(logp(), &m), tok(logp(), &m), tok(adv(), &m)];
    close(&run("sapo", &on, &[], Level::Token, Some(&m))[..3], &[-2.0, -2.0, 4.0 / 1.05], 1e-12);
    // DPPO (tv, 0.2): p − p₀ = [e^{−0.2} − e^{−0.4}, e^{−0.6} − e^{−0.5}, e^{−1} − e^{−1.2}]
    // = [0.148, −0.058, 0.067]; A>0 rows need ≤ 0.2 (both valid); A<0 needs ≥ −0.2 (valid).
    // Gradient −A·min(ρ, 20): [−e^{0.2}, −e^{−0.1}, 2e^{0.2}].
    let g = grad_of("dppo", ins(), 0, &[], Level::Token, Some(&m));
    close(&g[..3], &[-(0.2f64.exp()), -((-0.1f64).exp()), 2.0 * 0.2f64.exp()], 1e-12);
    // A tighter threshold (0.1) masks the first token: p rose by 0.148 > 0.1.
    let g = grad_of("dppo", ins(), 0, &[("eps", num(0.1))], Level::Token, Some(&m));
    close(&g[..3], &[0.0, -((-0.1f64).exp()), 2.0 * 0.2f64.exp()], 1e-12);
    // DRO: −(logp·A − ½β(logp − old)²), β = 2: [0.2 + 0.04, 0.6 + 0.01, −2 + 0.04].
    close(
        &run("dro", &ins(), &[("beta", num(2.0))], Level::Token, Some(&m))[..3],
        &[0.24, 0.61, -1.96],
        1e-12,
    );
    // KL-Cov: over the 3 response tokens mean A = 0, mean logp = −0.6; cov = A(logp + 0.6) =
    // [0.4, 0, 0.8]: the top token (ratio 0.4 → k = 1) is row 1's, which gets coef·|Δ| = 0.2.
    let kc = run("kl_cov", &ins(), &[("ratio", num(0.4))], Level::Token, Some(&m));
    close(&kc[..3], &[-(0.2f64.exp()), -((-0.1f64).exp()), 2.0 * 0.2f64.exp() + 0.2], 1e-12);
    // Clip-Cov: band (0.3, 0.5) admits only token 0 (cov 0.4, unclipped at eps 0.9): it gets 0.
    let cc = run(
        "clip_cov",
        &ins(),
        &[("eps", num(0.9)), ("ratio", num(0.4)), ("lb", num(0.3)), ("ub", num(0.5))],
        Level::Token,
        Some(&m),
    );
    close(&cc[..3], &[0.0, -((-0.1f64).exp()), 2.0 * 0.2f64.exp()], 1e-12);
}

/// OPO, GPG and pass@k GRPO against hand-computed values.
#[test]
fn new_advantage_estimators() {
    let g = t1(&[0.0, 0.0, 1.0, 1.0]).to_dtype(DType::I64).unwrap();
    let r = || vec![seq(t1(&[1.0, 0.0, 1.0, 1.0]))];
    // OPO: lengths [3, 1 | 2, 2]; group 0: b = (3·1 + 1·0)/4 = 0.75 → [0.25, −0.75];
    // group 1: b = 1 → 0. Spread over each response's tokens.
    let lens = t2(&[&[1.0, 1.0, 1.0], &[1.0, 0.0, 0.0], &[1.0, 1.0, 0.0], &[1.0, 1.0, 0.0]]);
    close(
        &run_groups("opo", &r(), &[], Level::Token, Some(&lens), Some(&g)),
        &[0.25, 0.25, 0.25, -0.75, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        1e-12,
    );
    // GPG: 3 of 4 rewards non-zero: α = 4/3; centred [0.5, −0.5, 0, 0].
    close(
        &run_groups("gpg", &r(), &[], Level::Seq, None, Some(&g)),
        &[2.0 / 3.0, -2.0 / 3.0, 0.0, 0.0],
        1e-12,
    );
    // pass@k: group [0.2, 0.9, 0.5]: the best (0.9) gets 0.9 − 0.5 over the std (unbiased
    // √0.1225·… computed below); the others 0.
    let g3 = t1(&[0.0, 0.0, 0.0]).to_dtype(DType::I64).unwrap();
    let xs = [0.2f64, 0.9, 0.5];
    let mean = xs.iter().sum::<f64>() / 3.0;
    let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    close(
        &run_groups("grpo_passk", &[seq(t1(&xs))], &[], Level::Seq, None, Some(&g3)),
        &[0.0, 0.4 / (std + 1e-6), 0.0],
        1e-12,
    );
    close(
        &run_groups(
            "grpo_passk",
            &[seq(t1(&xs))],
            &[("scale", word("none"))],
            Level::Seq,
            None,
            Some(&g3),
        ),
        &[0.0, 0.4, 0.0],
        1e-12,
    );
}

/// Off-policy corrections from the trainer's and the sampler's log-probabilities.
#[test]
fn sampler_corrections() {
    let m = t2(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
    // Δ = old − rollout: [0.5, −1, 2 | 0.1, 0.2, ·].
    let old = || t2(&[&[0.0, -1.0, 0.0], &[-0.2, 0.0, 5.0]]);
    let rollout = || t2(&[&[-0.5, 0.0, -2.0], &[-0.3, -0.2, 0.0]]);
    let ins = || vec![tok(old(), &m), tok(rollout(), &m)];
    let e = |x: f64| x.exp();
    // TIS per token, cap 2: [e^0.5, e^−1, 2 | e^0.1, e^0.2, 0 (padding)].
    close(
        &run("tis", &ins(), &[], Level::Token, Some(&m)),
        &[e(0.5), e(-1.0), 2.0, e(0.1), e(0.2), 0.0],
        1e-12,
    );
    // Per sequence: Σ Δ = 1.5 → e^1.5 capped at 2; 0.3 → e^0.3.
    close(
        &run("tis", &ins(), &[("level", word("sequence"))], Level::Token, Some(&m)),
        &[2.0, 2.0, 2.0, e(0.3), e(0.3), 0.0],
        1e-12,
    );
    // MIS / IcePop in [0.5, 5]: e^−1 ≈ 0.37 is dropped, e² ≈ 7.4 too.
    close(
        &run("mis", &ins(), &[], Level::Token, Some(&m)),
        &[e(0.5), 0.0, 0.0, e(0.1), e(0.2), 0.0],
        1e-12,
    );
    // Per sequence with [0.5, 4]: e^1.5 ≈ 4.48 is out, e^0.3 in.
    close(
        &run(
            "mis",
            &ins(),
            &[("level", word("sequence")), ("hi", num(4.0))],
            Level::Token,
            Some(&m),
        ),
        &[0.0, 0.0, 0.0, e(0.3), e(0.3), 0.0],
        1e-12,
    );
    // Rejection on k3 = e^Δ − 1 − Δ ≤ 1: [0.149, 0.368, 4.39 | 0.005, 0.021]: token 2 rejected;
    // seq_max rejects all of row 0; seq_mean (1.635 vs 0.013) too.
    let rr = |over: &str| {
        run(
            "rollout_reject",
            &ins(),
            &[("over", word(over)), ("hi", num(1.0))],
            Level::Token,
            Some(&m),
        )
    };
    close(&rr("token"), &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0], 0.0);
    close(&rr("seq_max"), &[0.0, 0.0, 0.0, 1.0, 1.0, 0.0], 0.0);
    close(&rr("seq_mean"), &[0.0, 0.0, 0.0, 1.0, 1.0, 0.0], 0.0);
}

/// NeMo-RL's leave-one-out GRPO (`calculate_baseline_and_std_per_prompt` and
/// `GRPOAdvantageEstimator`): the other samples' mean, and their unbiased std plus 1e-6 where
/// that std is positive, at n = 2, 3 and 4; checked by hand and against NeMo-RL's own one-pass
/// form of the same formula in f64 (E[x²] − E[x]² over the others, scaled by m/(m − 1)).
#[test]
fn leave_one_out_group_zscore() {
    let loo = |r: &[f64], given: &[(&str, Const)]| {
        let g = t1(&vec![0.0; r.len()]).to_dtype(DType::I64).unwrap();
        let mut given = given.to_vec();
        given.push(("baseline", word("leave_one_out")));
        run_groups("group_zscore", &[seq(t1(r))], &given, Level::Seq, None, Some(&g))
    };
    // NeMo-RL's one-pass form, written from its formula: a baseline matrix 1 − I over the group,
    // E[x] and E[x²] over the m = n − 1 others, std = √((E[x²] − E[x]²)·m/(m − 1)), NaN → 0.
    let nemo = |r: &[f64]| -> Vec<f64> {
        let m = (r.len() - 1) as f64;
        (0..r.len())
            .map(|i| {
                let others = r.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, x)| *x);
                let (s, s2) = others.fold((0.0, 0.0), |(s, s2), x| (s + x, s2 + x * x));
                let (mean, mean_sq) = (s / m, s2 / m);
                let std = ((mean_sq - mean * mean) * (m / (m - 1.0))).sqrt();
                let std = if std.is_nan() { 0.0 } else { std };
                let a = r[i] - mean;
                if std > 0.0 { a / (std + 1e-6) } else { a }
            })
            .collect()
    };
    // n = 2: each sample's only other has no spread (NeMo-RL: 0/0 → 0): centred, unscaled.
    close(&loo(&[1.0, 0.0], &[]), &[1.0, -1.0], 0.0);
    // n = 3, r = [1, 0, 0]: for 0, others [0, 0]: std 0 → unscaled 1; for 1 (and 2), others
    // [1, 0]: mean 0.5, unbiased std √0.5 → −0.5/(√0.5 + 1e-6) = −0.70710578 (the biased std
    // 0.5 gave −1, off by √((n−1)/(n−2)) = √2).
    let third = -0.5 / (0.5f64.sqrt() + 1e-6);
    close(&loo(&[1.0, 0.0, 0.0], &[]), &[1.0, third, third], 1e-15);
    // n = 4, r = [1, 0, 0, 3]: for 0, others [0, 0, 3]: mean 1 → 0; for 1 (and 2), others
    // [1, 0, 3]: mean 4/3, Σ(x − 4/3)² = 42/9, unbiased var 7/3; for 3, others [1, 0, 0]: mean
    // 1/3, var 1/3 → (8/3)/(√(1/3) + 1e-6).
    let second = -(4.0 / 3.0) / ((7.0f64 / 3.0).sqrt() + 1e-6);
    let last = (8.0 / 3.0) / ((1.0f64 / 3.0).sqrt() + 1e-6);
    let four = [1.0, 0.0, 0.0, 3.0];
    close(&loo(&four, &[]), &[0.0, second, second, last], 1e-15);
    close(&loo(&four, &[]), &nemo(&four), 1e-12);
    // Random groups of 3 to 8 in f64: equal to NeMo-RL's form to rounding.
    let mut state = 7u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
    };
    for n in 3..=8 {
        let r: Vec<f64> = (0..n).map(|_| next()).collect();
        close(&loo(&r, &[]), &nemo(&r), 1e-12);
    }
    // `var = biased` keeps the earlier convention: others [1, 0] have std 0.5 → −0.5/(0.5 + 1e-6).
    let biased = -0.5 / (0.5 + 1e-6);
    close(&loo(&[1.0, 0.0, 0.0], &[("var", word("biased"))]), &[1.0, biased, biased], 1e-15);
    // `scale = none` only centres.
    close(&loo(&[1.0, 0.0, 0.0], &[("scale", word("none"))]), &[1.0, -0.5, -0.5], 0.0);
}

/// Robust DPO, SimPO, ORPO and KTO against hand-computed values.
#[test]
fn new_preference_losses() {
    let m = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    // Sums: chosen [−1, −0.5], rejected [−2, −1]; refs: chosen [−1.2, −0.4], rejected [−1.5, −1].
    let c = || tok(t2(&[&[-0.4, -0.6], &[-0.5, 9.0]]), &m);
    let r = || tok(t2(&[&[-1.5, -0.5], &[-1.0, 9.0]]), &m);
    let rc = || tok(t2(&[&[-0.6, -0.6], &[-0.4, 9.0]]), &m);
    let rr = || tok(t2(&[&[-1.0, -0.5], &[-1.0, 9.0]]), &m);
    let ls = |x: f64| -(1.0 + (-x).exp()).ln();
    // h = β·((ρ_c) − (ρ_r)): ρ_c = [0.2, −0.1], ρ_r = [−0.5, 0]: margins [0.7, −0.1].
    let h = [0.1 * 0.7, 0.1 * -0.1];
    let robust = |x: f64| (-(0.9) * ls(x) + 0.1 * ls(-x)) / 0.8;
    close(
        &run(
            "dpo",
            &[c(), r(), rc(), rr()],
            &[("loss", word("robust")), ("label_smoothing", num(0.1))],
            Level::Seq,
            None,
        ),
        &[robust(h[0]), robust(h[1])],
        1e-12,
    );
    // SimPO: means chosen [−0.5, −0.5], rejected [−1, −1]: h = 2·0.5 − 1 = 0 → −logσ(0) = ln 2.
    close(&run("simpo", &[c(), r()], &[], Level::Seq, None), &[2f64.ln(), 2f64.ln()], 1e-12);
    // ORPO: log odds = (p̄_c − p̄_r) − (ln(1 − e^{p̄_c}) − ln(1 − e^{p̄_r})) with p̄_c = −0.5, p̄_r = −1.
    let l1m = |x: f64| (1.0 - x.exp()).ln();
    let odds = 0.5 - (l1m(-0.5) - l1m(-1.0));
    close(
        &run("orpo", &[c(), r()], &[], Level::Seq, None),
        &[-0.1 * ls(odds), -0.1 * ls(odds)],
        1e-9,
    );
    // Its gradient, by central differences in f64, on the chosen token 0.
    let g = grad_of("orpo", vec![c(), r()], 0, &[], Level::Seq, None);
    let at = |d: f64| {
        let cd = tok(t2(&[&[-0.4 + d, -0.6], &[-0.5, 9.0]]), &m);
        run("orpo", &[cd, r()], &[], Level::Seq, None)[0]
    };
    close(&[g[0]], &[(at(1e-6) - at(-1e-6)) / 2e-6], 1e-6);
    // Near p̄ = 0 the odds stay finite (the series branch).
    let near =
        run("orpo", &[tok(t2(&[&[-1e-4, -1e-4], &[-1e-4, 0.0]]), &m), r()], &[], Level::Seq, None);
    assert!(near.iter().all(|x| x.is_finite()), "{near:?}");
    // KTO: mismatched ρ = [0.3, −0.1] → z = max(0, 0.1) = 0.1; ρ_c = [0.2, −0.1], ρ_r = [−0.5, 0].
    let mm = || tok(t2(&[&[-0.2, -0.2], &[-0.6, 9.0]]), &m);
    let rm = || tok(t2(&[&[-0.3, -0.4], &[-0.5, 9.0]]), &m);
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let kto =
        |rc: f64, rr: f64| 0.5 * ((1.0 - sig(0.1 * (rc - 0.1))) + (1.0 - sig(0.1 * (0.1 - rr))));
    close(
        &run("kto", &[c(), r(), rc(), rr(), mm(), rm()], &[], Level::Seq, None),
        &[kto(0.2, -0.5), kto(-0.1, 0.0)],
        1e-12,
    );
}

/// The optimal token baseline on a group of two responses of lengths 2 and 1.
#[test]
fn optimal_token_baseline() {
    let m = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    let g = t1(&[0.0, 0.0]).to_dtype(DType::I64).unwrap();
    // G = [2, 2 | 1]; w = 1 − 2π + Σπ²: row 0: 1 − 1 + 0.5 = 0.5 per token → W = [0.5, 1];
    // row 1: 1 − 0.5 + 0.25 → W = [0.75]. Position 0: b = (2·0.5 + 1·0.75)/1.25 = 1.4;
    // position 1 holds only the unique longest response: b = 0.
    let ins = vec![
        tok(t2(&[&[0.0, 2.0], &[1.0, 0.0]]), &m),
        tok(t2(&[&[0.5f64.ln(), 0.5f64.ln()], &[0.25f64.ln(), 0.0]]), &m),
        tok(t2(&[&[0.5, 0.5], &[0.25, 0.0]]), &m),
    ];
    close(
        &run_groups("optimal_baseline", &ins, &[], Level::Token, Some(&m), Some(&g)),
        &[2.0 - 1.75 / (1.25 + 1e-8), 2.0, 1.0 - 1.75 / (1.25 + 1e-8), 0.0],
        1e-12,
    );
}

/// verl's edges of the optimal token baseline: a group of one has no baseline (advantage = the
/// reward-to-go, verl's `if N == 1: continue`), and past the second-longest length only the
/// unique longest response's baseline is zeroed: a shorter response with a hole in its mask
/// that still has a token there keeps the group's baseline.
#[test]
fn optimal_token_baseline_singletons_and_holes() {
    let half = 0.5f64.ln();
    // A singleton: G = [3, 3, 1] (rewards [0, 2, 1]); its advantage is G itself.
    let m1 = t2(&[&[1.0, 1.0, 1.0]]);
    let one = vec![
        tok(t2(&[&[0.0, 2.0, 1.0]]), &m1),
        tok(t2(&[&[half, half, half]]), &m1),
        tok(t2(&[&[0.5, 0.5, 0.5]]), &m1),
    ];
    let g1 = t1(&[5.0]).to_dtype(DType::I64).unwrap();
    close(
        &run_groups("optimal_baseline", &one, &[], Level::Token, Some(&m1), Some(&g1)),
        &[3.0, 3.0, 1.0],
        0.0,
    );
    // One group of three; π = 0.5 and Σπ² = 0.5 everywhere, so w = 0.5 per real token.
    // row 0: mask [1,1,1,1], reward 1 at t3 → G = [1,1,1,1], W = [.5, 1, 1.5, 2], length 4
    // row 1: mask [1,0,1,0], reward 2 at t2 → G = [2,·,2,·], W = [.5, ·, 1, ·],   length 2
    // row 2: mask [1,1,0,0], reward 3 at t1 → G = [3,3,·,·], W = [.5, 1, ·, ·],   length 2
    // b_0 = (.5 + 1 + 1.5)/1.5 = 2; b_1 = (1 + 3)/2 = 2; b_2 = (1.5 + 2)/2.5 = 1.4 (rows 0, 1).
    // Row 0 is the unique longest; the second-longest length is 2, so row 0's baseline is 0 at
    // t ≥ 2 — row 1's at t2 stays 1.4 (it was 0, advantage 2, before).
    let m = t2(&[&[1.0, 1.0, 1.0, 1.0], &[1.0, 0.0, 1.0, 0.0], &[1.0, 1.0, 0.0, 0.0]]);
    let ins = vec![
        tok(t2(&[&[0.0, 0.0, 0.0, 1.0], &[0.0, 0.0, 2.0, 0.0], &[0.0, 3.0, 0.0, 0.0]]), &m),
        tok(t2(&[&[half; 4], &[half; 4], &[half; 4]]), &m),
        tok(t2(&[&[0.5; 4], &[0.5; 4], &[0.5; 4]]), &m),
    ];
    let g = t1(&[0.0, 0.0, 0.0]).to_dtype(DType::I64).unwrap();
    let (b0, b1, b2) = (3.0 / (1.5 + 1e-8), 4.0 / (2.0 + 1e-8), 3.5 / (2.5 + 1e-8));
    close(
        &run_groups("optimal_baseline", &ins, &[], Level::Token, Some(&m), Some(&g)),
        &[1.0 - b0, 1.0 - b1, 1.0, 1.0, 2.0 - b0, 0.0, 2.0 - b2, 0.0, 3.0 - b0, 3.0 - b1, 0.0, 0.0],
        1e-15,
    );
    // Two responses of the longest length: no tail is zeroed (t3 holds rows 0 and 1 now).
    let m = t2(&[&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]]);
    let ins = vec![
        tok(t2(&[&[0.0, 0.0, 0.0, 1.0], &[0.0, 0.0, 0.0, 3.0]]), &m),
        tok(t2(&[&[half; 4], &[half; 4]]), &m),
        tok(t2(&[&[0.5; 4], &[0.5; 4]]), &m),
    ];
    let g = t1(&[0.0, 0.0]).to_dtype(DType::I64).unwrap();
    // At t3 (W = 2 each): b = (1·2 + 3·2)/(4 + 1e-8) for both rows.
    let out = run_groups("optimal_baseline", &ins, &[], Level::Token, Some(&m), Some(&g));
    close(&[out[3], out[7]], &[1.0 - 8.0 / (4.0 + 1e-8), 3.0 - 8.0 / (4.0 + 1e-8)], 1e-15);
}

/// GMPO with a token whose advantage is exactly 0: torch.sign gives 0 there, so its log-ratio
/// leaves the geometric mean (it still counts in the length, as in verl's `geo_mean`) and its
/// gradient is exactly 0; the rest checked by hand and by central differences in f64.
#[test]
fn gmpo_drops_zero_advantage_tokens() {
    let m = t2(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
    let logp = || t2(&[&[-0.5, -0.7, -1.0], &[-0.2, -0.4, 0.0]]);
    let old = || t2(&[&[-0.7, -1.0, -1.1], &[-0.3, -0.1, 0.0]]);
    // Δ = [0.2, 0.3, 0.1 | 0.1, −0.3]; row 0's advantages [1, 0, 1], row 1's [−1, −1].
    let adv = || t2(&[&[1.0, 0.0, 1.0], &[-1.0, -1.0, 0.0]]);
    let ins = || vec![tok(logp(), &m), tok(old(), &m), tok(adv(), &m)];
    // Row 0: Δ* = [0.2, 0, 0.1] (inside ±0.4), L = 3: ρ = e^{0.3/3}, Ā = 2/3 → −(2/3)e^{0.1}.
    // (With sign(0) = +1 it was e^{0.6/3}: 10 % off.) Row 1 (A < 0): Δ* = [0.1, −0.3] (only the
    // lower side clips, at −0.4), L = 2: ρ = e^{−0.1}, Ā = −1 → e^{−0.1}.
    let (l0, l1): (f64, f64) = (3.0 + 1e-8, 2.0 + 1e-8);
    let want = [-(2.0 / l0) * (0.3 / l0).exp(), (2.0 / l1) * (-0.2 / l1).exp()];
    close(&run("gmpo", &ins(), &[], Level::Seq, None), &want, 1e-15);
    // ∂ℓ_0/∂logp_0t = −Ā ρ σ_t / L: σ = [1, 0, 1].
    let g = grad_of("gmpo", ins(), 0, &[], Level::Seq, None);
    let d0 = -(2.0 / l0) * (0.3 / l0).exp() / l0;
    close(&g[..3], &[d0, 0.0, d0], 1e-15);
    assert_eq!(g[1], 0.0, "a zero-advantage token gets no gradient");
    // Central differences in f64 at every real token.
    let ins_at = |x: Tensor| vec![tok(x, &m), tok(old(), &m), tok(adv(), &m)];
    matches_central_differences("gmpo", &logp(), ins_at, &[], &g, &[0, 1, 2, 3, 4]);
}

/// `Σ block(inputs(x))` differentiated by central differences (step 1e-6, f64) at the flat
/// positions `at` of `x`, against the autodiff gradient `g`.
fn matches_central_differences(
    block: &str,
    x: &Tensor,
    inputs: impl Fn(Tensor) -> Vec<In>,
    given: &[(&str, Const)],
    g: &[f64],
    at: &[usize],
) {
    let v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for &i in at {
        let sum_at = |d: f64| {
            let mut v = v.clone();
            v[i] += d;
            let x = Tensor::from_vec(v, x.shape(), &CPU).unwrap();
            run(block, &inputs(x), given, Level::Seq, None).iter().sum::<f64>()
        };
        let fd = (sum_at(1e-6) - sum_at(-1e-6)) / 2e-6;
        assert!((fd - g[i]).abs() < 1e-8, "{block} at {i}: finite difference {fd} vs {}", g[i]);
    }
}

/// SimPO's `alpha` (TRL's `cpo_alpha`): each row carries its share of TRL's token-mean NLL of
/// the chosen responses, so the batch mean is TRL's `losses.mean() + cpo_alpha · nll_loss`.
#[test]
fn simpo_with_the_chosen_nll() {
    let m = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    let c = || tok(t2(&[&[-0.4, -0.6], &[-0.5, 9.0]]), &m);
    let r = || tok(t2(&[&[-1.5, -0.5], &[-1.0, 9.0]]), &m);
    // Means: chosen [−0.5, −0.5], rejected [−1, −1]: h = 2·0.5 − 1 = 0 → ln 2 each. The chosen
    // tokens' NLL over the batch: (0.4 + 0.6 + 0.5)/3 = 0.5; rows' shares: 1.0·2/3 and 0.5·2/3.
    let plain = run("simpo", &[c(), r()], &[], Level::Seq, None);
    close(&plain, &[2f64.ln(), 2f64.ln()], 1e-15);
    let with = run("simpo", &[c(), r()], &[("alpha", num(1.0))], Level::Seq, None);
    close(&with, &[2f64.ln() + 2.0 / 3.0, 2f64.ln() + 1.0 / 3.0], 1e-15);
    let mean = (with[0] + with[1]) / 2.0;
    close(&[mean], &[2f64.ln() + 0.5], 1e-15);
    // Its gradient on a chosen token: the SimPO part (σ(−h)·β/L_b over 2 rows) plus α·(−1/N).
    let g = grad_of("simpo", vec![c(), r()], 0, &[("alpha", num(1.0))], Level::Seq, None);
    let simpo_part = -0.5 * 2.0 / 2.0; // −σ(0)·β/L_0 for row 0's ℓ (gradient of Σ_b ℓ_b)
    close(&g[..2], &[simpo_part - 2.0 / 3.0, simpo_part - 2.0 / 3.0], 1e-12);
    // And by central differences in f64 on every real chosen token, away from h = 0.
    let chosen = t2(&[&[-0.3, -0.6], &[-0.5, 9.0]]);
    let g = grad_of(
        "simpo",
        vec![tok(chosen.clone(), &m), r()],
        0,
        &[("alpha", num(0.7))],
        Level::Seq,
        None,
    );
    let ins_at = |x: Tensor| vec![tok(x, &m), r()];
    matches_central_differences("simpo", &chosen, ins_at, &[("alpha", num(0.7))], &g, &[0, 1, 2]);
}

/// DPO at the reference (the first step of every DPO run: the policy starts as the reference,
/// so h = 0 exactly): ∂ℓ/∂logp = −β·σ(0) = −β/2 on each chosen token and +β/2 on each
/// rejected one. log σ written with min(x, 0) gave −β there (candle's subgradients at the kink).
#[test]
fn dpo_gradient_at_the_reference() {
    let m = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    let c = || tok(t2(&[&[-0.4, -0.6], &[-0.5, 0.0]]), &m);
    let r = || tok(t2(&[&[-1.5, -0.5], &[-1.0, 0.0]]), &m);
    let beta = 0.1;
    let ins = || vec![c(), r(), c(), r()];
    let g = grad_of("dpo", ins(), 0, &[], Level::Seq, None);
    close(&g, &[-beta / 2.0, -beta / 2.0, -beta / 2.0, 0.0], 1e-15);
    let g = grad_of("dpo", ins(), 1, &[], Level::Seq, None);
    close(&g, &[beta / 2.0, beta / 2.0, beta / 2.0, 0.0], 1e-15);
    // The Bradley–Terry reward-model loss at a zero margin (a zero-initialised value head): ∓½.
    let (a, b) = (|| seq(t1(&[0.3, -0.2])), || seq(t1(&[0.3, -0.2])));
    let g = grad_of("pairwise_rm", vec![a(), b()], 0, &[], Level::Seq, None);
    close(&g, &[-0.5, -0.5], 1e-15);
}
