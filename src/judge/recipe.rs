//! Judge-training recipes (`recipes/judges-*.yaml`): the data build (`data:`), the scratch judge's
//! sizes (`scratch:` + `tokenizer:`), and the two fine-tunes (`orm:`, `parm:`). Unknown keys are
//! errors. The glyph-world recipe is embedded so the commands work from any folder.
use super::data::JudgeDataConfig;
use super::reward_ft::RewardFtConfig;
use crate::models::llava_ov::train::ScratchConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `recipes/judges-glyphs.yaml`, embedded.
pub const JUDGES_GLYPHS_YAML: &str = include_str!("../../recipes/judges-glyphs.yaml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgesRecipe {
    pub name: String,
    /// `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "d_device")]
    pub device: String,
    pub data: JudgeDataConfig,
    /// Sizes of a judge initialised from scratch (used when a stage has no `init`).
    #[serde(default)]
    pub scratch: Option<ScratchConfig>,
    /// Tokenizer of a scratch judge (copied into its checkpoints).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Stages run before `orm` (not in the paper, whose judges start from a LLaVA-OneVision that was
    /// already pretrained to read images): `pretrain-1`, `pretrain-2`, … in order, each usually
    /// initialised from the one before (`init`), the first from scratch.
    #[serde(default)]
    pub pretrain: Vec<RewardFtConfig>,
    pub orm: RewardFtConfig,
    pub parm: RewardFtConfig,
}

fn d_device() -> String {
    "cpu".into()
}

impl JudgesRecipe {
    /// Reads a recipe file, or the embedded glyph-world recipe for `None`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => {
                Self::from_yaml(JUDGES_GLYPHS_YAML).context("embedded recipes/judges-glyphs.yaml")
            }
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Self::from_yaml(&text).with_context(|| format!("parsing {}", p.display()))
            }
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self> {
        Ok(serde_norway::from_str(text)?)
    }

    /// The fine-tune named `stage` (`pretrain-N`, `orm` or `parm`).
    pub fn stage(&self, stage: &str) -> Result<&RewardFtConfig> {
        match stage {
            "orm" => return Ok(&self.orm),
            "parm" => return Ok(&self.parm),
            _ => {}
        }
        if let Some(k) = stage
            .strip_prefix("pretrain-")
            .and_then(|k| k.parse::<usize>().ok())
        {
            if let Some(c) = k.checked_sub(1).and_then(|i| self.pretrain.get(i)) {
                return Ok(c);
            }
        }
        bail!(
            "unknown stage '{stage}' (expected one of {})",
            self.stage_names().join(", ")
        )
    }

    /// Every stage in training order: `pretrain-1..`, `orm`, `parm`.
    pub fn stage_names(&self) -> Vec<String> {
        let mut v: Vec<String> = (1..=self.pretrain.len())
            .map(|k| format!("pretrain-{k}"))
            .collect();
        v.extend(["orm".to_string(), "parm".to_string()]);
        v
    }

    /// The scratch config with its tokenizer, when both are given.
    pub fn scratch(&self) -> Option<(&ScratchConfig, &Path)> {
        Some((self.scratch.as_ref()?, self.tokenizer.as_deref()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_recipe_parses_and_rejects_typos() {
        let r = JudgesRecipe::load(None).unwrap();
        assert!(r.scratch().is_some());
        assert!(r.stage("parm").unwrap().data.len() >= 2);
        let bad = JUDGES_GLYPHS_YAML.replace("batch_size:", "batch_sise:");
        assert!(JudgesRecipe::from_yaml(&bad).is_err());
    }

    #[test]
    fn stages_are_named_in_training_order() {
        let r = JudgesRecipe::load(None).unwrap();
        let names = r.stage_names();
        assert_eq!(names.len(), r.pretrain.len() + 2);
        assert_eq!(&names[names.len() - 2..], ["orm", "parm"]);
        for (k, n) in names.iter().enumerate().take(r.pretrain.len()) {
            assert_eq!(n, &format!("pretrain-{}", k + 1));
            assert_eq!(r.stage(n).unwrap(), &r.pretrain[k]);
        }
        assert!(r.stage("pretrain-0").is_err());
        assert!(r
            .stage(&format!("pretrain-{}", r.pretrain.len() + 1))
            .is_err());
        assert!(r.stage("rm").is_err());
    }
}
