//! The names a recipe can use besides blocks: built-in data sets and their members, model
//! constructors, texts, and the settings of `sample { }` and `optim { }`.

use crate::blocks::spec::*;

/// What a data set member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// Prompts to sample from (`prompts X`); `demonstrations` when each has a reference response.
    Prompts { demonstrations: bool },
    /// Chosen/rejected pairs (`pairs X`).
    Pairs,
    /// Texts to imitate (`data X`, `warm_start = X`).
    Texts,
    /// Wrong responses with their minimal corrections (`data X`): `response` and `target`.
    Corrections,
    /// A programmatic reward function, `X(response)`.
    Verifier,
}

impl MemberKind {
    pub fn describe(self) -> &'static str {
        match self {
            MemberKind::Prompts { .. } => "a prompt set",
            MemberKind::Pairs => "a preference-pair set",
            MemberKind::Texts => "a text set",
            MemberKind::Corrections => "a correction set",
            MemberKind::Verifier => "a verifier",
        }
    }
}

#[derive(Debug)]
pub struct DataMember {
    pub name: &'static str,
    pub kind: MemberKind,
    pub doc: &'static str,
}

#[derive(Debug)]
pub struct DataSetSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [ParamSpec],
    pub members: &'static [DataMember],
}

impl DataSetSpec {
    pub fn member(&self, name: &str) -> Option<&'static DataMember> {
        self.members.iter().find(|m| m.name == name)
    }
}

const SEED: ParamSpec = ParamSpec {
    name: "seed",
    ty: ParamTy::Int,
    default: DefaultRule::Num(0.0),
    range: Range::NonNegative,
    doc: "generator seed",
};

/// Built-in data sets, generated deterministically from a seed.
pub static DATA_SETS: &[DataSetSpec] = &[
    DataSetSpec {
        name: "arith",
        summary: "multi-step arithmetic, one step per line, with a verifier of the final answer",
        params: &[
            SEED,
            int("problems", 5000.0, "number of problems"),
            int("min_ops", 2.0, "fewest operations per problem"),
            int("max_ops", 4.0, "most operations per problem"),
        ],
        members: &[
            DataMember {
                name: "problems",
                kind: MemberKind::Prompts { demonstrations: true },
                doc: "problems; the demonstration is the worked solution",
            },
            DataMember {
                name: "solutions",
                kind: MemberKind::Texts,
                doc: "worked solutions of other problems (disjoint from `problems` and the held-out set), for warm starts",
            },
            DataMember {
                name: "correct",
                kind: MemberKind::Verifier,
                doc: "1 if the final answer is right, else 0",
            },
            DataMember {
                name: "corrections",
                kind: MemberKind::Corrections,
                doc: "wrong solutions with their minimal corrections",
            },
        ],
    },
    DataSetSpec {
        name: "reviews",
        summary: "a small review language with sentiment, demonstrations and preference pairs",
        params: &[
            SEED,
            int("prompts", 2000.0, "number of review openings"),
            num("noise", 0.1, Range::Probability, "label-flip rate of the preference pairs"),
        ],
        members: &[
            DataMember {
                name: "prompts",
                kind: MemberKind::Prompts { demonstrations: true },
                doc: "review openings; the demonstration is the rest of a human-like review",
            },
            DataMember {
                name: "texts",
                kind: MemberKind::Texts,
                doc: "whole reviews, for warm starts",
            },
            DataMember {
                name: "preferences",
                kind: MemberKind::Pairs,
                doc: "chosen/rejected continuations ranked by the hidden gold score, with label noise",
            },
        ],
    },
];

const fn text_param(name: &'static str, default: &'static str, doc: &'static str) -> ParamSpec {
    ParamSpec { name, ty: ParamTy::Str, default: DefaultRule::Str(default), range: Range::Any, doc }
}

