//! `pairwise_rm`: Bradley–Terry reward-model loss.

use candle_core::Result;

use crate::blocks::ctx::{Ctx, Value};
use crate::blocks::spec::*;

pub static SPEC: BlockSpec = BlockSpec {
    name: "pairwise_rm",
    summary: "Bradley–Terry loss of a reward model on chosen/rejected pairs",
    source: "InstructGPT (Ouyang et al. 2022); TRL RewardTrainer, OpenRLHF `PairWiseLoss`",
    family: Family::Preference,
    formula: "ℓ = −log σ(r_c − r_r − margin)",
    inputs: &[
        tensor("chosen", Level::Seq, "reward of the chosen response, `rm(chosen)`"),
        tensor("rejected", Level::Seq, "reward of the rejected response, `rm(rejected)`"),
    ],
    params: &[num("margin", 0.0, Range::Any, "required reward margin")],
    output: OutputKind::Tensor(Level::Seq),
    demand: Demand::Pairs,
    forward: Some(forward),
    ..BASE
};

fn forward(ctx: &Ctx) -> Result<Value> {
    let margin = (ctx.tensor(0)?.sub(ctx.tensor(1)?)? - ctx.num("margin")?)?;
    Ok(Value::Tensor(super::dpo::log_sigmoid(&margin)?.neg()?))
}
