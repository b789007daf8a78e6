//! One module per subcommand, each with a `main` taking its parsed arguments.

pub mod bench;
pub mod blocks;
pub mod compare;
pub mod completions;
pub mod diff;
pub mod eval;
pub mod explain;
pub mod export;
pub mod fmt;
pub mod generate;
pub mod graph;
pub mod lint;
pub mod plot;
pub mod run;
pub mod score;
pub mod tiny_checkpoint;
pub mod values;
