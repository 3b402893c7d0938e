//! Online reward guidance with a real gradient. The paper's guidance term is a constant (no
//! gradient reaches the policy); here the policy samples its own images, a judge scores them, and a
//! REINFORCE term with a leave-one-out (RLOO) baseline pushes up the log-probability of the sampled
//! MaskGIT trajectory in proportion to the judge's P(yes) minus the mean of the other samples of the
//! same prompt.
//!
//! Trajectory log-probability: position p was committed at step s(p) with its final code, sampled
//! from the CFG-combined codebook distribution given the tokens committed before s(p). Replaying
//! the T states in one batch gives Σ_s Σ_{p: s(p)=s} log π(code_p | state_s) — exact for the
//! token values; the choice of which positions to commit (Gumbel-ranked confidence) is not part of it.
use crate::models::showo::{omni_attention_mask, Layout, Showo};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuideConfig {
    /// Weight of the guidance term (the paper's `reward_coef` slot).
    pub reward_coef: f64,
    /// Prompts sampled per guided step.
    #[serde(default = "d_prompts")]
    pub prompts_per_step: usize,
    /// Samples per prompt (≥ 2 for the leave-one-out baseline).
    #[serde(default = "d_samples")]
    pub samples_per_prompt: usize,
    /// Apply the term every k optimizer steps.
    #[serde(default = "d_every")]
    pub every: u64,
    /// Weight of the DPO loss (0: the guidance term alone, for ablations).
    #[serde(default = "d_one")]
    pub dpo_coef: f64,
    /// Replay this many of the T sampler states per trajectory, drawn uniformly each step, for an
    /// unbiased estimate of its log-probability at that fraction of the cost (0: all T).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replay_steps: usize,
    /// Weight of a KL penalty to the reference on the replayed states (exact, over the codebook,
    /// at the committed positions, per image token as the reward term): it holds the policy
    /// near the reference where the noisy reward gradient alone lets it drift (0: off).
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub kl_coef: f64,
}

impl GuideConfig {
    /// Settings checked before any sampling or training starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.every > 0,
            "dpo.guide.every must be positive (it is the step interval of the term)"
        );
        anyhow::ensure!(
            self.prompts_per_step > 0,
            "dpo.guide.prompts_per_step must be positive"
        );
        anyhow::ensure!(
            self.samples_per_prompt >= 2,
            "dpo.guide.samples_per_prompt must be at least 2 (leave-one-out baseline)"
        );
        for (name, v) in [
            ("reward_coef", self.reward_coef),
            ("dpo_coef", self.dpo_coef),
            ("kl_coef", self.kl_coef),
        ] {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "dpo.guide.{name} {v} must be finite and non-negative"
            );
        }
        Ok(())
    }

    /// How many of a `t`-step trajectory's states each step replays.
    pub fn replayed_states(&self, t: usize) -> usize {
        if self.replay_steps == 0 || self.replay_steps >= t {
            t
        } else {
            self.replay_steps
        }
    }
}

