//! First-answer-token probabilities from one forward pass (spec-judges §4): the exact softmax of the
//! answer-position logits, or the seed's distribution — HF generate's `scores[0]` after the TopK and
//! TopP warpers (tf4.41 logits_process.py), renormalised over the kept tokens.
use tch::{Kind, Tensor};

/// Which distribution the judge reads P(yes)/P(no) from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoreMode {
    /// `softmax(ℓ)`: sampling-free probability.
    Exact,
    /// `softmax(top_p(top_k(ℓ)))` as the seed's `generate(do_sample=True)` reports it.
    /// The checkpoints' generation_config most likely has top_k=20, top_p=0.8 (§0.4).
    Seed { top_k: i64, top_p: f64 },
}

impl ScoreMode {
    /// The paper's setting (top_k=20, top_p=0.8).
    pub fn paper() -> Self {
        Self::Seed {
            top_k: 20,
            top_p: 0.8,
        }
    }
}

/// HF `TopKLogitsWarper`: keep logits ≥ the k-th largest (ties at the threshold kept).
pub fn top_k_filter(logits: &Tensor, k: i64) -> Tensor {
    let v = *logits.size().last().unwrap_or(&1);
    let k = k.clamp(1, v);
    let (vals, _) = logits.topk(k, -1, true, true);
    let thresh = vals.narrow(-1, k - 1, 1);
    logits.masked_fill(&logits.lt_tensor(&thresh), f64::NEG_INFINITY)
}

/// HF `TopPLogitsWarper` (min_tokens_to_keep=1): drop the ascending-sorted tokens whose cumulative
/// probability is ≤ 1 − top_p, always keeping the most likely one.
pub fn top_p_filter(logits: &Tensor, top_p: f64) -> Tensor {
    let (sorted, idx) = logits.sort(-1, false);
    let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
    let v = *logits.size().last().unwrap_or(&1);
    let remove = cum.le(1.0 - top_p);
    let _ = remove.narrow(-1, v - 1, 1).fill_(0);
    let remove = remove.scatter(-1, &idx, &remove);
    logits.masked_fill(&remove, f64::NEG_INFINITY)
}

/// fp32 logits [B, V] → probabilities [B, V] under `mode`.
pub fn answer_distribution(logits: &Tensor, mode: ScoreMode) -> Tensor {
    let l = logits.to_kind(Kind::Float);
    match mode {
        ScoreMode::Exact => l.softmax(-1, Kind::Float),
        ScoreMode::Seed { top_k, top_p } => {
            let mut z = if top_k > 0 {
                top_k_filter(&l, top_k)
            } else {
                l
            };
            if top_p < 1.0 {
                z = top_p_filter(&z, top_p);
            }
            z.softmax(-1, Kind::Float)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_distribution_renormalises_the_nucleus() {
        // p = [0.5, 0.3, 0.15, 0.05]; top_k=3 drops the last; then top_p=0.8 keeps {0.5, 0.3}
        // (cumsum of the ascending kept mass 0.15/0.95 ≤ 0.2 is removed).
        let p = Tensor::from_slice(&[0.5f32, 0.3, 0.15, 0.05]).view([1, 4]);
        let l = p.log();
        let d = answer_distribution(
            &l,
            ScoreMode::Seed {
                top_k: 3,
                top_p: 0.8,
            },
        );
        let got: Vec<f32> = Vec::try_from(d.view([-1])).unwrap();
        assert!(
            (got[0] - 0.625).abs() < 1e-6 && (got[1] - 0.375).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(got[2], 0.0);
        assert_eq!(got[3], 0.0);
        let e: Vec<f32> =
            Vec::try_from(answer_distribution(&l, ScoreMode::Exact).view([-1])).unwrap();
        assert!((e[2] - 0.15).abs() < 1e-6);
    }

    #[test]
    fn dominant_token_saturates_to_one() {
        let l = Tensor::from_slice(&[5.0f32, 0.0, 0.0, 0.0]).view([1, 4]);
        let d = answer_distribution(&l, ScoreMode::paper());
        assert_eq!(d.double_value(&[0, 0]), 1.0);
    }
}
