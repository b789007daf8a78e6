//! Syntax tree → dataflow graphs: name resolution, one graph per stage, and the built-in names.

pub mod builtins;
pub mod graph;
mod lower;
pub mod overrides;
pub mod reference;

pub use lower::lower;
