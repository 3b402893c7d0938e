//! DPO on masked image tokens: likelihood estimators, losses, trainer.
pub mod guidance;
pub mod logp;
pub mod loss;
pub mod trainer;