/// `jsonl("file.jsonl", ...)`: the user's own data, one JSON object per line.
pub static JSONL: DataSetSpec = DataSetSpec {
    name: "jsonl",
    summary: "prompts with answers or demonstrations, or preference pairs, from a JSON-lines file",
    params: &[
        ParamSpec {
            name: "path",
            ty: ParamTy::Str,
            default: DefaultRule::Required,
            range: Range::Any,
            doc: "the file, relative to the current directory",
        },
        text_param("prompt", "prompt", "field holding the prompt"),
        text_param("answer", "answer", "field holding the reference answer (GSM8K: `answer`)"),
        ParamSpec {
            name: "demonstration",
            ty: ParamTy::Str,
            default: DefaultRule::Off,
            range: Range::Any,
            doc: "field holding a reference response; default: the answer field",
        },
        text_param("chosen", "chosen", "field holding the preferred response (pair files)"),
        text_param("rejected", "rejected", "field holding the other response (pair files)"),
        choice(
            "format",
            &["gsm8k", "boxed", "exact"],
            "gsm8k",
            "how final answers are stated: after `####`, in `\\boxed{}`, or the whole text",
        ),
        int("eval", 128.0, "held-out prompts, taken from the end of the file (at most a fifth)"),
    ],
    members: &[
        DataMember {
            name: "problems",
            kind: MemberKind::Prompts { demonstrations: true },
            doc: "the prompts; the demonstration is the demonstration (or answer) field",
        },
        DataMember {
            name: "texts",
            kind: MemberKind::Texts,
            doc: "prompt and demonstration joined, for warm starts and SFT",
        },
        DataMember {
            name: "correct",
            kind: MemberKind::Verifier,
            doc: "1 if the response's final answer equals the answer field's, else 0",
        },
        DataMember {
            name: "preferences",
            kind: MemberKind::Pairs,
            doc: "chosen/rejected pairs (files whose lines have the chosen field)",
        },
    ],
};

pub fn data_set(name: &str) -> Option<&'static DataSetSpec> {
    DATA_SETS.iter().find(|d| d.name == name)
}

/// `builtin(preset, ...)` model settings.
pub static MODEL_PARAMS: &[ParamSpec] = &[
    choice("preset", &["tiny", "small", "base"], "tiny", "size preset of the built-in transformer"),
    ParamSpec {
        name: "layers",
        ty: ParamTy::Int,
        default: DefaultRule::Off,
        range: Range::CountAtMost(1024.0),
        doc: "override the preset's layer count",
    },
    ParamSpec {
        name: "width",
        ty: ParamTy::Int,
        default: DefaultRule::Off,
        range: Range::CountAtMost(65536.0),
        doc: "override the preset's width",
    },
    ParamSpec {
        name: "heads",
        ty: ParamTy::Int,
        default: DefaultRule::Off,
        range: Range::CountAtMost(1024.0),
        doc: "override the preset's head count",
    },
    int("warm_steps", 800.0, "optimiser steps of the supervised warm start (`warm_start = ...`)"),
    num("warm_lr", 1e-3, Range::Positive, "learning rate of the warm start"),
];

/// `yes_no(MODEL, ...)` settings: what the model is asked after a text, and the two answers
/// whose log-probability difference is the text's score.
pub static YES_NO_PARAMS: &[ParamSpec] = &[
    text_param(
        "question",
        "\nIs this a good response? Answer:",
        "asked after the scored text (its tokens follow the text's)",
    ),
    text_param("yes", " Yes", "the answer of a good text"),
    text_param("no", " No", "the answer of a bad text"),
];

/// `pretrained("dir", ...)` model settings.
pub static PRETRAINED_PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "path",
        ty: ParamTy::Str,
        default: DefaultRule::Required,
        range: Range::Any,
        doc: "a Hugging Face model directory: config.json, safetensors weights, tokenizer.json",
    },
    ParamSpec {
        name: "lora_rank",
        ty: ParamTy::Int,
        default: DefaultRule::Off,
        range: Range::Count,
        doc: "train LoRA adapters of this rank instead of every weight",
    },
    num(
        "lora_alpha",
        16.0,
        Range::Positive,
        "LoRA scale numerator: updates are scaled by alpha / rank",
    ),
    text_param(
        "lora_targets",
        "q_proj,k_proj,v_proj,o_proj",
        "comma-separated modules that get adapters (q/k/v/o_proj, gate/up/down_proj, or `all`)",
    ),
    choice(
        "dtype",
        &["f32", "bf16"],
        "f32",
        "compute precision; bf16 is for GPUs (master weights stay f32)",
    ),
    ParamSpec {
        name: "chat",
        ty: ParamTy::Bool,
        default: DefaultRule::Bool(false),
        range: Range::Any,
        doc: "render prompts through the tokenizer's chat template as a user message",
    },
    choice(
        "save_dtype",
        &["f32", "source", "bf16", "f16"],
        "f32",
        "dtype of the saved RUN/models/NAME/model.safetensors; `source` keeps the checkpoint's (half the size for bf16 models, LoRA updates rounded)",
    ),
];

