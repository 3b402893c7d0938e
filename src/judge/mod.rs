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
use crate::models::llava_ov::ScoreMode;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// How the LLaVA judges read P(yes) at test time (`iterate.judge_probs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeProbs {
    /// The paper's code: the distribution after HF generate's top-k 20 / top-p 0.8 warpers
    /// (spec-judges §0.4). It saturates to exactly 1 or 0 once one answer holds 80% of the top-20
    /// mass, so best-of-N among such candidates is a tie, broken by candidate order.
    #[default]
    Seed,
    /// The softmax of the answer logits: every candidate keeps its own P(yes).
    Exact,
}

impl JudgeProbs {
    pub fn is_seed(&self) -> bool {
        *self == JudgeProbs::Seed
    }

    pub fn score_mode(self) -> ScoreMode {
        match self {
            JudgeProbs::Seed => ScoreMode::paper(),
            JudgeProbs::Exact => ScoreMode::Exact,
        }
    }
}

/// What a verifier's name adds for a judge's probability reading: nothing for the paper's.
fn probs_suffix(mode: ScoreMode) -> &'static str {
    match mode {
        ScoreMode::Exact => "-exact-probs",
        m if m == ScoreMode::paper() => "",
        ScoreMode::Seed { .. } => "-other-probs",
    }
}

/// Scores final images.
pub trait OutcomeJudge {
    /// P("yes") to "does this image accurately represent the prompt?" for each (prompt, image).
    fn p_yes(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>>;
    /// What a verifier's name adds for how this judge reads P(yes) (eval folders are reused by
    /// that name, so two readings must not share one).
    fn probs_suffix(&self) -> &'static str {
        ""
    }
}

/// Scores intermediate images of a trajectory.
pub trait StepJudge {
    /// Probability that the step is clear enough to be judged (PARM clarity; the seed counts every
    /// first answer token other than "no" as clear, so this is 1 − P("no")).
    fn clarity(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>>;
    /// (P("yes"), P("no")) that the step has the potential to reach an image satisfying the prompt.
    fn potential(&self, prompts: &[String], images: &Tensor) -> Result<Vec<(f64, f64)>>;
    /// As [`OutcomeJudge::probs_suffix`].
    fn probs_suffix(&self) -> &'static str {
        ""
    }
}

impl OutcomeJudge for LlavaJudge {
    fn p_yes(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        self.outcome(prompts, images)
    }
    fn probs_suffix(&self) -> &'static str {
        probs_suffix(self.mode)
    }
}

impl StepJudge for LlavaJudge {
    fn clarity(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        LlavaJudge::clarity(self, prompts, images)
    }
    fn potential(&self, prompts: &[String], images: &Tensor) -> Result<Vec<(f64, f64)>> {
        LlavaJudge::potential(self, prompts, images)
    }
    fn probs_suffix(&self) -> &'static str {
        probs_suffix(self.mode)
    }
}
