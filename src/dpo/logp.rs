//! Log-likelihood of an image under Show-o's masked-token objective — the quantity DPO compares.
//!
//! For one (prompt, image): draw a mask ratio from the schedule (Show-o §5: t ~ U[0,1),
//! ratio = cos(tπ/2), k = round(N·ratio) ≥ 1 positions), mask, run the t2i training layout and sum
//! (or average) the log-probabilities of the true codes at the masked positions; average over
//! `n_mc` masks. By default chosen and rejected of a pair share the mask ratio, the positions and
//! the prompt-dropout decision (the paper's code draws them independently, which adds variance that
//! has nothing to do with the preference), and policy and reference see the same masks. Masks are a
//! pure function of (seed, epoch, pair, draw), so reference log-probs can be precomputed and cached.
use crate::generate::Schedule;
use crate::models::showo::{omni_attention_mask, Layout, Showo};
use rand::rngs::ChaCha8Rng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Columns {
    /// log-softmax over the full vocabulary (the paper's code, via its training CE).
    Full,
    /// log-softmax over the image codebook only (the sampler's distribution).
    Codebook,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    Sum,
    Mean,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogpConfig {
    /// Masks per pair (Monte-Carlo draws averaged).
    #[serde(default = "d_mc")]
    pub n_mc: usize,
    /// Chosen and rejected share mask ratio, positions and prompt dropout (false: the paper's independent draws).
    #[serde(default = "d_true")]
    pub shared_mask: bool,
    #[serde(default = "d_red")]
    pub reduction: Reduction,
    #[serde(default = "d_cols")]
    pub columns: Columns,
    /// Probability that a draw uses the unconditional prompt (Show-o trains with 0.1; the paper's DPO kept it).
    #[serde(default)]
    pub cond_dropout: f64,
    #[serde(default = "d_sched")]
    pub schedule: Schedule,
    /// Score images under the classifier-free-guided distribution the sampler draws from,
    /// log_softmax((1+s)·cond − s·uncond), both branches with gradient (0: the conditional
    /// likelihood, as the paper's code). Set it to the sampler's `cfg_scale`: on the glyph world
    /// a round on the conditional likelihood raised the unguided score and lowered the guided
    /// one, flooding the canvas (README). Needs `columns: codebook`. Rows whose prompt is dropped
    /// (`cond_dropout`) reduce to the unconditional log-prob, at the cost of the second forward.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cfg_scale: f64,
}

// Unguided settings serialize as before, so reference caches written by older builds still match.
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl LogpConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.cfg_scale == 0.0 || self.columns == Columns::Codebook,
            "dpo.logp.cfg_scale needs `columns: codebook`: the sampler guides the image codes only"
        );
        anyhow::ensure!(
            self.cfg_scale.is_finite(),
            "dpo.logp.cfg_scale must be finite"
        );
        Ok(())
    }
}

fn d_mc() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_red() -> Reduction {
    Reduction::Sum
}
fn d_cols() -> Columns {
    Columns::Full
}
fn d_sched() -> Schedule {
    Schedule::Cosine
}

impl Default for LogpConfig {
    fn default() -> Self {
        Self {
            n_mc: 4,
            shared_mask: true,
            reduction: Reduction::Sum,
            columns: Columns::Full,
            cond_dropout: 0.0,
            schedule: Schedule::Cosine,
            cfg_scale: 0.0,
        }
    }
}

/// One masking draw for one image: masked positions and whether the prompt is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    pub mask: Vec<bool>,
    pub drop_prompt: bool,
}

fn draw(rng: &mut ChaCha8Rng, n: usize, cfg: &LogpConfig) -> Draw {
    let t: f32 = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    let ratio = cfg.schedule.ratio(t).max(0.0);
    let k = ((n as f32 * ratio).round_ties_even() as usize).clamp(1, n);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    let mut mask = vec![false; n];
    for &i in &idx[..k] {
        mask[i] = true;
    }
    let drop_prompt = cfg.cond_dropout > 0.0
        && ((rng.next_u32() >> 8) as f64 / (1u32 << 24) as f64) < cfg.cond_dropout;
    Draw { mask, drop_prompt }
}

