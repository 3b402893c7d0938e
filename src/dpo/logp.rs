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
    /// With `cfg_scale`, hold the unconditional branch fixed: its logits enter the guided
    /// distribution without gradient (one extra no-grad forward instead of a trained one), so
    /// only the conditional branch moves the sampler's distribution. Training both lets a chosen
    /// image's log-prob rise by lowering the unconditional logits on it, which guidance then
    /// turns into fewer glyphs (README, "The SFT term alone under the guided likelihood").
    #[serde(default, skip_serializing_if = "is_false")]
    pub detach_uncond: bool,
    /// T > 0: score each image by its sampler trajectory instead of random masks. A draw picks
    /// one of the T MaskGIT steps; the image enters as the sampler saw it at that step (codes
    /// committed earlier known, the rest masked) and the codes committed at that step are scored,
    /// times T: an unbiased estimate of the log-probability of the sampled trajectory, the
    /// quantity the sampler's distribution actually assigns (random masks do not follow the
    /// sampler's confidence order). Needs each pair's commit steps (`chosen_commit`, written by
    /// pair building) and T equal to the sampler's steps. 0: random masks (the paper's).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub trajectory_steps: usize,
}

fn is_zero_usize(x: &usize) -> bool {
    *x == 0
}

fn is_false(b: &bool) -> bool {
    !*b
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
        anyhow::ensure!(
            !self.detach_uncond || self.cfg_scale != 0.0,
            "dpo.logp.detach_uncond needs cfg_scale: without guidance there is no unconditional branch"
        );
        anyhow::ensure!(
            self.trajectory_steps == 0
                || (self.reduction == Reduction::Sum && self.columns == Columns::Codebook),
            "dpo.logp.trajectory_steps needs `reduction: sum` and `columns: codebook` (the sampler's \
             distribution over a trajectory's codes)"
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
            detach_uncond: false,
            trajectory_steps: 0,
        }
    }
}

/// One masking draw for one image: masked positions and whether the prompt is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// Masked positions (random-mask likelihood; empty for a trajectory draw).
    pub mask: Vec<bool>,
    pub drop_prompt: bool,
    /// The sampler step replayed (trajectory likelihood).
    pub step: Option<usize>,
}

fn draw(rng: &mut ChaCha8Rng, n: usize, cfg: &LogpConfig) -> Draw {
    // A trajectory draw picks a sampler step; a masked one a ratio and positions. Either way the
    // prompt-dropout decision comes last from the same stream.
    let (mask, step) = if cfg.trajectory_steps > 0 {
        let step = (rng.next_u64() % cfg.trajectory_steps as u64) as usize;
        (vec![], Some(step))
    } else {
        (random_mask(rng, n, cfg), None)
    };
    let drop_prompt = cfg.cond_dropout > 0.0
        && ((rng.next_u32() >> 8) as f64 / (1u32 << 24) as f64) < cfg.cond_dropout;
    Draw {
        mask,
        drop_prompt,
        step,
    }
}

/// Show-o's masking: a ratio from the schedule, then exactly k ≥ 1 shuffled positions.
fn random_mask(rng: &mut ChaCha8Rng, n: usize, cfg: &LogpConfig) -> Vec<bool> {
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
    mask
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
    image_logps_weighted(model, layout, text, codes, masks, None, cfg)
}

