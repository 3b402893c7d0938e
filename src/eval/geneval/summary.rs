//! What `summary_scores.py` computes from a results.jsonl (spec §3), plus the JSON summary.
//!
//! * Per-tag accuracy is a mean over **images**; tags are listed in first-appearance order
//!   (pandas `groupby(sort=False)`).
//! * `overall` is the unweighted mean of the accuracies of the tags **present** (as
//!   `np.mean(task_scores)`); with GenEval's metadata these are exactly the six [`TAGS`]. Tags
//!   are summed in first-appearance order, as numpy does for a list this short.
//! * "% correct prompts" groups images by the metadata string and counts a prompt as correct
//!   when any of its images is. It is not the GenEval score.
use super::TAGS;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// One row of a results.jsonl, as upstream writes it (spec §2.8) plus this crate's `file`
/// (path relative to the image folder, e.g. `00012/samples/0003.png`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub filename: String,
    pub tag: String,
    pub prompt: String,
    pub correct: bool,
    #[serde(default)]
    pub reason: String,
    /// The metadata dict as a JSON string (`json.dumps` form); prompts are grouped by it.
    pub metadata: String,
    /// `{class: [[x1, y1, x2, y2, score], ...]}` as a JSON string.
    #[serde(default)]
    pub details: String,
}

/// Reads a results.jsonl (official or this crate's). Errors name file and line.
pub fn read_results(path: &Path) -> Result<Vec<ResultRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: ResultRecord = serde_json::from_str(line).with_context(|| {
            format!("{}:{}: not a GenEval result record", path.display(), i + 1)
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// Correct/total images of one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagScore {
    pub tag: String,
    pub correct: usize,
    pub images: usize,
}

impl TagScore {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images as f64
    }
}

/// Groups per-image booleans by tag, in first-appearance order.
pub fn tag_scores<'a>(items: impl IntoIterator<Item = (&'a str, bool)>) -> Vec<TagScore> {
    let mut tags: Vec<TagScore> = Vec::new();
    for (tag, ok) in items {
        let i = match tags.iter().position(|t| t.tag == tag) {
            Some(i) => i,
            None => {
                tags.push(TagScore {
                    tag: tag.to_string(),
                    correct: 0,
                    images: 0,
                });
                tags.len() - 1
            }
        };
        tags[i].images += 1;
        tags[i].correct += ok as usize;
    }
    tags
}

/// Unweighted mean of per-tag accuracies (GenEval's overall score); `None` without images.
pub fn macro_mean(tags: &[TagScore]) -> Option<f64> {
    if tags.is_empty() {
        return None;
    }
    Some(tags.iter().map(TagScore::accuracy).sum::<f64>() / tags.len() as f64)
}

/// Averages any per-image boolean like the GenEval overall score (per-tag image mean, then the
/// unweighted mean over tags). The glyph world uses it for its `strict` score.
pub fn macro_average<'a>(items: impl IntoIterator<Item = (&'a str, bool)>) -> Option<f64> {
    macro_mean(&tag_scores(items))
}

/// The numbers of `summary_scores.py`, plus optional glyph-world fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub images: usize,
    pub prompts: usize,
    pub correct_images: usize,
    /// Prompts (distinct metadata strings) with at least one correct image.
    pub correct_prompts: usize,
    /// First-appearance order.
    pub tags: Vec<TagScore>,
    pub strict: Option<f64>,
    pub glyphs_per_image: Option<f64>,
}

/// One image's outcome as the summary needs it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub tag: &'a str,
    /// Groups images into prompts (upstream: the metadata JSON string).
    pub prompt_key: &'a str,
    pub correct: bool,
}

