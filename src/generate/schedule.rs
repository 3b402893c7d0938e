//! MaskGIT mask schedules (`O:models/sampling.py`): the share of image tokens still masked after a
//! given fraction of the steps. Evaluated in f32, as torch evaluates them there.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Schedule {
    /// cos(t·π/2), unclamped.
    Cosine,
    /// clamp(1 − t, 1e-6, 1).
    Linear,
    /// clamp(1 − t^k, 1e-6, 1) ("powK").
    Pow(f32),
    /// Show-o's sigmoid schedule with start −3, end 3, τ 1, clip 1e-6.
    Sigmoid,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "cosine" => Schedule::Cosine,
            "linear" => Schedule::Linear,
            "sigmoid" => Schedule::Sigmoid,
            _ => match s.strip_prefix("pow").and_then(|k| k.parse::<f32>().ok()) {
                Some(k) if k > 0.0 => Schedule::Pow(k),
                _ => bail!("unknown mask schedule '{s}' (cosine, linear, powK, sigmoid)"),
            },
        })
    }

    /// Mask ratio at progress `t` ∈ [0, 1].
    pub fn ratio(&self, t: f32) -> f32 {
        match *self {
            Schedule::Cosine => (t * std::f32::consts::FRAC_PI_2).cos(),
            Schedule::Linear => (1.0 - t).clamp(1e-6, 1.0),
            Schedule::Pow(k) => (1.0 - t.powf(k)).clamp(1e-6, 1.0),
            Schedule::Sigmoid => {
                let (start, end, tau, clip_min) = (-3.0f32, 3.0f32, 1.0f32, 1e-6f32);
                let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
                let v_start = sig(start / tau);
                let v_end = sig(end / tau);
                let out = (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start);
                out.clamp(clip_min, 1.0)
            }
        }
    }

    /// Show-o's upper bound `floor(N·ratio((step+1)/T))` on the tokens left masked after `step`
    /// (before the `max(1, min(unknown − 1, ·))` clamp).
    pub fn masked_after(&self, step: usize, steps: usize, n: i64) -> i64 {
        let ratio = (step as f32 + 1.0) / steps as f32;
        (n as f32 * self.ratio(ratio)).floor() as i64
    }
}

impl TryFrom<String> for Schedule {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Schedule::parse(&s)
    }
}

impl From<Schedule> for String {
    fn from(s: Schedule) -> String {
        match s {
            Schedule::Cosine => "cosine".into(),
            Schedule::Linear => "linear".into(),
            Schedule::Sigmoid => "sigmoid".into(),
            Schedule::Pow(k) => format!("pow{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_table_matches_show_o() {
        let s = Schedule::Cosine;
        let got: Vec<i64> = (0..18).map(|i| s.masked_after(i, 18, 256).max(1)).collect();
        assert_eq!(
            got,
            vec![
                255, 252, 247, 240, 232, 221, 209, 196, 181, 164, 146, 127, 108, 87, 66, 44, 22, 1
            ]
        );
        let got: Vec<i64> = (0..18)
            .map(|i| s.masked_after(i, 18, 1024).max(1))
            .collect();
        assert_eq!(
            got,
            vec![
                1020, 1008, 989, 962, 928, 886, 838, 784, 724, 658, 587, 511, 432, 350, 265, 177,
                89, 1
            ]
        );
        // The last cosine step is slightly negative: floor gives −1 before the clamp.
        assert_eq!(s.masked_after(17, 18, 256), -1);
    }

    #[test]
    fn other_schedules() {
        assert_eq!(Schedule::parse("pow2").unwrap(), Schedule::Pow(2.0));
        assert!((Schedule::Pow(2.0).ratio(0.5) - 0.75).abs() < 1e-7);
        assert!((Schedule::Linear.ratio(1.0) - 1e-6).abs() < 1e-9);
        assert!((Schedule::Sigmoid.ratio(0.0) - 1.0).abs() < 1e-6);
        assert!((Schedule::Sigmoid.ratio(0.5) - 0.5).abs() < 1e-6);
        assert!(Schedule::parse("nope").is_err());
    }
}