/// [`image_logps`] summing `weights` [R, N] (float) times the log-probs instead of the masked
/// positions: a trajectory draw scores only the codes committed at its step, scaled by T.
pub fn image_logps_weighted(
    model: &Showo,
    layout: &Layout,
    text: &Tensor,
    codes: &Tensor,
    masks: &Tensor,
    weights: Option<&Tensor>,
    cfg: &LogpConfig,
) -> Tensor {
    let r = text.size()[0];
    let s = cfg.cfg_scale;
    let logits = if s == 0.0 {
        masked_logits(model, layout, text, codes, masks, cfg.columns)
    } else {
        let unc = layout
            .uncond_text(text.device())
            .expand([r, layout.text_len], false);
        if cfg.detach_uncond {
            let cond = masked_logits(model, layout, text, codes, masks, cfg.columns);
            let uncond =
                tch::no_grad(|| masked_logits(model, layout, &unc, codes, masks, cfg.columns));
            cond * (1.0 + s) - uncond * s
        } else {
            // The unconditional rows see the same masked image; one forward for both.
            let both = masked_logits(
                model,
                layout,
                &Tensor::cat(&[text, &unc], 0),
                &Tensor::cat(&[codes, codes], 0),
                &Tensor::cat(&[masks, masks], 0),
                cfg.columns,
            );
            both.narrow(0, 0, r) * (1.0 + s) - both.narrow(0, r, r) * s
        }
    };
    let target = match cfg.columns {
        Columns::Codebook => codes.shallow_clone(),
        Columns::Full => codes + layout.sp.image_offset,
    };
    let lp = logits
        .log_softmax(-1, Kind::Float)
        .gather(2, &target.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let m = match weights {
        Some(w) => w.shallow_clone(),
        None => masks.to_kind(Kind::Float),
    };
    let s = (lp * &m).sum_dim_intlist(-1, false, Kind::Float);
    match cfg.reduction {
        Reduction::Sum => s,
        Reduction::Mean => s / m.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0),
    }
}

/// Logits [R, N, C] at the image positions of the t2i training layout, over the codebook or the
/// full vocabulary.
fn masked_logits(
    model: &Showo,
    layout: &Layout,
    text: &Tensor,
    codes: &Tensor,
    masks: &Tensor,
    columns: Columns,
) -> Tensor {
    let (ids, _) = layout.training_ids(text, codes, masks);
    let hidden = model.hidden(&ids, &omni_attention_mask(&ids, &layout.sp));
    let n = layout.num_vq_tokens;
    let h = hidden.narrow(1, layout.text_len + 1, n);
    match columns {
        Columns::Codebook => model.logits_cols(&h, layout.sp.image_offset, model.cfg.codebook_size),
        Columns::Full => model.logits_cols(&h, 0, model.cfg.vocab_size),
    }
}

/// A batch of pairs laid out for one forward: rows are [chosen draws..., rejected draws...]
/// (B·n_mc each), plus how to average them back to per-pair values.
pub struct PairBatch {
    pub text: Tensor,
    pub codes: Tensor,
    pub masks: Tensor,
    /// Per-position weights of trajectory draws [rows, N] (None: the masked positions).
    pub weights: Option<Tensor>,
    pub pairs: i64,
    pub n_mc: i64,
}

/// The sampler steps at which each chosen and rejected code was committed, [B, N] int64 each:
/// what trajectory draws need.
pub struct Commits<'a> {
    pub chosen: &'a Tensor,
    pub rejected: &'a Tensor,
    /// The sampler's T.
    pub steps: usize,
}

