//! Learning-rate schedules as pure functions of the optimizer step.
//!
//! Semantics follow Hugging Face `transformers.get_*_schedule_with_warmup`: `step` is the 0-based
//! index of the optimizer step about to be taken, warmup is linear from 0 (`step / warmup`), and
//! the cosine phase decays from 1 to `min_lr_ratio` over `total_steps - warmup_steps` steps
//! (`get_cosine_with_min_lr_schedule_with_warmup`, one half-cycle). Past `total_steps` the factor
//! stays at `min_lr_ratio` (HF would start climbing again). `Wsd` (warmup-stable-decay) holds
//! the peak after warmup and runs the same half-cosine over only the last `decay_steps`.

use serde::{Deserialize, Serialize};

/// An LR schedule; `lr(base, step) = base * factor(step)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear warmup from 0, then constant.
    ConstantWithWarmup { warmup_steps: u64 },
    /// Linear warmup from 0, then half-cosine decay to `min_lr_ratio` at `total_steps`.
    Cosine {
        warmup_steps: u64,
        total_steps: u64,
        min_lr_ratio: f64,
    },
    /// Linear warmup from 0, the peak held, then half-cosine decay to `min_lr_ratio` over the
    /// last `decay_steps` before `total_steps`.
    Wsd {
        warmup_steps: u64,
        total_steps: u64,
        decay_steps: u64,
        min_lr_ratio: f64,
    },
}

impl LrSchedule {
    /// Multiplier of the base LR at optimizer step `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        let (LrSchedule::ConstantWithWarmup { warmup_steps }
        | LrSchedule::Cosine { warmup_steps, .. }
        | LrSchedule::Wsd { warmup_steps, .. }) = *self;
        if let Some(f) = warmup_factor(step, warmup_steps) {
            return f;
        }
        match *self {
            LrSchedule::ConstantWithWarmup { .. } => 1.0,
            LrSchedule::Cosine {
                total_steps,
                min_lr_ratio,
                ..
            } => cosine_decay(
                step - warmup_steps,
                total_steps.saturating_sub(warmup_steps),
                min_lr_ratio,
            ),
            LrSchedule::Wsd {
                total_steps,
                decay_steps,
                min_lr_ratio,
                ..
            } => {
                // The decay never starts inside the warmup.
                let decay_start = total_steps.saturating_sub(decay_steps).max(warmup_steps);
                match step.checked_sub(decay_start) {
                    None => 1.0,
                    Some(k) => {
                        cosine_decay(k, total_steps.saturating_sub(decay_start), min_lr_ratio)
                    }
                }
            }
        }
    }

    /// The learning rate at `step` for base LR `base_lr`.
    pub fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.factor(step)
    }
}

/// Half-cosine from 1 at `k = 0` to `min_lr_ratio` at `k = steps`, then flat.
fn cosine_decay(k: u64, steps: u64, min_lr_ratio: f64) -> f64 {
    let progress = (k as f64 / steps.max(1) as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    min_lr_ratio + (1.0 - min_lr_ratio) * cosine
}

fn warmup_factor(step: u64, warmup_steps: u64) -> Option<f64> {
    (step < warmup_steps).then(|| step as f64 / warmup_steps as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn constant_with_warmup() {
        let s = LrSchedule::ConstantWithWarmup { warmup_steps: 4 };
        let got: Vec<f64> = (0..7).map(|i| s.factor(i)).collect();
        assert_eq!(got, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        let s0 = LrSchedule::ConstantWithWarmup { warmup_steps: 0 };
        assert_eq!(s0.factor(0), 1.0);
        assert!(close(s.lr(2e-4, 1), 5e-5));
    }

    #[test]
    fn cosine_values() {
        let s = LrSchedule::Cosine {
            warmup_steps: 2,
            total_steps: 10,
            min_lr_ratio: 0.1,
        };
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(1), 0.5);
        // Peak right after warmup.
        assert!(close(s.factor(2), 1.0));
        // Halfway through the 8 decay steps: cos(pi/2) = 0 -> 0.1 + 0.9 * 0.5.
        assert!(close(s.factor(6), 0.55));
        // A quarter: 0.5 * (1 + cos(pi/4)).
        let q = 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(close(s.factor(4), 0.1 + 0.9 * q));
        assert!(close(s.factor(10), 0.1));
        assert!(close(s.factor(1000), 0.1));
        // Monotone non-increasing after warmup.
        for i in 2..20 {
            assert!(s.factor(i + 1) <= s.factor(i) + 1e-15, "step {i}");
        }
    }

    #[test]
    fn cosine_no_warmup_to_zero() {
        let s = LrSchedule::Cosine {
            warmup_steps: 0,
            total_steps: 4,
            min_lr_ratio: 0.0,
        };
        let got: Vec<f64> = (0..5).map(|i| s.factor(i)).collect();
        let want = [
            1.0,
            0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2),
            0.5,
            0.5 * (1.0 - std::f64::consts::FRAC_1_SQRT_2),
            0.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, w), "{got:?}");
        }
    }

    #[test]
    fn wsd_holds_the_peak_then_decays_over_the_tail() {
        let s = LrSchedule::Wsd {
            warmup_steps: 2,
            total_steps: 10,
            decay_steps: 4,
            min_lr_ratio: 0.1,
        };
        let got: Vec<f64> = (0..12).map(|i| s.factor(i)).collect();
        assert_eq!(&got[..7], &[0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]);
        // Steps 6..10 are the 4 decay steps: the cosine of `Cosine` with 4 decay steps.
        let c = LrSchedule::Cosine {
            warmup_steps: 0,
            total_steps: 4,
            min_lr_ratio: 0.1,
        };
        for k in 0..6 {
            assert!(close(got[6 + k], c.factor(k as u64)), "{got:?}");
        }
        assert!(close(got[10], 0.1) && close(got[11], 0.1));
        // A decay longer than the steps after warmup starts right after the warmup.
        let long = LrSchedule::Wsd {
            warmup_steps: 2,
            total_steps: 10,
            decay_steps: 100,
            min_lr_ratio: 0.1,
        };
        let cos = LrSchedule::Cosine {
            warmup_steps: 2,
            total_steps: 10,
            min_lr_ratio: 0.1,
        };
        for i in 0..12 {
            assert!(close(long.factor(i), cos.factor(i)), "step {i}");
        }
    }

    #[test]
    fn serde_roundtrip() {
        let s = LrSchedule::Cosine {
            warmup_steps: 3,
            total_steps: 30,
            min_lr_ratio: 0.05,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"kind\":\"cosine\""), "{j}");
        assert_eq!(serde_json::from_str::<LrSchedule>(&j).unwrap(), s);
    }
}
