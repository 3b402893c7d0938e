//! LLaVA-OneVision as ORM / PARM judge: images → visual tokens ("pad" as the seed infers, or
//! `anyres_max_N`), the seed's prompts, one batched forward, P(yes)/P(no) at the answer position.
use super::config::AspectMode;
use super::image_processing::{image_from_unit_tensor, preprocess_anyres, preprocess_pad};
use super::model::LlavaOnevision;
use super::prompt::{
    bare_prompt, dpo_reward_prompt, orm_prompt, parm_clarity_prompt, parm_potential_prompt,
    tokenizer_image_token, JudgeQuestion, PromptLayout,
};
use super::scoring::{answer_distribution, ScoreMode};
use anyhow::{anyhow, ensure, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

/// Which question the outcome score asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeQuestion {
    /// ORM (selector.py:40).
    Orm,
    /// DPO reward with the PARM checkpoint (train_dpo.py:591).
    DpoReward,
}

pub struct LlavaJudge {
    model: LlavaOnevision,
    tokenizer: Tokenizer,
    /// Distribution of the first answer token (default: the seed's top-k 20 / top-p 0.8).
    pub mode: ScoreMode,
    /// Image path; the seed overrides the checkpoints' anyres_max_9 to "pad" at inference.
    pub aspect: AspectMode,
    pub outcome_question: OutcomeQuestion,
    /// How the questions are put (the checkpoint's `imgcot_prompt_layout`; default the paper's).
    pub layout: PromptLayout,
    /// Sequences per forward pass.
    pub max_batch: usize,
    yes_id: i64,
    no_id: i64,
}