fn is_zero_f(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn d_prompts() -> usize {
    2
}
fn d_samples() -> usize {
    4
}
fn d_every() -> u64 {
    1
}
fn d_one() -> f64 {
    1.0
}

/// Log-probabilities [R] of sampled trajectories: `text` [R, T], `codes` [R, N], `commit` [R, N]
/// (the step each position was committed at, from the sampler), `steps` T, CFG scale `s`.
pub fn trajectory_logps(
    model: &Showo,
    layout: &Layout,
    text: &Tensor,
    codes: &Tensor,
    commit: &Tensor,
    steps: usize,
    cfg_scale: f64,
) -> Tensor {
    let all: Vec<i64> = (0..steps as i64).collect();
    let r = replay_states(layout, text, codes, commit, &all);
    r.trajectory_logps(&r.log_probs(model, layout, cfg_scale), steps)
}

/// The sampler states of R trajectories at the replayed steps, batched as R·t rows.
pub struct Replay {
    /// Image ids of each state (committed codes, the rest masked) [R·t, N].
    ids_img: Tensor,
    /// Prompt rows repeated per state [R·t, T_text].
    text_rows: Tensor,
    /// The codes, repeated per state [R·t, N, 1].
    targets: Tensor,
    /// 1 where a position was committed at that state, else 0 [R, t, N].
    committed: Tensor,
    r: i64,
    t: i64,
    n: i64,
}

/// Builds the replayed states: state s knows the positions committed before s; its targets are
/// those committed at s.
pub fn replay_states(
    layout: &Layout,
    text: &Tensor,
    codes: &Tensor,
    commit: &Tensor,
    replay: &[i64],
) -> Replay {
    let (r, n) = codes.size2().expect("[R, N]");
    let dev = codes.device();
    let t = replay.len() as i64;
    let s_idx = Tensor::from_slice(replay).to_device(dev).view([1, t, 1]);
    let c = commit.unsqueeze(1); // [R, 1, N]
    let known = c.lt_tensor(&s_idx); // [R, t, N]
    let committed = c.eq_tensor(&s_idx).to_kind(Kind::Float);
    let ids_img = (codes.unsqueeze(1) + layout.sp.image_offset).expand([r, t, n], false);
    let ids_img = ids_img
        .where_self(&known, &Tensor::from(layout.mask_id).to_device(dev))
        .reshape([r * t, n]);
    let text_rows = text
        .unsqueeze(1)
        .expand([r, t, layout.text_len], false)
        .reshape([r * t, layout.text_len]);
    let targets = codes
        .unsqueeze(1)
        .expand([r, t, n], false)
        .reshape([r * t, n, 1]);
    Replay {
        ids_img,
        text_rows,
        targets,
        committed,
        r,
        t,
        n,
    }
}

impl Replay {
    /// Codebook log-probabilities of the sampler's (CFG-combined) distribution at every image
    /// position of every state [R·t, N, K].
    pub fn log_probs(&self, model: &Showo, layout: &Layout, cfg_scale: f64) -> Tensor {
        let k = model.cfg.codebook_size;
        let n = self.n;
        let logits_of = |txt: &Tensor| -> Tensor {
            let ids = layout.sequence(txt, &self.ids_img);
            let h = model
                .hidden(&ids, &omni_attention_mask(&ids, &layout.sp))
                .narrow(1, layout.text_len + 1, n);
            model.logits_cols(&h, layout.sp.image_offset, k)
        };
        let logits = if cfg_scale != 0.0 {
            let unc = layout
                .uncond_text(self.ids_img.device())
                .expand([self.r * self.t, layout.text_len], false);
            logits_of(&self.text_rows) * (1.0 + cfg_scale) - logits_of(&unc) * cfg_scale
        } else {
            logits_of(&self.text_rows)
        };
        logits.log_softmax(-1, Kind::Float)
    }

    /// Σ over the replayed states of the committed codes' log-probs, scaled by T/t [R]: over all
    /// T states the trajectory's log-prob; over a uniformly drawn subset an unbiased estimate of it
    /// at t/T of the cost (the replay is the guidance term's expensive part: T states × 2 CFG
    /// branches per row).
    pub fn trajectory_logps(&self, log_probs: &Tensor, steps: usize) -> Tensor {
        let lp = log_probs.gather(2, &self.targets, false).squeeze_dim(-1);
        self.sum_committed(&lp, steps)
    }

    /// Σ over the replayed states and committed positions of KL(policy ‖ reference) between the
    /// two full codebook distributions, scaled by T/t [R]: the exact per-position KL (37 codes on
    /// the glyph world), which has less variance than the sampled-token estimate.
    pub fn kl(&self, policy_lp: &Tensor, ref_lp: &Tensor, steps: usize) -> Tensor {
        let kl = (policy_lp.exp() * (policy_lp - ref_lp)).sum_dim_intlist(
            [-1i64].as_slice(),
            false,
            Kind::Float,
        );
        self.sum_committed(&kl, steps)
    }

    /// A per-position value [R·t, N] summed over each trajectory's committed positions of the
    /// replayed states, scaled by T/t [R].
    fn sum_committed(&self, per_position: &Tensor, steps: usize) -> Tensor {
        (per_position.view([self.r, self.t, self.n]) * &self.committed).sum_dim_intlist(
            [1i64, 2].as_slice(),
            false,
            Kind::Float,
        ) * (steps as f64 / self.t as f64)
    }
}

/// RLOO advantages: reward minus the mean reward of the other samples of the same prompt; rows
/// come in consecutive groups of `group`.
pub fn rloo_advantages(rewards: &[f64], group: usize) -> Vec<f64> {
    rewards
        .chunks(group)
        .flat_map(|g| {
            let sum: f64 = g.iter().sum();
            let k = g.len() as f64;
            g.iter().map(move |&x| {
                if k > 1.0 {
                    x - (sum - x) / (k - 1.0)
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// The guidance loss −coef·mean(A·log π(trajectory))/N, to be added to the DPO loss.
pub fn guidance_loss(traj_logps: &Tensor, advantages: &[f64], n_tokens: i64, coef: f64) -> Tensor {
    let a = Tensor::from_slice(advantages)
        .to_kind(Kind::Float)
        .to_device(traj_logps.device());
    -(traj_logps * a).mean(Kind::Float) * (coef / n_tokens as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{sample, NoHook, SamplerConfig};

    #[test]
    fn rloo_baseline() {
        let a = rloo_advantages(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3);
        assert!((a[0] - 1.0).abs() < 1e-12 && (a[1] + 0.5).abs() < 1e-12);
        assert!(
            a[3..].iter().all(|x| x.abs() < 1e-12),
            "all equal → zero advantage"
        );
    }

    #[test]
    fn trajectory_logp_matches_sampling_and_has_gradient() {
        let (model, layout) = crate::models::showo::tiny_random(5, crate::models::showo::TINY_1L);
        let text = Tensor::from_slice(&layout.text_ids(&[3, 4])).view([1, layout.text_len]);
        let sc = SamplerConfig {
            steps: 5,
            ..Default::default()
        };
        let out = sample(
            &model,
            &layout,
            &text,
            &[0, 0, 0],
            &[1, 2, 3],
            &sc,
            &mut NoHook,
        )
        .unwrap();
        // Every step commits at least one position; all positions are accounted for.
        let c = &out.commit_step;
        assert!(bool::try_from(c.ge(0).logical_and(&c.lt(5)).all()).unwrap());
        for s in 0..5 {
            assert!(
                bool::try_from(c.eq(s).any()).unwrap(),
                "step {s} committed nothing"
            );
        }
        let texts = text.expand([3, layout.text_len], false);
        let lp = trajectory_logps(&model, &layout, &texts, &out.codes, c, 5, sc.cfg_scale);
        assert_eq!(lp.size(), vec![3]);
        assert!(bool::try_from(lp.lt(0.0).all()).unwrap());
        let adv = rloo_advantages(&[1.0, 0.0, 0.5], 3);
        let loss = guidance_loss(&lp, &adv, 16, 1.0);
        loss.backward();
        let g = crate::models::showo::grad_abs_sum(&model);
        assert!(g > 0.0, "guidance term has no gradient");

        // Replaying one state at a time, scaled by T, averages back to the full replay; replaying
        // every state is the full replay.
        let at = |replay: &[i64]| {
            let st = replay_states(&layout, &texts, &out.codes, c, replay);
            st.trajectory_logps(&st.log_probs(&model, &layout, 1.5), 5)
        };
        let parts: Vec<Tensor> = (0..5).map(|s| at(&[s])).collect();
        let mean = Tensor::stack(&parts, 0).mean_dim(0, false, Kind::Float);
        let full = trajectory_logps(&model, &layout, &texts, &out.codes, c, 5, 1.5);
        let d = (&mean - &full).abs().max().double_value(&[]);
        assert!(d < 1e-3, "mean of single-state replays differs by {d}");
        let every = at(&[4, 0, 2, 1, 3]);
        assert!((&every - &full).abs().max().double_value(&[]) < 1e-4);
        // A single state's estimate is not the full sum (the states differ).
        assert!((&parts[0] - &full).abs().max().double_value(&[]) > 1e-3);

        // KL penalty: zero against itself, with zero gradient there (KL's minimum); positive and
        // with a gradient against another model.
        let zero_grads = || {
            for mut v in model.vs.trainable_variables() {
                v.zero_grad();
            }
        };
        let st = replay_states(&layout, &texts, &out.codes, c, &[0, 1, 2, 3, 4]);
        let lp = st.log_probs(&model, &layout, 1.5);
        let same = tch::no_grad(|| st.log_probs(&model, &layout, 1.5));
        zero_grads();
        let self_kl = st.kl(&lp, &same, 5);
        assert!(self_kl.abs().max().double_value(&[]) < 1e-5);
        self_kl.sum(Kind::Float).backward();
        let g0 = crate::models::showo::grad_abs_sum(&model);
        let (other, _) = crate::models::showo::tiny_random(6, crate::models::showo::TINY_1L);
        let lq = tch::no_grad(|| st.log_probs(&other, &layout, 1.5));
        zero_grads();
        let lp = st.log_probs(&model, &layout, 1.5);
        let kl = st.kl(&lp, &lq, 5);
        assert!(bool::try_from(kl.gt(1e-3).all()).unwrap(), "KL {kl:?}");
        kl.sum(Kind::Float).backward();
        let g1 = crate::models::showo::grad_abs_sum(&model);
        assert!(g1 > 1e-3, "KL(p‖q) has gradient {g1}");
        // Zero up to float rounding, which sums over every weight: judged against the gradient
        // away from the minimum (the weights are random, drawn under a seed other tests share).
        // Measured: 2e-5 to 6e-5 at the minimum against 1,900 to 3,900 away from it.
        assert!(
            g0 < 1e-4 * g1,
            "KL(p‖p) has gradient {g0} (against another model: {g1})"
        );
    }
}
