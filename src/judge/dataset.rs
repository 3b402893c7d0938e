//! Judge training data in the LLaVA conversation format (spec-judges §6): one record per image with
//! `human`/`gpt` turns, read from a JSON list or JSONL; the seed's data-mix syntax
//! (`random:70%`, `first:N`, `all`); image paths absolute or relative to the data file.
use crate::models::llava_ov::prompt::JudgeQuestion;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One conversation turn (`from`: `human` or `gpt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub from: String,
    pub value: String,
}

/// Provenance of a record written by `judge-data` (ignored by LLaVA, used for the metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// `orm`, `orm-rendered` (a rendered scene, not a generator image), `orm-dense` (a rendered
    /// scene crowded like the generator's), `clarity`, `potential` or
    /// `caption`.
    pub kind: String,
    /// The generation prompt (pairwise ranking groups by it).
    pub prompt: String,
    pub prompt_index: usize,
    pub candidate: usize,
    /// 1-based sampler step of the image (= `steps` for final images).
    pub step: usize,
    pub steps: usize,
    /// The supervised answer of the last turn.
    pub label: bool,
    /// Final label of the path (the exact evaluator's verdict on the final image).
    pub final_label: bool,
    #[serde(default)]
    pub tag: String,
}

/// A LLaVA training record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub image: String,
    pub conversations: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RecordMeta>,
}

impl Record {
    /// Turns as (is_assistant, text); `from` must be human/gpt (also user/assistant).
    pub fn turns(&self) -> Result<Vec<(bool, String)>> {
        self.conversations
            .iter()
            .map(|m| match m.from.as_str() {
                "human" | "user" => Ok((false, m.value.clone())),
                "gpt" | "assistant" => Ok((true, m.value.clone())),
                f => bail!("record {}: unknown speaker '{f}'", self.id),
            })
            .collect()
    }

    /// The final answer as a yes/no label (None when it is neither).
    pub fn answer(&self) -> Option<bool> {
        let a = self.conversations.last()?.value.trim().to_lowercase();
        match a.as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        }
    }

    /// Question kind: from `meta`, else `other`.
    pub fn kind(&self) -> &str {
        self.meta
            .as_ref()
            .map(|m| m.kind.as_str())
            .unwrap_or("other")
    }

    /// Grouping key for pairwise ranking: the generation prompt (from `meta`, else the first question).
    pub fn group(&self) -> String {
        match &self.meta {
            Some(m) => format!("{}\u{1}{}", m.kind, m.prompt),
            None => self
                .conversations
                .first()
                .map(|m| m.value.clone())
                .unwrap_or_default(),
        }
    }
}

/// Parses a JSON list or JSONL text of records.
pub fn parse_records(text: &str, source: &str) -> Result<Vec<Record>> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).with_context(|| format!("parsing JSON list {source}"));
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{source}:{}: bad record", i + 1))
        })
        .collect()
}

/// Reads records; relative image paths are resolved against the file's folder (or `image_folder`).
pub fn load_records(path: &Path, image_folder: Option<&Path>) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut recs = parse_records(&text, &path.display().to_string())?;
    let base = image_folder
        .map(Path::to_path_buf)
        .or_else(|| path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    for r in &mut recs {
        let p = PathBuf::from(&r.image);
        if p.is_relative() {
            r.image = base.join(p).display().to_string();
        }
    }
    Ok(recs)
}

/// A data source with the seed's sampling strategy (train.py:975-1023).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub path: PathBuf,
    /// `all`, `random:K%`, `first:K%`, `first:N`, `random:N`.
    #[serde(default = "all")]
    pub sampling: String,
    /// Keep only records whose `meta.tag` is listed (before sampling); empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Weight of this source's supervised tokens in the training loss (a token-weighted mean over
    /// the batch; 1 everywhere = LLaVA's plain token mean). Not in the paper: when a source with
    /// long answers (captions) is mixed with yes/no records, the one informative answer token of a
    /// yes/no record is otherwise outweighed by the caption tokens.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub loss_weight: f64,
    /// How the source's records become tokens (default `chat`, the paper's template).
    #[serde(default, skip_serializing_if = "Layout::is_chat")]
    pub layout: Layout,
}

/// Token layout of a source's records: the judge's prompt layout (`chat`, the paper's, or `bare`).
/// In `bare` a record asks its kind's question (`clarity`, `potential`, else the outcome) about its
/// `meta.prompt`.
pub use crate::models::llava_ov::prompt::PromptLayout as Layout;

/// A loaded record with its source's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced {
    pub record: Record,
    pub loss_weight: f64,
    pub layout: Layout,
}

fn all() -> String {
    "all".into()
}

fn one() -> f64 {
    1.0
}

fn is_one(w: &f64) -> bool {
    *w == 1.0
}

/// Applies a sampling strategy (`random:k%` shuffles with `seed`, keeps the first ceil(k·n/100)).
pub fn apply_sampling(mut recs: Vec<Record>, strategy: &str, seed: u64) -> Result<Vec<Record>> {
    if strategy == "all" {
        return Ok(recs);
    }
    let (how, amount) = strategy.split_once(':').with_context(|| {
        format!("sampling strategy '{strategy}': expected all, random:K% or first:N")
    })?;
    let n = recs.len();
    let keep = if let Some(p) = amount.strip_suffix('%') {
        let k: f64 = p
            .parse()
            .with_context(|| format!("bad percentage in '{strategy}'"))?;
        ensure!(
            (0.0..=100.0).contains(&k),
            "percentage out of range in '{strategy}'"
        );
        ((k * n as f64) / 100.0).ceil() as usize
    } else {
        amount
            .parse::<usize>()
            .with_context(|| format!("bad count in '{strategy}'"))?
            .min(n)
    };
    match how {
        "random" => {
            let mut rng = crate::glyphs::rng::seeded(seed, 0x6a75_6467);
            crate::glyphs::rng::shuffle(&mut rng, &mut recs);
        }
        "first" => {}
        _ => bail!("sampling strategy '{strategy}': unknown mode '{how}'"),
    }
    recs.truncate(keep);
    Ok(recs)
}

/// Loads and concatenates sources, each record with its source's `loss_weight` and `layout`.
pub fn load_sources(
    sources: &[DataSource],
    image_folder: Option<&Path>,
    seed: u64,
) -> Result<Vec<Sourced>> {
    let mut out = Vec::new();
    for s in sources {
        ensure!(
            s.loss_weight.is_finite() && s.loss_weight > 0.0,
            "{}: loss_weight must be a positive number, got {}",
            s.path.display(),
            s.loss_weight
        );
        let mut recs = load_records(&s.path, image_folder)?;
        if s.layout == Layout::Bare {
            // Checked here, where the file is known: the bare layout needs the prompt; it asks the
            // record kind's question (PARM potential's two turns become one) and keeps the last
            // answer.
            for r in &recs {
                let turns = r.turns()?.len();
                let potential = JudgeQuestion::of_kind(r.kind()) == JudgeQuestion::Potential;
                let one_question = turns == 2 || (turns == 4 && potential);
                ensure!(
                    r.meta.as_ref().is_some_and(|m| !m.prompt.trim().is_empty()) && one_question,
                    "{}: record {}: layout `bare` needs `meta.prompt` and one question and answer \
                     (PARM potential: the clarity exchange, then its own)",
                    s.path.display(),
                    r.id
                );
            }
        }
        if !s.tags.is_empty() {
            recs.retain(|r| r.meta.as_ref().is_some_and(|m| s.tags.contains(&m.tag)));
            ensure!(
                !recs.is_empty(),
                "{}: no record has a tag in {:?}",
                s.path.display(),
                s.tags
            );
        }
        out.extend(
            apply_sampling(recs, &s.sampling, seed)?
                .into_iter()
                .map(|record| Sourced {
                    record,
                    loss_weight: s.loss_weight,
                    layout: s.layout,
                }),
        );
    }
    Ok(out)
}

/// Writes records as JSONL (atomically).
pub fn write_jsonl(path: &Path, recs: &[Record]) -> Result<()> {
    let mut s = String::new();
    for r in recs {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    crate::util::atomic_write(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Record {
        Record {
            id: i.to_string(),
            image: "a.png".into(),
            conversations: vec![
                Message {
                    from: "human".into(),
                    value: "<image> q".into(),
                },
                Message {
                    from: "gpt".into(),
                    value: "yes".into(),
                },
            ],
            meta: None,
        }
    }

    #[test]
    fn sampling_strategies() {
        let recs: Vec<Record> = (0..10).map(rec).collect();
        assert_eq!(apply_sampling(recs.clone(), "all", 0).unwrap().len(), 10);
        assert_eq!(
            apply_sampling(recs.clone(), "random:70%", 0).unwrap().len(),
            7
        );
        assert_eq!(
            apply_sampling(recs.clone(), "random:25%", 0).unwrap().len(),
            3
        );
        let f = apply_sampling(recs.clone(), "first:4", 0).unwrap();
        assert_eq!(
            f.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["0", "1", "2", "3"]
        );
        assert!(apply_sampling(recs, "bogus:1", 0).is_err());
    }

    #[test]
    fn json_list_and_jsonl_parse_alike() {
        let recs: Vec<Record> = (0..3).map(rec).collect();
        let list = serde_json::to_string(&recs).unwrap();
        let lines: String = recs
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        assert_eq!(parse_records(&list, "l").unwrap(), recs);
        assert_eq!(parse_records(&lines, "j").unwrap(), recs);
        assert_eq!(recs[0].answer(), Some(true));
    }

    #[test]
    fn tag_filter_keeps_listed_tags_before_sampling() {
        let dir = std::env::temp_dir().join(format!("imgcot-tags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let recs: Vec<Record> = (0..6)
            .map(|i| {
                let mut r = rec(i);
                r.meta = Some(RecordMeta {
                    kind: "orm".into(),
                    prompt: "p".into(),
                    prompt_index: i,
                    candidate: 0,
                    step: 1,
                    steps: 1,
                    label: true,
                    final_label: true,
                    tag: ["colors", "position", "single_object"][i % 3].into(),
                });
                r
            })
            .collect();
        let path = dir.join("d.jsonl");
        write_jsonl(&path, &recs).unwrap();
        let src = |tags: &[&str], sampling: &str| DataSource {
            path: path.clone(),
            sampling: sampling.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            loss_weight: 1.0,
            layout: Default::default(),
        };
        let ids = |v: Vec<Sourced>| v.into_iter().map(|s| s.record.id).collect::<Vec<_>>();
        assert_eq!(
            ids(load_sources(&[src(&[], "all")], None, 0).unwrap()).len(),
            6
        );
        assert_eq!(
            ids(load_sources(&[src(&["colors", "single_object"], "all")], None, 0).unwrap()),
            ["0", "2", "3", "5"]
        );
        assert_eq!(
            load_sources(&[src(&["colors"], "first:1")], None, 0)
                .unwrap()
                .len(),
            1
        );
        assert!(load_sources(&[src(&["counting"], "all")], None, 0).is_err());
        // The layout travels with each record; `bare` needs meta.prompt, checked at load.
        let bare: DataSource =
            serde_norway::from_str(&format!("{{path: {}, layout: bare}}", path.display())).unwrap();
        assert_eq!(bare.layout, Layout::Bare);
        let got = load_sources(&[src(&[], "first:1"), bare.clone()], None, 0).unwrap();
        assert_eq!(
            got.iter().map(|s| s.layout).collect::<Vec<_>>(),
            [
                Layout::Chat,
                Layout::Bare,
                Layout::Bare,
                Layout::Bare,
                Layout::Bare,
                Layout::Bare,
                Layout::Bare
            ]
        );
        let no_meta = dir.join("no_meta.jsonl");
        write_jsonl(&no_meta, &[rec(0)]).unwrap();
        let err = load_sources(
            &[DataSource {
                path: no_meta.clone(),
                ..bare
            }],
            None,
            0,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("layout `bare` needs"),
            "{err:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
