//! `rlx run`: stages in order — warm start, reward model, DPO, RL — on the built-in tasks.

pub mod checkpoint;
pub mod fault;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod progress;
pub mod run;
pub mod scoring;
pub mod signals;
pub mod tensorboard;
pub mod vine;
pub mod yes_no;
