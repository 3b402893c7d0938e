//! Preference losses on sequence log-likelihoods: sigmoid DPO, IPO, hinge (SLiC), robust DPO
//! (Chowdhury et al. 2024), label-smoothed cDPO, plus an optional SFT (NLL of chosen) term.
//!
//! All losses are functions of the log-ratio margin
//! `h = (log π(c) − log π(r)) − (log π_ref(c) − log π_ref(r))`, one value per pair:
//!
//! | kind      | per-pair loss                                                        |
//! |-----------|----------------------------------------------------------------------|
//! | `sigmoid` | −logσ(βh)                                                            |
//! | `ipo`     | (h − 1/(2β))²                                                        |
//! | `hinge`   | relu(1 − βh)                                                         |
//! | `robust`  | ((1−ε)(−logσ(βh)) − ε(−logσ(−βh))) / (1−2ε)                          |
//! | `cdpo`    | (1−ε)(−logσ(βh)) + ε(−logσ(−βh))                                     |
//!
//! with ε = `label_smoothing`. The total is `mean(loss) + sft_coef · mean(nll_chosen)`, where the
//! chosen NLL is whatever the caller passes (sum or per-token mean over the scored tokens). Metric
//! names follow TRL's `DPOTrainer` (`rewards/chosen`, `rewards/margins`, ...).
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which preference loss to apply to the margin `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Original DPO: −logσ(βh).
    #[default]
    Sigmoid,
    /// IPO: (h − 1/(2β))², β playing the role of τ.
    Ipo,
    /// SLiC / RSO hinge: relu(1 − βh).
    Hinge,
    /// Robust DPO, unbiased under label flips at rate ε = `label_smoothing` ∈ [0, 0.5).
    Robust,
    /// Conservative DPO: binary cross-entropy with smoothed labels, ε ∈ [0, 0.5).
    Cdpo,
}

impl LossKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LossKind::Sigmoid => "sigmoid",
            LossKind::Ipo => "ipo",
            LossKind::Hinge => "hinge",
            LossKind::Robust => "robust",
            LossKind::Cdpo => "cdpo",
        }
    }
}

fn default_beta() -> f64 {
    // Seed code (scripts/dpo.yaml:79); the paper does not state β.
    0.1
}

/// The loss section of a DPO recipe (YAML keys `kind`, `beta`, `label_smoothing`, `sft_coef`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    #[serde(default)]
    pub kind: LossKind,
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// ε: label-flip rate for `robust`, label smoothing for `cdpo`; must be 0 for other kinds.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Weight of the NLL-of-chosen term (RPO-style); 0 disables it.
    #[serde(default)]
    pub sft_coef: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::Sigmoid,
            beta: default_beta(),
            label_smoothing: 0.0,
            sft_coef: 0.0,
        }
    }
}

impl LossConfig {
    /// Rejects values that would silently do nothing or blow up (ε = 0.5 divides by zero in `robust`).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.beta.is_finite() && self.beta > 0.0,
            "loss.beta must be finite and > 0, got {}",
            self.beta
        );
        ensure!(
            self.sft_coef.is_finite() && self.sft_coef >= 0.0,
            "loss.sft_coef must be finite and >= 0, got {}",
            self.sft_coef
        );
        let ls = self.label_smoothing;
        match self.kind {
            LossKind::Robust | LossKind::Cdpo => ensure!(
                (0.0..0.5).contains(&ls),
                "loss.label_smoothing must be in [0, 0.5) for kind '{}', got {ls}",
                self.kind.as_str()
            ),
            LossKind::Sigmoid | LossKind::Ipo | LossKind::Hinge => {
                if ls != 0.0 {
                    bail!(
                        "loss.label_smoothing = {ls} has no effect with kind '{}' (use kind 'cdpo' or 'robust')",
                        self.kind.as_str()
                    )
                }
            }
        }
        Ok(())
    }
}

/// Sequence log-likelihoods of one batch of pairs, each a 1-D tensor [B]. The reference ones are
/// treated as constants (detached here even if the caller forgot).
pub struct PairLogps<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: &'a Tensor,
    pub ref_chosen: &'a Tensor,
    pub ref_rejected: &'a Tensor,
}

/// Detached batch statistics, named as TRL logs them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoMetrics {
    /// Total loss (preference + SFT).
    pub loss: f64,
    /// Mean preference loss alone.
    pub pref_loss: f64,
    /// Mean chosen NLL as passed by the caller (0 when the SFT term is off).
    pub sft_loss: f64,
    /// mean β(log π(c) − log π_ref(c)).
    pub rewards_chosen: f64,
    /// mean β(log π(r) − log π_ref(r)).
    pub rewards_rejected: f64,
    /// Fraction of pairs whose chosen reward is strictly greater than the rejected one.
    pub rewards_accuracies: f64,
    /// mean (chosen reward − rejected reward) = mean βh.
    pub rewards_margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

impl DpoMetrics {
    /// `(name, value)` pairs with TRL's metric names, for the logger.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("loss", self.loss),
            ("loss/pref", self.pref_loss),
            ("loss/sft", self.sft_loss),
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
        ]
    }
}

/// Result of [`dpo_loss`]: the scalar to backpropagate, its separate terms (still attached to the
/// graph, so tests and diagnostics can check each has a gradient) and detached metrics.
pub struct DpoLossOutput {
    /// Scalar: `pref_loss + sft_coef · sft_loss`.
    pub loss: Tensor,
    /// Per-pair preference losses [B] (before the batch mean), e.g. for pair weighting.
    pub pref_losses: Tensor,
    /// Scalar mean preference loss.
    pub pref_loss: Tensor,
    /// Scalar `sft_coef · mean(nll_chosen)` when `sft_coef > 0`.
    pub sft_term: Option<Tensor>,
    pub metrics: DpoMetrics,
}

impl DpoLossOutput {
    /// The enabled terms of the total loss, each a scalar attached to the graph.
    pub fn terms(&self) -> Vec<(&'static str, &Tensor)> {
        let mut t = vec![("pref", &self.pref_loss)];
        if let Some(s) = &self.sft_term {
            t.push(("sft", s));
        }
        t
    }
}

/// −logσ(x), computed stably.
fn neg_log_sigmoid(x: &Tensor) -> Tensor {
    -x.log_sigmoid()
}

/// Per-pair preference loss [B] for the margins `h` [B].
pub fn preference_losses(cfg: &LossConfig, h: &Tensor) -> Tensor {
    let beta = cfg.beta;
    let eps = cfg.label_smoothing;
    let bh = h * beta;
    match cfg.kind {
        LossKind::Sigmoid => neg_log_sigmoid(&bh),
        LossKind::Ipo => (h - 1.0 / (2.0 * beta)).square(),
        LossKind::Hinge => (1.0f64 - bh).relu(),
        LossKind::Robust => {
            (neg_log_sigmoid(&bh) * (1.0 - eps) - neg_log_sigmoid(&(-&bh)) * eps)
                / (1.0 - 2.0 * eps)
        }
        LossKind::Cdpo => neg_log_sigmoid(&bh) * (1.0 - eps) + neg_log_sigmoid(&(-&bh)) * eps,
    }
}

fn float_kind(t: &Tensor) -> Kind {
    // Sums of many bf16 log-probs lose the margin; do the loss in fp32 (or fp64 if given).
    if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Computes the configured loss for one batch.
///
/// `nll_chosen` [B] is the policy's negative log-likelihood of the chosen images, normalised as
/// the caller decides; it is required when `cfg.sft_coef > 0` and ignored otherwise.
pub fn dpo_loss(
    cfg: &LossConfig,
    lp: &PairLogps,
    nll_chosen: Option<&Tensor>,
) -> Result<DpoLossOutput> {
    cfg.validate()?;
    let named = [
        ("policy_chosen", lp.policy_chosen),
        ("policy_rejected", lp.policy_rejected),
        ("ref_chosen", lp.ref_chosen),
        ("ref_rejected", lp.ref_rejected),
    ];
    let b = match lp.policy_chosen.size().as_slice() {
        [b] if *b > 0 => *b,
        s => bail!("dpo_loss: policy_chosen log-probs must have shape [B] with B > 0, got {s:?}"),
    };
    for (name, t) in named.iter() {
        ensure!(
            t.size() == [b],
            "dpo_loss: {name} log-probs have shape {:?}, expected [{b}]",
            t.size()
        );
    }
    let kind = float_kind(lp.policy_chosen);
    let pc = lp.policy_chosen.to_kind(kind);
    let pr = lp.policy_rejected.to_kind(kind);
    let rc = lp.ref_chosen.detach().to_kind(kind);
    let rr = lp.ref_rejected.detach().to_kind(kind);

    let h = (&pc - &pr) - (&rc - &rr);
    let pref_losses = preference_losses(cfg, &h);
    let pref_loss = pref_losses.mean(kind);

    let sft_term = if cfg.sft_coef > 0.0 {
        let nll = match nll_chosen {
            Some(n) => n,
            None => bail!(
                "dpo_loss: loss.sft_coef = {} but no chosen NLL was passed",
                cfg.sft_coef
            ),
        };
        ensure!(
            nll.size() == [b],
            "dpo_loss: nll_chosen has shape {:?}, expected [{b}]",
            nll.size()
        );
        Some(nll.to_kind(kind).mean(kind) * cfg.sft_coef)
    } else {
        None
    };
    let loss = match &sft_term {
        Some(s) => &pref_loss + s,
        None => pref_loss.shallow_clone(),
    };

    let metrics = tch::no_grad(|| {
        let chosen_r = (&pc - &rc) * cfg.beta;
        let rejected_r = (&pr - &rr) * cfg.beta;
        let mean = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);
        let sft_loss = match (&sft_term, nll_chosen) {
            (Some(_), Some(n)) => mean(n),
            _ => 0.0,
        };
        DpoMetrics {
            loss: mean(&loss),
            pref_loss: mean(&pref_loss),
            sft_loss,
            rewards_chosen: mean(&chosen_r),
            rewards_rejected: mean(&rejected_r),
            rewards_accuracies: mean(&chosen_r.gt_tensor(&rejected_r)),
            rewards_margins: mean(&(&chosen_r - &rejected_r)),
            logps_chosen: mean(&pc),
            logps_rejected: mean(&pr),
        }
    });
    Ok(DpoLossOutput {
        loss,
        pref_losses,
        pref_loss,
        sft_term,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keys_defaults_and_unknown_keys() {
        let c: LossConfig =
            serde_norway::from_str("kind: robust\nbeta: 0.2\nlabel_smoothing: 0.1\n").unwrap();
        assert_eq!(c.kind, LossKind::Robust);
        assert_eq!(c.beta, 0.2);
        assert_eq!(c.label_smoothing, 0.1);
        assert_eq!(c.sft_coef, 0.0);
        c.validate().unwrap();
        let d: LossConfig = serde_norway::from_str("{}").unwrap();
        assert_eq!(d, LossConfig::default());
        let e = serde_norway::from_str::<LossConfig>("kind: sigmoid\nbetta: 0.1\n").unwrap_err();
        assert!(e.to_string().contains("betta"), "{e}");
        let e = serde_norway::from_str::<LossConfig>("kind: kto\n").unwrap_err();
        assert!(e.to_string().contains("kto"), "{e}");
    }

    #[test]
    fn validate_rejects_bad_combinations() {
        let bad = [
            LossConfig {
                beta: 0.0,
                ..Default::default()
            },
            LossConfig {
                beta: f64::NAN,
                ..Default::default()
            },
            LossConfig {
                sft_coef: -1.0,
                ..Default::default()
            },
            LossConfig {
                label_smoothing: 0.1,
                ..Default::default()
            },
            LossConfig {
                kind: LossKind::Robust,
                label_smoothing: 0.5,
                ..Default::default()
            },
            LossConfig {
                kind: LossKind::Cdpo,
                label_smoothing: -0.1,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?} should be rejected");
        }
    }
}