impl LlavaJudge {
    /// Loads `dir` (config.json, safetensors, tokenizer.json). The vocabulary is cut to the
    /// tokenizer's length including added tokens (the seed's `resize_token_embeddings`, 151646).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load_with_vocab(dir, device, kind, None)
    }

    /// Like [`LlavaJudge::load`] with an explicit vocabulary cut (e.g. 151646 for an HF-converted
    /// checkpoint, whose tokenizer also counts `<image>`/`<video>`); `None` = tokenizer length.
    pub fn load_with_vocab(
        dir: &Path,
        device: Device,
        kind: Kind,
        vocab_keep: Option<i64>,
    ) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("loading {}: {e}", tok_path.display()))?;
        let keep = vocab_keep.unwrap_or(tokenizer.get_vocab_size(true) as i64);
        let model = LlavaOnevision::load(dir, device, kind, Some(keep))?;
        Self::new(model, tokenizer)
    }

    pub fn new(model: LlavaOnevision, tokenizer: Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .map(|i| i as i64)
                .with_context(|| format!("tokenizer has no token '{t}'"))
        };
        let (yes_id, no_id) = (id("yes")?, id("no")?);
        let v = model.language_model().vocab_size();
        ensure!(
            yes_id < v && no_id < v,
            "yes/no ids {yes_id}/{no_id} outside the model vocabulary {v}"
        );
        let layout = model.config().prompt_layout;
        Ok(Self {
            model,
            tokenizer,
            mode: ScoreMode::paper(),
            aspect: AspectMode::Pad,
            outcome_question: OutcomeQuestion::Orm,
            layout,
            max_batch: 8,
            yes_id,
            no_id,
        })
    }

    pub fn model(&self) -> &LlavaOnevision {
        &self.model
    }
    pub fn yes_no_ids(&self) -> (i64, i64) {
        (self.yes_id, self.no_id)
    }

    /// Visual tokens of each image of `images` [B, 3, H, W] in [-1, 1] (converted to uint8 exactly as
    /// Show-o saves PNGs, then preprocessed as the seed does).
    pub fn visual_tokens(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        let s = images.size();
        ensure!(
            s.len() == 4 && s[1] == 3,
            "expected images [B, 3, H, W], got {s:?}"
        );
        let size = self.model.config().vision.image_size as u32;
        let rgb: Vec<_> = (0..s[0])
            .map(|i| image_from_unit_tensor(&images.get(i)))
            .collect::<Result<_>>()?;
        match self.aspect {
            AspectMode::Pad => {
                let mut out = Vec::with_capacity(rgb.len());
                for chunk in rgb.chunks(self.max_batch.max(1)) {
                    let px = Tensor::stack(
                        &chunk
                            .iter()
                            .map(|im| preprocess_pad(im, size))
                            .collect::<Vec<_>>(),
                        0,
                    );
                    out.extend(self.model.encode_pad(&px.to_device(self.model.device()))?);
                }
                Ok(out)
            }
            AspectMode::AnyresMax(n) => rgb
                .iter()
                .map(|im| {
                    let (crops, _) =
                        preprocess_anyres(im, &self.model.config().image_grid_pinpoints, size)?;
                    self.model.encode_anyres(
                        &crops.to_device(self.model.device()),
                        (im.width() as i64, im.height() as i64),
                        n,
                    )
                })
                .collect(),
        }
    }

    /// First-answer-token distributions [B, V] for prompt texts (each with one `<image>`) and their
    /// visual tokens, batched `max_batch` at a time.
    pub fn answer_distributions(&self, texts: &[String], visual: &[Tensor]) -> Result<Tensor> {
        ensure!(
            texts.len() == visual.len(),
            "{} prompts but {} images",
            texts.len(),
            visual.len()
        );
        ensure!(!texts.is_empty(), "no prompts");
        let mut outs = Vec::new();
        for (tc, vc) in texts
            .chunks(self.max_batch.max(1))
            .zip(visual.chunks(self.max_batch.max(1)))
        {
            let seqs = tc
                .iter()
                .zip(vc)
                .map(|(t, v)| {
                    self.model.splice(
                        &tokenizer_image_token(&self.tokenizer, t)?,
                        std::slice::from_ref(v),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let logits = tch::no_grad(|| self.model.last_logits(&seqs))?;
            outs.push(answer_distribution(&logits, self.mode));
        }
        Ok(Tensor::cat(&outs, 0))
    }

    /// (P(yes), P(no)) per (prompt text, image).
    pub fn yes_no(&self, texts: &[String], images: &Tensor) -> Result<Vec<(f64, f64)>> {
        let visual = tch::no_grad(|| self.visual_tokens(images))?;
        let d = self
            .answer_distributions(texts, &visual)?
            .to_device(Device::Cpu)
            .to_kind(Kind::Double);
        let yes: Vec<f64> = Vec::try_from(d.select(1, self.yes_id))?;
        let no: Vec<f64> = Vec::try_from(d.select(1, self.no_id))?;
        Ok(yes.into_iter().zip(no).collect())
    }

    /// The prompt text (with `<image>`) of `question` about generation prompt `p` in this judge's
    /// layout.
    pub fn prompt_text(&self, question: JudgeQuestion, p: &str) -> String {
        match (self.layout, question) {
            (PromptLayout::Bare, q) => bare_prompt(q, p),
            (PromptLayout::Chat, JudgeQuestion::Outcome) => match self.outcome_question {
                OutcomeQuestion::Orm => orm_prompt(p),
                OutcomeQuestion::DpoReward => dpo_reward_prompt(p),
            },
            (PromptLayout::Chat, JudgeQuestion::Clarity) => parm_clarity_prompt(p),
            (PromptLayout::Chat, JudgeQuestion::Potential) => parm_potential_prompt(p),
        }
    }

    fn texts(&self, question: JudgeQuestion, prompts: &[String]) -> Vec<String> {
        prompts
            .iter()
            .map(|p| self.prompt_text(question, p))
            .collect()
    }

    /// Outcome score P(yes) of the ORM (or DPO-reward) question.
    pub fn outcome(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        let texts = self.texts(JudgeQuestion::Outcome, prompts);
        Ok(self
            .yes_no(&texts, images)?
            .into_iter()
            .map(|(y, _)| y)
            .collect())
    }

    /// PARM clarity: probability that the answer is not "no" (the seed treats any other first token
    /// as "clear", selector.py:93-111).
    pub fn clarity(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        let texts = self.texts(JudgeQuestion::Clarity, prompts);
        Ok(self
            .yes_no(&texts, images)?
            .into_iter()
            .map(|(_, n)| 1.0 - n)
            .collect())
    }

    /// PARM potential: (P(yes), P(no)) of the second-turn question.
    pub fn potential(&self, prompts: &[String], images: &Tensor) -> Result<Vec<(f64, f64)>> {
        let texts = self.texts(JudgeQuestion::Potential, prompts);
        self.yes_no(&texts, images)
    }
}
