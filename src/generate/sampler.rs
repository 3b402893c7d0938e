//! MaskGIT decoding for Show-o (spec-showo.md §4) with classifier-free guidance
//! `(1+s)·cond − s·uncond`, N candidates for several prompts in one batch, the text prefix
//! computed once per prompt, and a per-step hook that can inspect and prune candidates.
//!
//! Randomness is per candidate: each row draws its multinomial and Gumbel uniforms from its own
//! ChaCha8 stream seeded by [`derive_seed`], so an image depends only on its seed — not on batch
//! composition, pruning or device — and the Gumbel temperature starts afresh for every candidate
//! (the paper's code never resets it between candidates).
use super::schedule::Schedule;
use crate::models::showo::{Layout, PrefixCache, Showo};
use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha_compat::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// ChaCha8 lives in rand's `chacha` feature; alias it once here.
mod rand_chacha_compat {
    pub use rand::rngs::ChaCha8Rng;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// MaskGIT steps T (18 in the paper).
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// Guidance scale s (1.75 in the paper); 0 disables the unconditional pass.
    #[serde(default = "d_cfg")]
    pub cfg_scale: f64,
    /// Initial Gumbel-noise temperature on the confidences, annealed as `temp *= 1 − step/T`.
    #[serde(default = "d_temp")]
    pub temperature: f64,
    #[serde(default = "d_schedule")]
    pub schedule: Schedule,
}

fn d_steps() -> usize {
    18
}
fn d_cfg() -> f64 {
    1.75
}
fn d_temp() -> f64 {
    1.0
}
fn d_schedule() -> Schedule {
    Schedule::Cosine
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            steps: d_steps(),
            cfg_scale: d_cfg(),
            temperature: d_temp(),
            schedule: d_schedule(),
        }
    }
}

/// For a run of (prompt index, candidate index) rows grouped by prompt: the distinct prompt indices
/// in order, and for every row the position of its prompt in that list (the `prompt_of` of
/// [`sample`]).
pub fn group_rows(rows: &[(usize, usize)]) -> (Vec<usize>, Vec<usize>) {
    let mut uniq: Vec<usize> = rows.iter().map(|r| r.0).collect();
    uniq.dedup();
    let prompt_of = rows
        .iter()
        .map(|r| uniq.iter().position(|&u| u == r.0).unwrap_or(0))
        .collect();
    (uniq, prompt_of)
}

/// A reproducible per-image seed from a base seed, a prompt index and a candidate index (SplitMix64).
pub fn derive_seed(base: u64, prompt: u64, candidate: u64) -> u64 {
    let mut z = base
        ^ prompt.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ candidate
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            .rotate_left(31);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the hook sees after each step.
pub struct StepState<'a> {
    /// Step index (0-based) and total steps.
    pub step: usize,
    pub steps: usize,
    /// Original row indices of the live candidates, in batch order.
    pub live: &'a [usize],
    /// This step's complete prediction (every position sampled), codes [R, N].
    pub sampled: &'a Tensor,
    /// Tokens kept for the next step (codes; −1 where re-masked), [R, N].
    pub current: &'a Tensor,
    /// This step's most likely prediction: the tokens committed before this step, and the
    /// guided distribution's argmax at every position that was open when it began (where
    /// `sampled` holds a random draw, including the ones this step commits), [R, N].
    pub mode: &'a Tensor,
}

/// Which prediction a step's intermediate image shows (PARM's judges, `judge-data`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntermediateView {
    /// The step's complete sampled prediction, as Show-o's decoding (and the paper's PARM code)
    /// decodes it: positions still open hold one random draw, redrawn at the next step.
    #[default]
    Sampled,
    /// The tokens committed before the step with the argmax at the positions it drew: the
    /// same image without the draw's noise.
    Mode,
}

impl IntermediateView {
    pub fn codes<'a>(&self, s: &StepState<'a>) -> &'a Tensor {
        match self {
            Self::Sampled => s.sampled,
            Self::Mode => s.mode,
        }
    }
}

/// Called after every step; returns the positions (indices into `live`) of candidates to drop.
pub trait StepHook {
    fn on_step(&mut self, state: &StepState) -> Result<Vec<usize>>;
}

/// A hook that never prunes.
pub struct NoHook;
impl StepHook for NoHook {
    fn on_step(&mut self, _: &StepState) -> Result<Vec<usize>> {
        Ok(Vec::new())
    }
}

pub struct SampleOutput {
    /// Codes [rows, N]: the final prediction, or the last prediction before a row was pruned.
    pub codes: Tensor,
    /// For every row, the step after which it was pruned (None = decoded to the end).
    pub pruned_at: Vec<Option<usize>>,
    /// Candidate-steps actually computed (a pruned row stops costing).
    pub row_steps: usize,
    /// For every position, the step whose prediction gave its final code (int64 [rows, N]): the
    /// step it was committed at, or the last step computed for positions never committed.
    pub commit_step: Tensor,
}

