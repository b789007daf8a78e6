//! Text → syntax tree, and back again: the parser, the formatter and comment recovery.

pub mod ast;
pub mod comments;
pub mod format;
mod parser;

pub use parser::{MAX_NESTING, MAX_SOURCE_BYTES, parse};
