//! rlx: a declarative language for RL objectives on language models.
//!
//! The pipeline, one module per arrow: `syntax` (text → AST) → `ir` (AST → dataflow graphs) →
//! `check` (levels, gradient flow, parameters, stages, lints) → `plan` (what the runtime must
//! compute). `blocks` is the registry every phase reads; `diff` compares two checked recipes;
//! `render` turns diagnostics into text at the edge; `lsp` serves the same analysis to editors.
//!
//! **The library API is not stable.** The crate is the `rlx` program's library: its modules are
//! public so the binary, the tests and the benchmarks can reach them, not as a promise to other
//! crates. What is stable is the command line, the recipe language and the files a run writes
//! (`metrics.jsonl`, checkpoints, Hugging Face layouts). Any release may rename or remove a
//! public item; depend on the binary, or pin an exact version.

pub mod bench;
pub mod blocks;
pub mod chat;
pub mod check;
pub mod diag;
pub mod diff;
pub mod engine;
pub mod exec;
pub mod export;
pub mod graph_view;
pub mod host;
pub mod inspect;
pub mod ir;
pub mod lsp;
pub mod model;
pub mod render;
pub mod report;
pub mod rewards;
pub mod rng;
pub mod sample;
pub mod source;
pub mod syntax;
pub mod tasks;
pub mod tokenizer;
pub mod train;