impl PairBatch {
    /// `prompt_text` [B, T] per pair, `chosen`/`rejected` codes [B, N], `draws[b]` from
    /// [`pair_draws`]; `commits` for trajectory draws.
    pub fn new(
        layout: &Layout,
        prompt_text: &Tensor,
        chosen: &Tensor,
        rejected: &Tensor,
        draws: &[Vec<(Draw, Draw)>],
        commits: Option<&Commits>,
    ) -> anyhow::Result<Self> {
        let b = draws.len() as i64;
        let n_mc = draws[0].len() as i64;
        let n = layout.num_vq_tokens;
        let dev = prompt_text.device();
        let uncond = layout.uncond_text(dev);
        let commit_rows = |t: &Tensor| -> anyhow::Result<Vec<Vec<i64>>> {
            let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Int64);
            (0..b)
                .map(|i| Ok(Vec::<i64>::try_from(t.get(i))?))
                .collect()
        };
        let commit = match commits {
            Some(c) => Some((commit_rows(c.chosen)?, commit_rows(c.rejected)?, c.steps)),
            None => None,
        };
        let mut text_rows = Vec::new();
        let mut code_rows = Vec::new();
        let mut mask_flat = Vec::new();
        let mut weight_flat: Vec<f32> = Vec::new();
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
                    match (dd.step, &commit) {
                        (None, _) => mask_flat.extend(dd.mask.iter().map(|&x| x as u8)),
                        (Some(s), Some((cc, rc, steps))) => {
                            let row = if side == 0 { &cc[i] } else { &rc[i] };
                            let s = s as i64;
                            // The sampler at step s: earlier commits known, the rest masked;
                            // the codes committed at s are the ones it drew there.
                            mask_flat.extend(row.iter().map(|&c| (c >= s) as u8));
                            weight_flat.extend(row.iter().map(|&c| {
                                if c == s {
                                    *steps as f32
                                } else {
                                    0.0
                                }
                            }));
                        }
                        (Some(_), None) => {
                            anyhow::bail!("a trajectory draw needs the pairs' commit steps")
                        }
                    }
                }
            }
        }
        let rows = 2 * b * n_mc;
        let masks = Tensor::from_slice(&mask_flat)
            .view([rows, n])
            .to_kind(Kind::Bool)
            .to_device(dev);
        let weights = if weight_flat.is_empty() {
            None
        } else {
            anyhow::ensure!(
                weight_flat.len() as i64 == rows * n,
                "trajectory and masked draws mixed in one batch"
            );
            Some(
                Tensor::from_slice(&weight_flat)
                    .view([rows, n])
                    .to_device(dev),
            )
        };
        Ok(Self {
            text: Tensor::stack(&text_rows, 0),
            codes: Tensor::stack(&code_rows, 0).to_device(dev),
            masks,
            weights,
            pairs: b,
            n_mc,
        })
    }

    /// Per-pair (chosen, rejected) log-likelihoods [B] each, averaged over the draws.
    pub fn logps(&self, model: &Showo, layout: &Layout, cfg: &LogpConfig) -> (Tensor, Tensor) {
        let lp = image_logps_weighted(
            model,
            layout,
            &self.text,
            &self.codes,
            &self.masks,
            self.weights.as_ref(),
            cfg,
        )
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
    fn detached_uncond_keeps_the_value_and_drops_the_unconditional_gradient() {
        use tch::Device;
        let (model, layout) = crate::models::showo::tiny_random(5, crate::models::showo::TINY_1L);
        let text = Tensor::from_slice(&layout.text_ids(&[3, 4]))
            .view([1, layout.text_len])
            .expand([2, layout.text_len], false);
        let codes = Tensor::randint(12, [2, 16], (Kind::Int64, Device::Cpu));
        let mask = Tensor::rand([2, 16], (Kind::Float, Device::Cpu)).lt(0.6);
        let lcfg = |detach| LogpConfig {
            columns: Columns::Codebook,
            cfg_scale: 1.75,
            detach_uncond: detach,
            ..Default::default()
        };
        let unc = layout
            .uncond_text(Device::Cpu)
            .expand([2, layout.text_len], false);
        let cond_logits =
            || masked_logits(&model, &layout, &text, &codes, &mask, Columns::Codebook);
        // The gradient of the guided log-prob with respect to the model, computed by hand:
        // through the conditional logits only, scaled by 1 + s.
        let vars = crate::train::grad::trainable_vars(&model.vs);
        let grads = |lp: Tensor| {
            crate::train::grad::zero_grad(&vars);
            lp.sum(Kind::Float).backward();
            vars.iter().map(|v| v.grad().copy()).collect::<Vec<_>>()
        };
        let both = image_logps(&model, &layout, &text, &codes, &mask, &lcfg(false));
        let det = image_logps(&model, &layout, &text, &codes, &mask, &lcfg(true));
        assert!((&both - &det).abs().max().double_value(&[]) < 1e-5);
        let g_det = grads(det);
        let g_both = grads(both);
        // Same value with the unconditional logits as a constant: only the conditional branch
        // carries gradient.
        let u =
            tch::no_grad(|| masked_logits(&model, &layout, &unc, &codes, &mask, Columns::Codebook));
        let by_hand = (cond_logits() * 2.75 - u * 1.75)
            .log_softmax(-1, Kind::Float)
            .gather(2, &codes.unsqueeze(-1), false)
            .squeeze_dim(-1)
            * mask.to_kind(Kind::Float);
        let g_hand = grads(by_hand.sum_dim_intlist(-1, false, Kind::Float));
        let diff = |a: &[Tensor], b: &[Tensor]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs().max().double_value(&[]))
                .fold(0.0, f64::max)
        };
        assert!(diff(&g_det, &g_hand) < 1e-5);
        assert!(
            diff(&g_det, &g_both) > 1e-4,
            "training both branches differs"
        );
        assert!(lcfg(true).validate().is_ok());
        let unguided = LogpConfig {
            detach_uncond: true,
            ..Default::default()
        };
        assert!(unguided.validate().is_err());
        let plain = serde_json::to_string(&lcfg(false)).unwrap();
        assert!(!plain.contains("detach_uncond"), "{plain}");
    }

    #[test]
    fn trajectory_draws_over_every_step_give_the_samplers_trajectory_logprob() {
        use tch::Device;
        let (model, layout) = crate::models::showo::tiny_random(4, crate::models::showo::TINY_1L);
        let steps = 5usize;
        let text = Tensor::from_slice(&layout.text_ids(&[3, 4]))
            .view([1, layout.text_len])
            .expand([2, layout.text_len], false);
        let chosen = Tensor::randint(12, [2, 16], (Kind::Int64, Device::Cpu));
        let rejected = Tensor::randint(12, [2, 16], (Kind::Int64, Device::Cpu));
        let cc = Tensor::randint(steps as i64, [2, 16], (Kind::Int64, Device::Cpu));
        let rc = Tensor::randint(steps as i64, [2, 16], (Kind::Int64, Device::Cpu));
        let cfg = LogpConfig {
            columns: Columns::Codebook,
            cfg_scale: 1.75,
            trajectory_steps: steps,
            n_mc: steps,
            ..Default::default()
        };
        cfg.validate().unwrap();
        // One draw per step: the mean of T × (that step's term) is the sum over the steps.
        let every: Vec<(Draw, Draw)> = (0..steps)
            .map(|s| {
                let d = Draw {
                    mask: vec![],
                    drop_prompt: false,
                    step: Some(s),
                };
                (d.clone(), d)
            })
            .collect();
        let draws = vec![every.clone(), every];
        let commits = Commits {
            chosen: &cc,
            rejected: &rc,
            steps,
        };
        let batch =
            PairBatch::new(&layout, &text, &chosen, &rejected, &draws, Some(&commits)).unwrap();
        let (lc, lr) = batch.logps(&model, &layout, &cfg);
        let traj = |codes: &Tensor, commit: &Tensor| {
            crate::dpo::guidance::trajectory_logps(
                &model, &layout, &text, codes, commit, steps, 1.75,
            )
        };
        let (wc, wr) = (traj(&chosen, &cc), traj(&rejected, &rc));
        let d = (&lc - &wc)
            .abs()
            .max()
            .double_value(&[])
            .max((&lr - &wr).abs().max().double_value(&[]));
        assert!(
            d < 1e-3,
            "pair batch {lc:?} {lr:?} vs trajectory {wc:?} {wr:?}"
        );
        // Random draws pick one step each, from the seed; without commit steps they are refused.
        let rnd = pair_draws(1, 0, 0, 16, &cfg);
        assert!(rnd.iter().all(|(c, r)| c.step.is_some() && c == r));
        assert!(rnd.iter().any(|(c, _)| c.step != rnd[0].0.step));
        assert!(PairBatch::new(&layout, &text, &chosen, &rejected, &draws, None).is_err());
        let bad = LogpConfig {
            reduction: Reduction::Mean,
            ..cfg
        };
        assert!(bad.validate().is_err());
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
