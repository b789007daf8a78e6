//! Exports: a recipe's objective for another engine, by proof (see `verl`).

pub mod verl;
