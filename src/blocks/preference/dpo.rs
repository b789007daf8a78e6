//! `dpo`: direct preference optimisation losses on chosen/rejected pairs.

use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "dpo",
    summary: "direct preference optimisation loss per pair (sigmoid, IPO or hinge)",
    source: "DPO (Rafailov et al. 2023); IPO (Azar et al. 2023); SLiC hinge (Zhao et al. 2023); TRL `loss_type`",
    family: Family::Preference,
    formula: "h = β·((Σ logp_c − Σ ref_c) − (Σ logp_r − Σ ref_r));  sigmoid: −(1−s)·logσ(h) − s·logσ(−h);  \
              ipo: (h/β − 1/(2β))²;  hinge: max(0, 1 − h)",
    inputs: &[
        tensor(
            "chosen",
            Level::Token,
            "log-probabilities of the chosen response, `policy.logp(chosen)`",
        ),
        tensor("rejected", Level::Token, "log-probabilities of the rejected response"),
        detached("ref_chosen", Level::Token, "reference log-probabilities of the chosen response"),
        detached(
            "ref_rejected",
            Level::Token,
            "reference log-probabilities of the rejected response",
        ),
    ],
    params: &[
        num("beta", 0.1, Range::Positive, "inverse temperature of the implicit reward"),
        choice("loss", &["sigmoid", "ipo", "hinge"], "sigmoid", "the preference loss"),
        num(
            "label_smoothing",
            0.0,
            Range::Probability,
            "conservative DPO: assumed label-flip rate s",
        ),
    ],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Pairs,
    regularizer: true,
    ..BASE
};
