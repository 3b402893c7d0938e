//! DPO on masked image tokens: likelihood estimators, losses, trainer.

pub mod loss;