/// The draws of pair `pair` in `epoch`: `n_mc` (chosen, rejected) draws, identical when `shared_mask`.
pub fn pair_draws(
    seed: u64,
    epoch: u64,
    pair: u64,
    n: usize,
    cfg: &LogpConfig,
) -> Vec<(Draw, Draw)> {
    let key = crate::generate::derive_seed(seed ^ 0xD0D0_5EED, epoch, pair);
    let mut rng = ChaCha8Rng::seed_from_u64(key);
    (0..cfg.n_mc)
        .map(|_| {
            let c = draw(&mut rng, n, cfg);
            let r = if cfg.shared_mask {
                c.clone()
            } else {
                draw(&mut rng, n, cfg)
            };
            (c, r)
        })
        .collect()
}

/// Log-likelihoods [R] of R images: `text` int64 [R, T] (prompt rows, already with dropout applied
/// by the caller when needed), `codes` int64 [R, N], `masks` bool [R, N]. Runs with gradient when
/// the caller does.
pub fn image_logps(
    model: &Showo,
    layout: &Layout,
    text: &Tensor,
    codes: &Tensor,
    masks: &Tensor,
    cfg: &LogpConfig,
) -> Tensor {
    let r = text.size()[0];
    let guided = cfg.cfg_scale != 0.0;
    // With guidance, the unconditional rows see the same masked image; one forward for both.
    let (text, codes_in, masks_in) = if guided {
        let unc = layout
            .uncond_text(text.device())
            .expand([r, layout.text_len], false);
        (
            Tensor::cat(&[text, &unc], 0),
            Tensor::cat(&[codes, codes], 0),
            Tensor::cat(&[masks, masks], 0),
        )
    } else {
        (
            text.shallow_clone(),
            codes.shallow_clone(),
            masks.shallow_clone(),
        )
    };
    let (ids, _) = layout.training_ids(&text, &codes_in, &masks_in);
    let hidden = model.hidden(&ids, &omni_attention_mask(&ids, &layout.sp));
    let n = layout.num_vq_tokens;
    let h = hidden.narrow(1, layout.text_len + 1, n);
    let k = model.cfg.codebook_size;
    let (logits, target) = match cfg.columns {
        Columns::Codebook => (
            model.logits_cols(&h, layout.sp.image_offset, k),
            codes.shallow_clone(),
        ),
        Columns::Full => (
            model.logits_cols(&h, 0, model.cfg.vocab_size),
            codes + layout.sp.image_offset,
        ),
    };
    let logits = if guided {
        logits.narrow(0, 0, r) * (1.0 + cfg.cfg_scale) - logits.narrow(0, r, r) * cfg.cfg_scale
    } else {
        logits
    };
    let lp = logits
        .log_softmax(-1, Kind::Float)
        .gather(2, &target.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let m = masks.to_kind(Kind::Float);
    let s = (lp * &m).sum_dim_intlist(-1, false, Kind::Float);
    match cfg.reduction {
        Reduction::Sum => s,
        Reduction::Mean => s / m.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0),
    }
}

/// A batch of pairs laid out for one forward: rows are [chosen draws..., rejected draws...]
/// (B·n_mc each), plus how to average them back to per-pair values.
pub struct PairBatch {
    pub text: Tensor,
    pub codes: Tensor,
    pub masks: Tensor,
    pub pairs: i64,
    pub n_mc: i64,
}

impl PairBatch {
    /// `prompt_text` [B, T] per pair, `chosen`/`rejected` codes [B, N], `draws[b]` from [`pair_draws`].
    pub fn new(
        layout: &Layout,
        prompt_text: &Tensor,
        chosen: &Tensor,
        rejected: &Tensor,
        draws: &[Vec<(Draw, Draw)>],
    ) -> Self {
        let b = draws.len() as i64;
        let n_mc = draws[0].len() as i64;
        let n = layout.num_vq_tokens;
        let dev = prompt_text.device();
        let uncond = layout.uncond_text(dev);
        let mut text_rows = Vec::new();
        let mut code_rows = Vec::new();
        let mut mask_flat = Vec::new();
        for side in 0..2 {
            for (i, d) in draws.iter().enumerate() {
                for (dc, dr) in d {
                    let dd = if side == 0 { dc } else { dr };
                    let t = if dd.drop_prompt {
                        uncond.get(0)
                    } else {
                        prompt_text.get(i as i64)
                    };
                    text_rows.push(t);
                    code_rows.push(if side == 0 {
                        chosen.get(i as i64)
                    } else {
                        rejected.get(i as i64)
                    });
                    mask_flat.extend(dd.mask.iter().map(|&x| x as u8));
                }
            }
        }
        let masks = Tensor::from_slice(&mask_flat)
            .view([2 * b * n_mc, n])
            .to_kind(Kind::Bool)
            .to_device(dev);
        Self {
            text: Tensor::stack(&text_rows, 0),
            codes: Tensor::stack(&code_rows, 0).to_device(dev),
            masks,
            pairs: b,
            n_mc,
        }
    }

