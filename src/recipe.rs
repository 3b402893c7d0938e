//! YAML recipes → typed, validated configuration. Unknown keys are errors, so a typo never
//! silently falls back to a default. With no recipe, every command runs the glyph world
//! (`recipes/glyphs.yaml`, embedded in the binary so it works from any folder).
use crate::generate::SamplerConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The glyph-world recipe, embedded.
pub const GLYPHS_YAML: &str = include_str!("../recipes/glyphs.yaml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// A name for logs and run folders.
    pub name: String,
    /// `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "d_device")]
    pub device: String,
    /// `fp32`, `bf16` or `auto` (bf16 on CUDA and on CPUs with native bf16, else fp32) for
    /// sampling and frozen models.
    #[serde(default = "d_dtype")]
    pub dtype: String,
    pub paths: Paths,
    /// Show-o/Phi config overrides for a model trained from scratch (pretrain); see models::showo::Config.
    #[serde(default)]
    pub model: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub sampler: SamplerConfig,
    #[serde(default)]
    pub pretrain: Option<Pretrain>,
    pub eval: Eval,
    /// Preference-pair building (sampling N per prompt, judging, pairing).
    #[serde(default)]
    pub pairs: Option<PairsConfig>,
    /// One DPO round (see dpo::trainer::DpoConfig).
    #[serde(default)]
    pub dpo: Option<crate::dpo::trainer::DpoConfig>,
    /// The verify-and-reinforce loop (`dpo --iter`).
    #[serde(default)]
    pub iterate: Option<crate::commands::iterate::IterateConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairsConfig {
    /// Training prompts (GenEval-format metadata), disjoint from the evaluation set.
    pub prompts: PathBuf,
    /// Prompts sampled per round (weighted by `tag_weights`, without replacement within a tag).
    pub num_prompts: usize,
    /// Images sampled per prompt.
    pub n: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub rule: crate::preference::build::PairRule,
    /// Relative weight of each tag when choosing prompts (missing tags: 1).
    #[serde(default)]
    pub tag_weights: std::collections::BTreeMap<String, f64>,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
}

fn d_device() -> String {
    "cpu".into()
}
fn d_dtype() -> String {
    "fp32".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// The generator checkpoint directory (Show-o layout).
    pub model: PathBuf,
    /// The image tokenizer: `glyph`, or a MAGVIT-v2 checkpoint directory.
    pub vq: String,
    /// The prompt tokenizer (`tokenizer.json`).
    pub tokenizer: PathBuf,
    /// Where runs (TensorBoard, logs, eval outputs) go.
    #[serde(default = "d_runs")]
    pub runs: PathBuf,
    /// Where checkpoints of runs go.
    #[serde(default = "d_ckpts")]
    pub ckpts: PathBuf,
}

fn d_runs() -> PathBuf {
    "runs".into()
}
fn d_ckpts() -> PathBuf {
    "ckpts".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pretrain {
    pub steps: u64,
    pub batch_size: i64,
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "d_min_lr")]
    pub min_lr_ratio: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Share of rows whose prompt is replaced by the unconditional one (Show-o: 0.1).
    #[serde(default = "d_drop")]
    pub cond_dropout: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "d_ckpt_every")]
    pub ckpt_every: u64,
    #[serde(default = "d_log_every")]
    pub log_every: u64,
}

impl Pretrain {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.batch_size > 0,
            "batch_size {} must be positive",
            self.batch_size
        );
        anyhow::ensure!(
            self.ckpt_every > 0 && self.log_every > 0,
            "ckpt_every ({}) and log_every ({}) must be positive",
            self.ckpt_every,
            self.log_every
        );
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr {} must be positive",
            self.lr
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.cond_dropout),
            "cond_dropout {} must be in [0, 1]",
            self.cond_dropout
        );
        Ok(())
    }
}

fn d_min_lr() -> f64 {
    0.1
}
fn d_wd() -> f64 {
    0.01
}
fn d_clip() -> f64 {
    1.0
}
fn d_drop() -> f64 {
    0.1
}
fn d_ckpt_every() -> u64 {
    200
}
fn d_log_every() -> u64 {
    20
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// GenEval-format metadata of the evaluation prompts.
    pub metadata: PathBuf,
    #[serde(default = "d_ipp")]
    pub images_per_prompt: usize,
    /// Base of the per-image seeds: image k of prompt i uses derive_seed(seed, i, k).
    #[serde(default)]
    pub seed: u64,
    /// Rows decoded together.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
}

fn d_ipp() -> usize {
    4
}
fn d_batch() -> usize {
    64
}

impl Recipe {
    /// Loads `path`, or the embedded glyph-world recipe when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Self::from_yaml(GLYPHS_YAML).context("embedded recipes/glyphs.yaml"),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading recipe {}", p.display()))?;
                Self::from_yaml(&text).with_context(|| format!("recipe {}", p.display()))
            }
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self> {
        let r: Self = serde_norway::from_str(text)?;
        r.validate()?;
        Ok(r)
    }

    /// Settings that would otherwise fail only after minutes of work (a zero interval divides
    /// by zero after the first step), checked when the recipe is read.
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = &self.pretrain {
            p.validate().context("pretrain")?;
        }
        if let Some(d) = &self.dpo {
            d.validate()?;
        }
        Ok(())
    }

    pub fn device(&self) -> Result<tch::Device> {
        crate::util::parse_device(&self.device)
    }

    /// The inference dtype on the recipe's device (`auto` resolved).
    pub fn kind(&self) -> Result<tch::Kind> {
        crate::util::parse_dtype_on(&self.dtype, self.device()?)
    }

    pub fn is_glyph(&self) -> bool {
        self.paths.vq == "glyph"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_recipe_parses() {
        let r = Recipe::load(None).unwrap();
        assert!(r.is_glyph());
        assert!(r.pretrain.is_some());
    }

    #[test]
    fn zero_intervals_and_sizes_are_refused_when_the_recipe_is_read() {
        for (from, to) in [
            ("  ckpt_every: 200\n", "  ckpt_every: 0\n"),
            (
                "  batch_size: 64\n  lr: 0.0005",
                "  batch_size: -1\n  lr: 0.0005",
            ),
            ("  eval_every: 50\n", "  eval_every: 0\n"),
            ("  ckpt_every: 50\n", "  ckpt_every: 0\n"),
            ("    every: 2\n", "    every: 0\n"),
            ("    samples_per_prompt: 4\n", "    samples_per_prompt: 1\n"),
        ] {
            assert!(GLYPHS_YAML.contains(from), "{from:?} is not in the recipe");
            let bad = GLYPHS_YAML.replacen(from, to, 1);
            let e = Recipe::from_yaml(&bad).expect_err(to);
            assert!(format!("{e:#}").contains("must"), "{to:?}: {e:#}");
        }
        let bad = GLYPHS_YAML.replacen("  lr: 0.00003\n", "  lr: 0.00003\n  eval_n_mc: 0\n", 1);
        assert!(Recipe::from_yaml(&bad).is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let bad = GLYPHS_YAML.replace("images_per_prompt:", "images_per_promt:");
        let e = Recipe::from_yaml(&bad).unwrap_err();
        assert!(format!("{e:#}").contains("images_per_promt"), "{e:#}");
    }
}