/// What a model's members read (`policy.logp`, `grm.rewrite(...)`), for editors and docs; which
/// of them a model offers is `ModelRef::members`.
pub static MODEL_MEMBERS: &[(&str, &str)] = &[
    (
        "logp",
        "log-probability of each token of a text (default: the stage's primary text); carries gradient when the stage trains the model",
    ),
    ("values", "the value head's estimate at each token (needs `train ..., value_head(MODEL)`)"),
    ("entropy", "entropy of the next-token distribution at each token"),
    (
        "sum_p2",
        "Σ_v π(v)² of the next-token distribution at each token (the optimal token baseline's variance proxy)",
    ),
    (
        "keep_prob",
        "the probability that the model, asked to rewrite the text, keeps each token (RLMEC's generative reward model)",
    ),
    (
        "rewrite",
        "the model's rewrite of a text, generated greedily (`grm.rewrite(response)`; RLMEC)",
    ),
];

/// The models a stage can read besides its declarations.
pub static PSEUDO_MODELS: &[(&str, &str)] = &[
    (
        "old",
        "the trained model as it was when the batch was sampled (frozen; PPO's ratio denominator)",
    ),
    ("ref", "the trained model as it was before the stage (frozen; the KL reference)"),
    (
        "rollout",
        "the sampler's own log-probabilities as it returned them (`rollout.logp`; off-policy corrections)",
    ),
];

/// Texts a stage can read, by the kind of its data.
pub static TEXTS: &[(&str, &str)] = &[
    ("response", "the sampled response (stages with `prompts`)"),
    ("demonstration", "the prompt's reference response (prompt sets with demonstrations)"),
    ("greedy", "a greedy response to the same prompt (stages with `prompts`; ReMax's baseline)"),
    ("chosen", "the preferred response (stages with `pairs`)"),
    ("rejected", "the other response (stages with `pairs`)"),
    (
        "mismatched",
        "the next pair's chosen response after this pair's prompt (stages with `pairs`; KTO's KL reference point)",
    ),
    ("target", "the text to imitate (stages with `data`)"),
];

/// `sample { }` settings.
pub static SAMPLE: &[ParamSpec] = &[
    int_at_most("n", 1.0, 4096.0, "samples per prompt; they form one group"),
    int_at_most("max_tokens", 64.0, 1e6, "most new tokens per response"),
    int("min_tokens", 0.0, "fewest new tokens: EOS is not sampled before this many"),
    num(
        "temperature",
        1.0,
        Range::Positive,
        "softmax temperature; also applied to every log-prob of the stage",
    ),
    num("top_p", 1.0, Range::UnitExclusiveZero, "nucleus sampling mass"),
    ParamSpec {
        name: "stop",
        ty: ParamTy::Str,
        default: DefaultRule::Off,
        range: Range::Any,
        doc: "stop string",
    },
    ParamSpec {
        name: "from",
        ty: ParamTy::Str,
        default: DefaultRule::Str("old"),
        range: Range::Any,
        doc: "which model samples: `old` (the trained model) or `ref` (its frozen initial copy, offline RL)",
    },
];

/// `optim { }` settings.
pub static OPTIM: &[ParamSpec] = &[
    num("lr", 1e-5, Range::Positive, "AdamW learning rate"),
    int("steps", 100.0, "rollout-and-update iterations (RL) or optimiser steps"),
    int("epochs", 1.0, "passes over each rollout batch (PPO epochs) or over the data"),
    int_at_most("batch", 32.0, 1e6, "sequences per rollout batch"),
    ParamSpec {
        name: "minibatch",
        ty: ParamTy::Int,
        default: DefaultRule::SameAs("batch"),
        range: Range::CountAtMost(1e6),
        doc: "sequences per optimiser step",
    },
    ParamSpec {
        name: "clip_grad",
        ty: ParamTy::OptFloat,
        default: DefaultRule::Num(1.0),
        range: Range::Positive,
        doc: "global gradient-norm clip; `none` disables it",
    },
    num("warmup", 0.0, Range::Probability, "fraction of steps with linear learning-rate warm-up"),
    num("weight_decay", 0.0, Range::NonNegative, "AdamW weight decay"),
    num("beta1", 0.9, Range::Probability, "AdamW β1"),
    num("beta2", 0.999, Range::Probability, "AdamW β2"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::ModelRef;

    #[test]
    fn every_model_member_is_documented() {
        let documented: Vec<&str> = MODEL_MEMBERS.iter().map(|(n, _)| *n).collect();
        assert_eq!(ModelRef::Named(String::new()).members(), documented.as_slice());
        for (name, _) in PSEUDO_MODELS {
            let m = ModelRef::pseudo(name).expect("a pseudo model");
            assert!(m.members().iter().all(|x| documented.contains(x)), "{name}");
        }
    }
}
