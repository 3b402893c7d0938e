//! Judges of generated images: an outcome judge scores final images (ORM), a step judge scores
//! intermediate images of a generation trajectory (PARM: clarity, then potential).
//!
//! Images are float [B, 3, H, W] in [-1, 1], as the generators decode them; prompts are the
//! generation prompts (one per image).
//!
//! Training the LLaVA-OneVision judges: [`dataset`] (LLaVA conversation records), [`data`]
//! (`judge-data`: ORM/PARM data from a generator), [`reward_ft`] (`reward-ft`), [`vision_pretrain`]
//! (a scratch glyph judge's tower), [`recipe`] (`recipes/judges-*.yaml`).
pub mod cli;
pub mod data;
pub mod dataset;
pub mod recipe;
pub mod reward_ft;
pub mod vision_pretrain;

use crate::models::llava_ov::judge::LlavaJudge;
use anyhow::Result;
use tch::Tensor;

/// Scores final images.
pub trait OutcomeJudge {
    /// P("yes") to "does this image accurately represent the prompt?" for each (prompt, image).
    fn p_yes(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>>;
}

/// Scores intermediate images of a trajectory.
pub trait StepJudge {
    /// Probability that the step is clear enough to be judged (PARM clarity; the seed counts every
    /// first answer token other than "no" as clear, so this is 1 − P("no")).
    fn clarity(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>>;
    /// (P("yes"), P("no")) that the step has the potential to reach an image satisfying the prompt.
    fn potential(&self, prompts: &[String], images: &Tensor) -> Result<Vec<(f64, f64)>>;
}

impl OutcomeJudge for LlavaJudge {
    fn p_yes(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        self.outcome(prompts, images)
    }
}

impl StepJudge for LlavaJudge {
    fn clarity(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        LlavaJudge::clarity(self, prompts, images)
    }
    fn potential(&self, prompts: &[String], images: &Tensor) -> Result<Vec<(f64, f64)>> {
        LlavaJudge::potential(self, prompts, images)
    }
}
