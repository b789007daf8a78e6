//! Training engines beyond this process. A Tinker-protocol server (hosted Tinker, SkyRL,
//! verl_tinker) samples, runs forwards and backwards and steps the optimiser on its GPUs; rlx
//! keeps the recipe, evaluates the stage graph on the host, and turns the loss's gradient with
//! respect to each log-probability input into the per-token inputs of one server backward
//! (`surrogate`). The protocol client and the trainer's engine seam build on this.

pub mod surrogate;