    /// Per-pair (chosen, rejected) log-likelihoods [B] each, averaged over the draws.
    pub fn logps(&self, model: &Showo, layout: &Layout, cfg: &LogpConfig) -> (Tensor, Tensor) {
        let lp = image_logps(model, layout, &self.text, &self.codes, &self.masks, cfg)
            .view([2, self.pairs, self.n_mc])
            .mean_dim(-1, false, Kind::Float);
        (lp.get(0), lp.get(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_deterministic_shared_and_sized_like_show_o() {
        let cfg = LogpConfig {
            n_mc: 3,
            ..Default::default()
        };
        let a = pair_draws(1, 0, 5, 64, &cfg);
        assert_eq!(a, pair_draws(1, 0, 5, 64, &cfg));
        assert_ne!(a, pair_draws(1, 1, 5, 64, &cfg));
        for (c, r) in &a {
            assert_eq!(c, r);
            assert!(c.mask.iter().filter(|&&m| m).count() >= 1);
        }
        let ind = pair_draws(
            1,
            0,
            5,
            64,
            &LogpConfig {
                shared_mask: false,
                ..cfg
            },
        );
        assert!(ind.iter().any(|(c, r)| c != r));
    }

    #[test]
    fn guidance_needs_codebook_columns_and_unguided_keys_serialize_as_before() {
        let guided = LogpConfig {
            cfg_scale: 1.75,
            ..Default::default()
        };
        assert!(guided.validate().is_err(), "full columns with guidance");
        let ok = LogpConfig {
            columns: Columns::Codebook,
            ..guided
        };
        ok.validate().unwrap();
        assert!(serde_json::to_string(&ok).unwrap().contains("cfg_scale"));
        let plain = serde_json::to_string(&LogpConfig::default()).unwrap();
        assert!(!plain.contains("cfg_scale"), "{plain}");
    }

    #[test]
    fn guided_logp_is_the_samplers_cfg_distribution() {
        use tch::Device;
        let (model, layout) = crate::models::showo::tiny_random(3, crate::models::showo::TINY_1L);
        let text = Tensor::from_slice(&layout.text_ids(&[3, 4]))
            .view([1, layout.text_len])
            .expand([2, layout.text_len], false);
        let codes = Tensor::randint(12, [2, 16], (Kind::Int64, Device::Cpu));
        let all = Tensor::ones([2, 16], (Kind::Bool, Device::Cpu));
        // Everything masked and committed at one step: the trajectory's log-prob (written
        // independently for the guidance term) is the guided image log-likelihood.
        let commit = Tensor::zeros([2, 16], (Kind::Int64, Device::Cpu));
        let s = 1.75;
        let lcfg = |scale| LogpConfig {
            columns: Columns::Codebook,
            cfg_scale: scale,
            ..Default::default()
        };
        let guided = image_logps(&model, &layout, &text, &codes, &all, &lcfg(s));
        let want =
            crate::dpo::guidance::trajectory_logps(&model, &layout, &text, &codes, &commit, 1, s);
        let d = (&guided - &want).abs().max().double_value(&[]);
        assert!(d < 1e-4, "guided {guided:?} vs trajectory {want:?}");
        let plain = image_logps(&model, &layout, &text, &codes, &all, &lcfg(0.0));
        assert!((&guided - &plain).abs().max().double_value(&[]) > 1e-3);
        // The guided log-likelihood is differentiable (DPO trains through it).
        guided.sum(Kind::Float).backward();
        let g = crate::models::showo::grad_abs_sum(&model);
        assert!(g > 0.0);
    }
}
