//! Pair building: sample N images per prompt with the current policy, score them with a judge, and
//! pair preferred with dispreferred images — one "yes" with one "no" (the paper's rule), several
//! disjoint such pairs per prompt, or best against worst with a minimum score margin. Prompts whose
//! images all agree give no pair. Writes the images, `pairs.jsonl` and a `stats.json`.
use super::pairs::{write_pairs, PairRecord};
use crate::eval::geneval::Metadata;
use crate::generate::{self, derive_seed, SamplerConfig};
use crate::models::showo::{Layout, Showo, TextTokenizer};
use crate::models::ImageTokenizer;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Scores images for pair building (an ORM, PARM's final selection score, or the glyph world's
/// exact evaluator).
pub trait ImageScorer {
    fn name(&self) -> String;
    /// Scores in [0, 1] ("yes" above `PairRule::threshold`). `images` float [B,3,H,W] in [−1,1],
    /// `codes` int64 [B, N].
    fn score(&mut self, metas: &[&Metadata], images: &Tensor, codes: &Tensor) -> Result<Vec<f64>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairMode {
    /// Pair "yes" images (score > threshold) with "no" images, each image used at most once,
    /// keeping pairs whose scores differ by at least `yes_no_margin`.
    YesNo,
    /// The best against the worst image, when their scores differ by at least `min_margin`.
    BestWorst,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRule {
    #[serde(default = "d_mode")]
    pub mode: PairMode,
    #[serde(default = "d_thr")]
    pub threshold: f64,
    #[serde(default = "d_margin")]
    pub min_margin: f64,
    /// At most this many pairs per prompt (YesNo).
    #[serde(default = "d_ppp")]
    pub pairs_per_prompt: usize,
    /// YesNo: the least score difference a pair needs (0: any yes against any no, the paper's
    /// rule). On the glyph world the ORM's low-margin pairs are as often reversed as right under
    /// the exact evaluator (README, stop 27: "How right the loop's pairs are").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub yes_no_margin: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn d_mode() -> PairMode {
    PairMode::YesNo
}
fn d_thr() -> f64 {
    0.5
}
fn d_margin() -> f64 {
    0.1
}
fn d_ppp() -> usize {
    1
}

impl Default for PairRule {
    fn default() -> Self {
        Self {
            mode: d_mode(),
            threshold: d_thr(),
            min_margin: d_margin(),
            pairs_per_prompt: d_ppp(),
            yes_no_margin: 0.0,
        }
    }
}

/// (chosen, rejected) indices among one prompt's candidates.
pub fn make_pairs(scores: &[f64], rule: &PairRule) -> Vec<(usize, usize)> {
    match rule.mode {
        PairMode::YesNo => {
            let mut yes: Vec<usize> = (0..scores.len())
                .filter(|&i| scores[i] > rule.threshold)
                .collect();
            let mut no: Vec<usize> = (0..scores.len())
                .filter(|&i| scores[i] <= rule.threshold)
                .collect();
            // Most confident first, so the clearest contrasts are used when pairs are capped.
            yes.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            no.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
            // Margins fall along the zip (yes descending, no ascending), so the filter keeps a
            // prefix: the clearest contrasts.
            yes.into_iter()
                .zip(no)
                .filter(|&(y, n)| scores[y] - scores[n] >= rule.yes_no_margin)
                .take(rule.pairs_per_prompt)
                .collect()
        }
        PairMode::BestWorst => {
            if scores.len() < 2 {
                return vec![];
            }
            let best = (0..scores.len())
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            let worst = (0..scores.len())
                .min_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)))
                .unwrap_or(0);
            if scores[best] - scores[worst] >= rule.min_margin && best != worst {
                vec![(best, worst)]
            } else {
                vec![]
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PairStats {
    pub prompts: usize,
    pub images: usize,
    pub pairs: usize,
    /// Share of images scored "yes".
    pub yes_rate: f64,
    /// Prompts dropped because all their images agree.
    pub agreeing_prompts: usize,
    pub judge: String,
}

/// Samples `n` images for each prompt, scores them and writes `out/pairs.jsonl`, `out/images/…`
/// and `out/stats.json`.
#[allow(clippy::too_many_arguments)]
pub fn build_pairs(
    model: &Showo,
    layout: &Layout,
    tok: &TextTokenizer,
    vq: &dyn ImageTokenizer,
    metas: &[Metadata],
    n: usize,
    seed: u64,
    sampler: &SamplerConfig,
    scorer: &mut dyn ImageScorer,
    rule: &PairRule,
    batch_rows: usize,
    out: &Path,
) -> Result<PairStats> {
    ensure!(n >= 2, "pair building needs at least 2 images per prompt");
    let img_dir = out.join("images");
    std::fs::create_dir_all(&img_dir)?;
    let mut records = Vec::new();
    let mut stats = PairStats {
        judge: scorer.name(),
        ..Default::default()
    };
    let mut yes = 0usize;
    let per_batch = (batch_rows / n).max(1);
    let pb = crate::train::logging::progress_bar(metas.len() as u64, true);
    pb.set_message("sampling + judging");
    for (c, chunk) in metas.chunks(per_batch).enumerate() {
        let base = c * per_batch;
        let prompts: Vec<String> = chunk.iter().map(|m| m.prompt.clone()).collect();
        let text = layout.text_batch(tok, &prompts, model.device())?;
        let prompt_of: Vec<usize> = (0..chunk.len())
            .flat_map(|j| std::iter::repeat_n(j, n))
            .collect();
        let seeds: Vec<u64> = prompt_of
            .iter()
            .enumerate()
            .map(|(r, &j)| derive_seed(seed, (base + j) as u64, (r % n) as u64))
            .collect();
        let res = generate::sample(
            model,
            layout,
            &text,
            &prompt_of,
            &seeds,
            sampler,
            &mut generate::NoHook,
        )?;
        let images = vq.decode(&res.codes.to_device(model.device()))?;
        let row_metas: Vec<&Metadata> = prompt_of.iter().map(|&j| &chunk[j]).collect();
        let scores = scorer.score(&row_metas, &images, &res.codes)?;
        let pngs = crate::world::to_pngs(&images)?;
        let commits = res.commit_step.to_kind(tch::Kind::Int64);

        for (j, meta) in chunk.iter().enumerate() {
            let s = &scores[j * n..(j + 1) * n];
            yes += s.iter().filter(|&&x| x > rule.threshold).count();
            let pairs = make_pairs(s, rule);
            if pairs.is_empty() {
                stats.agreeing_prompts += 1;
            }
            let mut saved = vec![None::<PathBuf>; n];
            let mut save = |k: usize| -> Result<String> {
                let rel = format!("images/{:05}-{k:02}.png", base + j);
                if saved[k].is_none() {
                    crate::util::atomic_write(&out.join(&rel), &pngs[j * n + k])?;
                    saved[k] = Some(out.join(&rel));
                }
                Ok(rel)
            };
            for (ci, ri) in pairs {
                records.push(PairRecord {
                    prompt: meta.prompt.clone(),
                    chosen: save(ci)?,
                    rejected: save(ri)?,
                    chosen_score: Some(s[ci]),
                    rejected_score: Some(s[ri]),
                    tag: Some(meta.tag.clone()),
                    metadata: Some(serde_json::to_value(meta)?),
                    chosen_commit: Some(commit_steps(&commits, j * n + ci)?),
                    rejected_commit: Some(commit_steps(&commits, j * n + ri)?),
                });
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    stats.prompts = metas.len();
    stats.images = metas.len() * n;
    stats.pairs = records.len();
    stats.yes_rate = yes as f64 / stats.images.max(1) as f64;
    write_pairs(&out.join("pairs.jsonl"), &records)?;
    crate::util::atomic_write(
        &out.join("stats.json"),
        serde_json::to_string_pretty(&stats)?.as_bytes(),
    )?;
    Ok(stats)
}

/// The glyph world's exact evaluator as a judge: 1 when the image satisfies the prompt under
/// GenEval's rules, else 0.
pub struct OracleScorer;

impl ImageScorer for OracleScorer {
    fn name(&self) -> String {
        "oracle".into()
    }
    fn score(&mut self, metas: &[&Metadata], _images: &Tensor, codes: &Tensor) -> Result<Vec<f64>> {
        let codes = crate::models::glyph_vq::tensor_to_codes(codes)?;
        let opts = crate::eval::geneval::rules::RuleOptions::default();
        Ok(metas
            .iter()
            .zip(&codes)
            .map(|(m, c)| {
                if crate::glyphs::detect::is_correct(m, c, &opts) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect())
    }
}

/// Row `row` of the sampler's commit steps as stored in a pair record. A step that does not fit
/// is an error, not a clamp: a clamped step would make DPO's trajectory likelihood replay
/// another trajectory than the one sampled.
fn commit_steps(commits: &Tensor, row: usize) -> Result<Vec<u16>> {
    let v = Vec::<i64>::try_from(commits.get(row as i64))?;
    v.into_iter()
        .map(|s| u16::try_from(s).with_context(|| format!("commit step {s} does not fit u16")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_steps_keep_long_samplers_and_refuse_what_does_not_fit() {
        let c = Tensor::from_slice(&[0i64, 17, 300, 65_535, 3, -1, 70_000, 2]).view([2, 4]);
        assert_eq!(commit_steps(&c, 0).unwrap(), vec![0, 17, 300, 65_535]);
        let e = commit_steps(&c, 1).unwrap_err().to_string();
        assert!(e.contains("commit step -1"), "{e}");
    }

    #[test]
    fn pair_rules() {
        let r = PairRule {
            pairs_per_prompt: 3,
            ..Default::default()
        };
        assert_eq!(
            make_pairs(&[0.9, 0.1, 0.8, 0.2, 0.0], &r),
            vec![(0, 4), (2, 1),]
        );
        assert!(make_pairs(&[0.9, 0.8], &r).is_empty(), "all yes → no pair");
        assert!(make_pairs(&[0.1, 0.2], &r).is_empty(), "all no → no pair");
        let one = PairRule::default();
        assert_eq!(make_pairs(&[0.6, 0.1, 0.7], &one), vec![(2, 1)]);
        let bw = PairRule {
            mode: PairMode::BestWorst,
            min_margin: 0.3,
            ..Default::default()
        };
        assert_eq!(make_pairs(&[0.5, 0.9, 0.55], &bw), vec![(1, 0)]);
        assert!(make_pairs(&[0.5, 0.7], &bw).is_empty(), "margin too small");
        // A yes/no margin keeps the clearest contrasts only: 0.9–0.0 and 0.8–0.1 pass 0.6,
        // 0.55–0.2 does not.
        let m = PairRule {
            pairs_per_prompt: 3,
            yes_no_margin: 0.6,
            ..Default::default()
        };
        assert_eq!(
            make_pairs(&[0.9, 0.1, 0.8, 0.2, 0.0, 0.55], &m),
            vec![(0, 4), (2, 1)]
        );
        assert_eq!(make_pairs(&[0.9, 0.1, 0.8, 0.2, 0.0, 0.55], &r).len(), 3);
        assert!(make_pairs(&[0.6, 0.3], &m).is_empty());
    }
}
