//! Training infrastructure shared by `pretrain`, `dpo` and `reward-ft`: a saveable AdamW with fp32
//! master weights, gradient norm/clipping, LR schedules, atomic checkpoints, reproducible RNG
//! state and TensorBoard/text logging. Everything works on any `tch::nn::VarStore`.

pub mod ckpt;
pub mod grad;
pub mod logging;
pub mod optim;
pub mod rng;
pub mod schedule;