impl Summary {
    /// Summarises per-image outcomes; errors when there are none (upstream would print NaN).
    pub fn from_outcomes<'a>(outcomes: impl IntoIterator<Item = Outcome<'a>>) -> Result<Self> {
        let outcomes: Vec<Outcome<'a>> = outcomes.into_iter().collect();
        if outcomes.is_empty() {
            bail!("no images to summarise");
        }
        let mut prompts: HashMap<&str, bool> = HashMap::new();
        for o in &outcomes {
            *prompts.entry(o.prompt_key).or_insert(false) |= o.correct;
        }
        Ok(Self {
            images: outcomes.len(),
            prompts: prompts.len(),
            correct_images: outcomes.iter().filter(|o| o.correct).count(),
            correct_prompts: prompts.values().filter(|&&c| c).count(),
            tags: tag_scores(outcomes.iter().map(|o| (o.tag, o.correct))),
            strict: None,
            glyphs_per_image: None,
        })
    }

    /// Summarises result records, grouping prompts by their metadata string.
    pub fn from_records(records: &[ResultRecord]) -> Result<Self> {
        Self::from_outcomes(records.iter().map(|r| Outcome {
            tag: &r.tag,
            prompt_key: &r.metadata,
            correct: r.correct,
        }))
    }

    /// Reads and summarises a results.jsonl (official format or this crate's).
    pub fn from_results_file(path: &Path) -> Result<Self> {
        let records = read_results(path)?;
        Self::from_records(&records).with_context(|| format!("summarising {}", path.display()))
    }

    /// Share of correct images.
    pub fn correct_images_frac(&self) -> f64 {
        self.correct_images as f64 / self.images as f64
    }

    /// Share of prompts with any correct image.
    pub fn correct_prompts_frac(&self) -> f64 {
        self.correct_prompts as f64 / self.prompts as f64
    }

    /// GenEval's overall score: unweighted mean over the tags present.
    pub fn overall(&self) -> f64 {
        macro_mean(&self.tags).unwrap_or(f64::NAN)
    }

    pub fn tag(&self, tag: &str) -> Option<&TagScore> {
        self.tags.iter().find(|t| t.tag == tag)
    }

    /// Tags present that are not one of GenEval's six (they still count in `overall`).
    pub fn unknown_tags(&self) -> Vec<&str> {
        self.tags
            .iter()
            .map(|t| t.tag.as_str())
            .filter(|t| !TAGS.contains(t))
            .collect()
    }

    /// The text `summary_scores.py` prints, line for line.
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:.2}%", x * 100.0);
        let mut s = String::new();
        s += "Summary\n=======\n";
        s += &format!("Total images: {}\n", self.images);
        s += &format!("Total prompts: {}\n", self.prompts);
        s += &format!("% correct images: {}\n", pct(self.correct_images_frac()));
        s += &format!("% correct prompts: {}\n", pct(self.correct_prompts_frac()));
        s += "\nTask breakdown\n==============\n";
        for t in &self.tags {
            s += &format!(
                "{:<16} = {} ({} / {})\n",
                t.tag,
                pct(t.accuracy()),
                t.correct,
                t.images
            );
        }
        s += &format!("\nOverall score (avg. over tasks): {:.5}\n", self.overall());
        s
    }

    /// The flat JSON form written to summary.json.
    pub fn to_json(&self) -> SummaryJson {
        let acc = |tag: &str| self.tag(tag).map(TagScore::accuracy);
        SummaryJson {
            single_object: acc(TAGS[0]),
            two_object: acc(TAGS[1]),
            counting: acc(TAGS[2]),
            colors: acc(TAGS[3]),
            position: acc(TAGS[4]),
            color_attr: acc(TAGS[5]),
            overall: self.overall(),
            correct_images: self.correct_images_frac(),
            correct_prompts: self.correct_prompts_frac(),
            images: self.images,
            prompts: self.prompts,
            strict: self.strict,
            glyphs_per_image: self.glyphs_per_image,
        }
    }
}

/// summary.json: per-tag accuracies (null for an absent tag), overall, shares and totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryJson {
    pub single_object: Option<f64>,
    pub two_object: Option<f64>,
    pub counting: Option<f64>,
    pub colors: Option<f64>,
    pub position: Option<f64>,
    pub color_attr: Option<f64>,
    pub overall: f64,
    pub correct_images: f64,
    pub correct_prompts: f64,
    pub images: usize,
    pub prompts: usize,
    /// Glyph world only: the per-image strict score, macro-averaged like `overall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<f64>,
    /// Glyph world only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glyphs_per_image: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_is_unweighted_over_tags() {
        // 1/1 in tag a, 1/3 in tag b: per-image mean 0.5, macro mean 2/3.
        let items = [("a", true), ("b", true), ("b", false), ("b", false)];
        let s =
            Summary::from_outcomes(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, &(tag, correct))| Outcome {
                        tag,
                        prompt_key: if i < 2 { "p0" } else { "p1" },
                        correct,
                    }),
            )
            .unwrap();
        assert_eq!(
            (s.images, s.prompts, s.correct_images, s.correct_prompts),
            (4, 2, 2, 1)
        );
        assert!((s.overall() - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(macro_average(items.iter().copied()), Some(s.overall()));
        assert!(s.table().contains("b                = 33.33% (1 / 3)\n"));
        assert!(s
            .table()
            .ends_with("Overall score (avg. over tasks): 0.66667\n"));
        assert_eq!(s.unknown_tags(), vec!["a", "b"]);
        assert!(Summary::from_outcomes(std::iter::empty()).is_err());
    }

    #[test]
    fn json_skips_glyph_fields_when_absent() {
        let s = Summary::from_outcomes([Outcome {
            tag: "counting",
            prompt_key: "k",
            correct: true,
        }])
        .unwrap();
        let v = serde_json::to_value(s.to_json()).unwrap();
        assert_eq!(v["counting"], 1.0);
        assert!(v["colors"].is_null());
        assert!(v.get("strict").is_none() && v.get("glyphs_per_image").is_none());
        let mut s2 = s.clone();
        s2.strict = Some(0.5);
        assert_eq!(serde_json::to_value(s2.to_json()).unwrap()["strict"], 0.5);
    }
}
