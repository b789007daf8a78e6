//! The block library: every built-in block's signature, documentation and (later) forward.
//!
//! To add a block: create one file, add one `mod` line and one entry in `ALL`.

pub mod ctx;
pub mod docs;
pub mod spec;

mod aggregate;
mod correction;
pub mod fused;
mod maths;
pub mod param;
mod advantage {
    pub mod gae;
    pub mod gpg;
    pub mod group_zscore;
    pub mod grpo_passk;
    pub mod opo;
    pub mod optimal_baseline;
    pub mod reinforce_pp;
    pub mod reinforce_pp_baseline;
    pub mod remax;
    pub mod returns;
    pub mod rloo;
    pub mod step_advantage;
    pub mod whiten;
}
mod loss {
    pub mod cispo;
    pub mod clip_cov;
    pub mod dppo;
    pub mod dro;
    pub mod edit_weights;
    pub mod gmpo;
    pub mod gspo;
    pub mod kl_cov;
    pub mod nll;
    pub mod pg;
    pub mod ppo_clip;
    pub mod reverse_pg;
    pub mod reverse_ppo;
    pub mod rlmec_pg;
    pub mod sapo;
    pub mod value_loss;
    pub mod weighted_nll;
}
mod preference {
    pub mod dpo;
    pub mod kto;
    pub mod orpo;
    pub mod pairwise_rm;
    pub mod simpo;
}
mod shaping {
    pub mod at_end;
    pub mod at_step_ends;
    pub mod calibrate;
    pub mod dpo_token_reward;
    pub mod grm_token_reward;
    pub mod kl;
    pub mod kl_unbiased;
    pub mod length;
    pub mod normalize;
    pub mod reward_clip;
    pub mod spread;
}
mod steps {
    pub mod split_steps;
    pub mod to_tokens;
    pub mod vine_values;
}

use spec::BlockSpec;

/// Every built-in block, sorted by name.
pub static ALL: &[&BlockSpec] = &[
    &maths::ABS,
    &maths::ADD,
    &shaping::at_end::SPEC,
    &shaping::at_step_ends::SPEC,
    &shaping::calibrate::SPEC,
    &loss::cispo::SPEC,
    &maths::CLAMP,
    &loss::clip_cov::SPEC,
    &aggregate::COUNT_NONZERO,
    &maths::DIV,
    &preference::dpo::SPEC,
    &shaping::dpo_token_reward::SPEC,
    &loss::dppo::SPEC,
    &loss::dro::SPEC,
    &loss::edit_weights::SPEC,
    &maths::EXP,
    &advantage::gae::SPEC,
    &loss::gmpo::SPEC,
    &advantage::gpg::SPEC,
    &shaping::grm_token_reward::SPEC,
    &advantage::group_zscore::SPEC,
    &advantage::grpo_passk::SPEC,
    &loss::gspo::SPEC,
    &shaping::kl::SPEC,
    &loss::kl_cov::SPEC,
    &shaping::kl_unbiased::SPEC,
    &preference::kto::SPEC,
    &shaping::length::SPEC,
    &maths::LOG,
    &maths::MAX,
    &aggregate::MEAN,
    &aggregate::MEAN_TOKENS,
    &maths::MIN,
    &correction::mis::SPEC,
    &maths::MUL,
    &maths::NEG,
    &loss::nll::SPEC,
    &shaping::normalize::SPEC,
    &advantage::opo::SPEC,
    &advantage::optimal_baseline::SPEC,
    &preference::orpo::SPEC,
    &preference::pairwise_rm::SPEC,
    &loss::pg::SPEC,
    &maths::POW,
    &loss::ppo_clip::SPEC,
    &advantage::reinforce_pp::SPEC,
    &advantage::reinforce_pp_baseline::SPEC,
    &advantage::remax::SPEC,
    &advantage::returns::SPEC,
    &loss::reverse_pg::SPEC,
    &loss::reverse_ppo::SPEC,
    &shaping::reward_clip::SPEC,
    &loss::rlmec_pg::SPEC,
    &advantage::rloo::SPEC,
    &correction::rollout_reject::SPEC,
    &loss::sapo::SPEC,
    &aggregate::SEQ_MEAN,
    &aggregate::SEQ_MEAN_TOKEN_MEAN,
    &aggregate::SEQ_MEAN_TOKEN_SUM,
    &aggregate::SEQ_MEAN_TOKEN_SUM_NORM,
    &preference::simpo::SPEC,
    &steps::split_steps::SPEC,
    &shaping::spread::SPEC,
    &maths::SQRT,
    &maths::SQUARE,
    &advantage::step_advantage::SPEC,
    &maths::STOPGRAD,
    &maths::SUB,
    &aggregate::SUM,
    &aggregate::SUM_TOKENS,
    &correction::tis::SPEC,
    &steps::to_tokens::SPEC,
    &aggregate::TOKEN_MEAN,
    &aggregate::TOKEN_SUM,
    &loss::value_loss::SPEC,
    &steps::vine_values::SPEC,
    &loss::weighted_nll::SPEC,
    &maths::WHERE,
    &advantage::whiten::SPEC,
];

/// Looks a block up by name.
pub fn lookup(name: &str) -> Option<&'static BlockSpec> {
    ALL.binary_search_by(|b| b.name.cmp(name)).ok().map(|i| ALL[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_sorted_unique_and_documented() {
        for pair in ALL.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} must come before {}",
                pair[1].name,
                pair[0].name
            );
        }
        for b in ALL {
            assert!(b.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", b.name);
            assert!(!b.summary.is_empty() && !b.summary.ends_with('.'), "{}: summary", b.name);
            // Lowercase, unless the first word is a name such as `PPO`, `ReMax` or `Bradley–Terry`.
            let first = b.summary.split(' ').next().unwrap_or("");
            let is_name = first.chars().skip(1).any(|c| c.is_uppercase() || !c.is_alphabetic());
            assert!(
                !first.starts_with(|c: char| c.is_uppercase()) || is_name,
                "{}: summary",
                b.name
            );
            assert!(
                !b.source.is_empty() && !b.formula.is_empty(),
                "{}: source and formula",
                b.name
            );
            for p in b.params {
                if let spec::DefaultRule::SameAs(other) = p.default {
                    assert!(
                        b.param(other).is_some(),
                        "{}.{} defaults to a missing param",
                        b.name,
                        p.name
                    );
                }
            }
            assert!(b.forward.is_some(), "{} has no forward", b.name);
            if let Some(i) = b.axis_from {
                assert!(i < b.inputs.len(), "{}: axis_from", b.name);
            }
            assert_eq!(lookup(b.name).map(|s| s.name), Some(b.name));
        }
    }
}