/// Decodes `seeds.len()` images: row r belongs to prompt `prompt_of[r]` (an index into `text`,
/// int64 [P, T] from [`Layout::text_batch`]) and uses `seeds[r]`.
pub fn sample(
    model: &Showo,
    layout: &Layout,
    text: &Tensor,
    prompt_of: &[usize],
    seeds: &[u64],
    cfg: &SamplerConfig,
    hook: &mut dyn StepHook,
) -> Result<SampleOutput> {
    ensure!(prompt_of.len() == seeds.len(), "one seed per row");
    ensure!(!seeds.is_empty(), "nothing to sample");
    ensure!(cfg.steps > 0, "steps must be positive");
    let _guard = tch::no_grad_guard();
    let dev = model.device();
    let n = layout.num_vq_tokens;
    let k = model.cfg.codebook_size;
    let rows = seeds.len();
    let text = text.to_device(dev);
    let p = text.size()[0];
    ensure!(
        prompt_of.iter().all(|&i| (i as i64) < p),
        "prompt index out of range"
    );
    let use_cfg = cfg.cfg_scale != 0.0;

    // Text prefixes once per prompt (plus the shared unconditional row), then expanded to rows.
    let cond = model.prefix(&text, &layout.sp);
    let uncond = if use_cfg {
        Some(model.prefix(&layout.uncond_text(dev), &layout.sp))
    } else {
        None
    };
    let row_prompt =
        Tensor::from_slice(&prompt_of.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(dev);
    let build_cache = |sel: &Tensor| -> PrefixCache {
        let c = cond.select(sel);
        match &uncond {
            Some(u) => {
                let zeros = Tensor::zeros([sel.size()[0]], (Kind::Int64, dev));
                PrefixCache::cat(&[&c, &u.select(&zeros)])
            }
            None => c,
        }
    };

    let mut live: Vec<usize> = (0..rows).collect();
    let mut cache = build_cache(&row_prompt);
    let mut rngs: Vec<ChaCha8Rng> = seeds
        .iter()
        .map(|&s| ChaCha8Rng::seed_from_u64(s))
        .collect();
    let mut cur = Tensor::full([rows as i64, n], -1, (Kind::Int64, dev));
    let mut out = Tensor::zeros([rows as i64, n], (Kind::Int64, dev));
    let mut commit = Tensor::full([rows as i64, n], -1, (Kind::Int64, dev));
    let mut pruned_at = vec![None; rows];
    let mut row_steps = 0usize;
    let mut temp = cfg.temperature;
    let soi = Tensor::full([1, 1], layout.sp.soi, (Kind::Int64, dev));
    let eoi = Tensor::full([1, 1], layout.sp.eoi, (Kind::Int64, dev));

    for step in 0..cfg.steps {
        let r = live.len() as i64;
        row_steps += live.len();
        // Image segment ids: soi, codes (or [MASK]), eoi.
        let img_ids = (&cur + layout.sp.image_offset)
            .where_self(&cur.ge(0), &Tensor::from(layout.mask_id).to_device(dev));
        let seg = Tensor::cat(
            &[
                soi.expand([r, 1], false),
                img_ids,
                eoi.expand([r, 1], false),
            ],
            1,
        );
        let seg = if use_cfg {
            Tensor::cat(&[&seg, &seg], 0)
        } else {
            seg
        };
        let hidden = model.image_hidden(&seg, &cache).narrow(1, 1, n);
        let logits = model.logits_cols(&hidden, layout.sp.image_offset, k);
        let logits = if use_cfg {
            let c = logits.narrow(0, 0, r);
            let u = logits.narrow(0, r, r);
            c * (1.0 + cfg.cfg_scale) - u * cfg.cfg_scale
        } else {
            logits
        };
        let probs = logits.softmax(-1, Kind::Float); // [R, N, K]

        // Per-row uniforms: N for the multinomial draw, then N for the Gumbel noise.
        let mut u_samp = Vec::with_capacity((r * n) as usize);
        let mut u_gumb = Vec::with_capacity((r * n) as usize);
        for &row in &live {
            let g = &mut rngs[row];
            for _ in 0..n {
                u_samp.push(unit_f32(g));
            }
            for _ in 0..n {
                u_gumb.push(unit_f32(g));
            }
        }
        let u_samp = Tensor::from_slice(&u_samp).view([r, n, 1]).to_device(dev);
        let u_gumb = Tensor::from_slice(&u_gumb).view([r, n]).to_device(dev);

        // Inverse-CDF multinomial: the first category whose cumulative mass exceeds u·total.
        let cdf = probs.cumsum(-1, Kind::Float);
        let target = &u_samp * cdf.narrow(2, k - 1, 1);
        let samp = target
            .searchsorted(&cdf, false, true, "right", None::<Tensor>)
            .squeeze_dim(-1)
            .clamp_max(k - 1);
        let unknown = cur.lt(0);
        let samp = samp.where_self(&unknown, &cur);

        let ratio = (step as f32 + 1.0) / cfg.steps as f32;
        let mr = cfg.schedule.ratio(ratio);
        let conf_p = probs.gather(2, &samp.unsqueeze(-1), false).squeeze_dim(-1);
        let conf_p = conf_p.where_self(&unknown, &Tensor::from(f32::MAX).to_device(dev));
        let cap = (n as f32 * mr).floor() as i64;
        let mask_len = (unknown.sum_dim_intlist(-1, true, Kind::Int64) - 1)
            .clamp_max(cap)
            .clamp_min(1);
        temp *= 1.0 - ratio as f64;
        let gumbel = -(-(u_gumb.clamp_min(1e-20).log())).clamp_min(1e-20).log();
        let conf = conf_p.clamp_min(1e-20).log() + gumbel * temp;
        let (sorted, _) = conf.sort(-1, false);
        let cut = sorted.gather(1, &mask_len, false);
        let remask = conf.lt_tensor(&cut);
        let next = Tensor::full_like(&samp, -1).where_self(&remask, &samp);

        let live_idx =
            Tensor::from_slice(&live.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(dev);
        out = out.index_copy(0, &live_idx, &samp);
        // Positions committed now (and, for rows that stop here, every position still open).
        let newly = unknown.logical_and(&next.ge(0));
        let step_t = Tensor::full_like(&next, step as i64);
        let prev = commit.index_select(0, &live_idx);
        commit = commit.index_copy(0, &live_idx, &step_t.where_self(&newly, &prev));
        let mode = probs.argmax(-1, false).where_self(&unknown, &cur);
        let drop = hook.on_step(&StepState {
            step,
            steps: cfg.steps,
            live: &live,
            sampled: &samp,
            current: &next,
            mode: &mode,
        })?;
        cur = next;
        if !drop.is_empty() && step + 1 < cfg.steps {
            let keep: Vec<usize> = (0..live.len()).filter(|i| !drop.contains(i)).collect();
            for &i in &drop {
                if let Some(&row) = live.get(i) {
                    pruned_at[row] = Some(step);
                }
            }
            let dropped: Vec<i64> = drop
                .iter()
                .filter_map(|&i| live.get(i))
                .map(|&r| r as i64)
                .collect();
            if !dropped.is_empty() {
                let d = Tensor::from_slice(&dropped).to_device(dev);
                let c = commit.index_select(0, &d);
                let fill = Tensor::full_like(&c, step as i64).where_self(&c.lt(0), &c);
                commit = commit.index_copy(0, &d, &fill);
            }
            if keep.is_empty() {
                break;
            }
            let keep_t = Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>())
                .to_device(dev);
            cur = cur.index_select(0, &keep_t);
            live = keep.iter().map(|&i| live[i]).collect();
            let rows_t = Tensor::from_slice(
                &live
                    .iter()
                    .map(|&i| prompt_of[i] as i64)
                    .collect::<Vec<_>>(),
            )
            .to_device(dev);
            cache = build_cache(&rows_t);
        }
    }
    // Positions still open after the last step take that step's prediction.
    let last = Tensor::full_like(&commit, cfg.steps as i64 - 1);
    let commit = last.where_self(&commit.lt(0), &commit);
    Ok(SampleOutput {
        codes: out.to_device(tch::Device::Cpu),
        pruned_at,
        row_steps,
        commit_step: commit.to_device(tch::Device::Cpu),
    })
}

/// A uniform f32 in [0, 1) from the top 24 bits (as torch's uniform_ on float).
pub(crate) fn unit_f32(g: &mut ChaCha8Rng) -> f32 {
    (g.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (Showo, Layout) {
        crate::models::showo::tiny_random(
            7,
            r#"{"llm_vocab_size":20,"codebook_size":12,"num_vq_tokens":16,"vocab_size":43,
               "hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":2,
               "max_text_len":6}"#,
        )
    }

    fn texts(layout: &Layout, prompts: &[&[i64]]) -> Tensor {
        let rows: Vec<i64> = prompts.iter().flat_map(|p| layout.text_ids(p)).collect();
        Tensor::from_slice(&rows).view([prompts.len() as i64, layout.text_len])
    }

    #[test]
    fn cached_batched_sampler_equals_the_literal_loop() {
        let (model, layout) = tiny();
        let text = texts(&layout, &[&[3, 4, 5], &[7], &[]]);
        let seeds = [11u64, 12, 13];
        for scale in [1.75, 0.0] {
            let cfg = SamplerConfig {
                steps: 6,
                cfg_scale: scale,
                ..Default::default()
            };
            let got = sample(
                &model,
                &layout,
                &text,
                &[0, 1, 2],
                &seeds,
                &cfg,
                &mut NoHook,
            )
            .unwrap();
            let want = super::super::literal::sample_literal(&model, &layout, &text, &seeds, &cfg)
                .unwrap();
            let eq = got.codes.eq_tensor(&want).all().int64_value(&[]);
            assert_eq!(eq, 1, "cfg {scale}: {:?} vs {:?}", got.codes, want);
        }
    }

    struct Check {
        known: Option<Tensor>,
        calls: usize,
        drop_at: Option<(usize, usize)>,
        /// Open positions where the mode view differs from the sampled one.
        mode_differs: i64,
    }
    impl StepHook for Check {
        fn on_step(&mut self, s: &StepState) -> Result<Vec<usize>> {
            // Every token known before this step is still known, with the same code.
            if let Some(prev) = &self.known {
                if prev.size() == s.current.size() {
                    let was = prev.ge(0);
                    assert!(
                        bool::try_from(s.current.ge(0).logical_or(&was.logical_not()).all())
                            .unwrap()
                    );
                    let same = s
                        .current
                        .eq_tensor(prev)
                        .logical_or(&was.logical_not())
                        .all();
                    assert!(bool::try_from(same).unwrap());
                    // The mode view keeps the committed tokens; it differs from the sampled
                    // view only where the sampler drew at random.
                    let kept = s.mode.eq_tensor(prev).logical_or(&was.logical_not()).all();
                    assert!(bool::try_from(kept).unwrap());
                    self.mode_differs += s
                        .mode
                        .ne_tensor(s.sampled)
                        .logical_and(&was.logical_not())
                        .sum(Kind::Int64)
                        .int64_value(&[]);
                }
            }
            assert!(bool::try_from(s.mode.ge(0).all()).unwrap());
            assert!(
                bool::try_from(s.sampled.ge(0).all()).unwrap(),
                "prediction complete"
            );
            self.known = Some(s.current.copy());
            self.calls += 1;
            Ok(match self.drop_at {
                Some((step, pos)) if step == s.step => {
                    self.known = None;
                    vec![pos]
                }
                _ => vec![],
            })
        }
    }

    #[test]
    fn properties_seeds_batches_and_pruning() {
        let (model, layout) = tiny();
        let text = texts(&layout, &[&[3, 4], &[9, 9, 2]]);
        let cfg = SamplerConfig {
            steps: 8,
            ..Default::default()
        };
        let mut hook = Check {
            known: None,
            calls: 0,
            drop_at: None,
            mode_differs: 0,
        };
        let a = sample(
            &model,
            &layout,
            &text,
            &[0, 0, 1, 1],
            &[1, 2, 3, 4],
            &cfg,
            &mut hook,
        )
        .unwrap();
        assert_eq!(hook.calls, 8);
        assert_eq!(a.row_steps, 32);
        assert!(
            hook.mode_differs > 0,
            "the mode view never differed from the draw"
        );
        let k = model.cfg.codebook_size;
        assert!(bool::try_from(a.codes.ge(0).logical_and(&a.codes.lt(k)).all()).unwrap());
        // Same seed, same image — alone or in another batch.
        let b = sample(
            &model,
            &layout,
            &text.narrow(0, 1, 1),
            &[0],
            &[3],
            &cfg,
            &mut NoHook,
        )
        .unwrap();
        assert!(bool::try_from(b.codes.get(0).eq_tensor(&a.codes.get(2)).all()).unwrap());
        // Different seeds differ.
        assert!(!bool::try_from(a.codes.get(0).eq_tensor(&a.codes.get(1)).all()).unwrap());
        // Pruning row 1 after step 2 leaves the other rows unchanged and saves its steps.
        let mut hook = Check {
            known: None,
            calls: 0,
            drop_at: Some((2, 1)),
            mode_differs: 0,
        };
        let c = sample(
            &model,
            &layout,
            &text,
            &[0, 0, 1, 1],
            &[1, 2, 3, 4],
            &cfg,
            &mut hook,
        )
        .unwrap();
        assert_eq!(c.pruned_at, vec![None, Some(2), None, None]);
        assert_eq!(c.row_steps, 32 - 5);
        for r in [0, 2, 3] {
            assert!(bool::try_from(c.codes.get(r).eq_tensor(&a.codes.get(r)).all()).unwrap());
        }
    }
}
