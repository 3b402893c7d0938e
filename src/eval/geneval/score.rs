//! The scoring driver: list a GenEval image folder, get verdicts from a backend, write
//! `<out>/results.jsonl` (one line per image, upstream's fields plus `file`) and
//! `<out>/summary.json`, both atomically.
use super::detectors::{match_official, Detector, OfficialScorer};
use super::layout::{list_images, PromptFolder};
use super::rules::{details_json, evaluate, RuleOptions};
use super::summary::{ResultRecord, Summary};
use super::{python_json, Detection};
use crate::util::atomic_write;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Where verdicts come from.
pub enum Backend<'a> {
    /// Raw detections judged by this crate's rules.
    Detector(&'a mut dyn Detector),
    /// Upstream's own verdicts (its results.jsonl is kept as `<out>/official_results.jsonl`).
    Official(&'a OfficialScorer),
}

/// Judges per-sample detections (`detections[folder][sample]`) with the GenEval rules.
pub fn judge_folders(
    images_dir: &Path,
    folders: &[PromptFolder],
    detections: &[Vec<Vec<Detection>>],
    opts: &RuleOptions,
) -> Result<Vec<ResultRecord>> {
    ensure!(
        detections.len() == folders.len(),
        "detector returned {} folders, expected {}",
        detections.len(),
        folders.len()
    );
    let mut out = Vec::new();
    for (f, dets) in folders.iter().zip(detections) {
        ensure!(
            dets.len() == f.samples.len(),
            "detector returned {} images for {}, expected {}",
            dets.len(),
            f.name,
            f.samples.len()
        );
        let metadata = python_json(&f.metadata);
        for (s, d) in f.samples.iter().zip(dets) {
            let v = evaluate(&f.metadata, d, opts);
            out.push(ResultRecord {
                file: Some(s.rel.clone()),
                filename: images_dir.join(&s.rel).to_string_lossy().into_owned(),
                tag: f.metadata.tag.clone(),
                prompt: f.metadata.prompt.clone(),
                correct: v.correct,
                reason: v.reason,
                metadata: metadata.clone(),
                details: details_json(&v.kept),
            });
        }
    }
    Ok(out)
}

/// Serialises records as JSON lines.
pub fn records_jsonl(records: &[ResultRecord]) -> Result<String> {
    let mut s = String::new();
    for r in records {
        s += &serde_json::to_string(r).context("serialising a result record")?;
        s.push('\n');
    }
    Ok(s)
}

/// Writes results.jsonl and summary.json into `out_dir` atomically and returns the summary.
pub fn write_outputs(records: &[ResultRecord], out_dir: &Path) -> Result<Summary> {
    let summary = Summary::from_records(records)?;
    write_records_and_summary(records, &summary, out_dir)?;
    Ok(summary)
}

/// Writes `records` as results.jsonl and `summary` (which may carry extra fields such as the
/// glyph world's `strict`) as summary.json, both atomically.
pub fn write_records_and_summary(
    records: &[ResultRecord],
    summary: &Summary,
    out_dir: &Path,
) -> Result<()> {
    atomic_write(
        &out_dir.join("results.jsonl"),
        records_jsonl(records)?.as_bytes(),
    )?;
    let json =
        serde_json::to_string_pretty(&summary.to_json()).context("serialising the summary")?;
    atomic_write(
        &out_dir.join("summary.json"),
        format!("{json}\n").as_bytes(),
    )
}

/// Scores every image of a GenEval image folder with `backend` and writes the outputs.
pub fn score_folder(
    images_dir: &Path,
    backend: Backend<'_>,
    opts: &RuleOptions,
    out_dir: &Path,
) -> Result<Summary> {
    let folders = list_images(images_dir)?;
    let n_images: usize = folders.iter().map(|f| f.samples.len()).sum();
    ensure!(
        n_images > 0,
        "no GenEval images under {} (expected <digits>/samples/<digits>.png)",
        images_dir.display()
    );
    let records = match backend {
        Backend::Detector(det) => {
            let detections = det.detect_all(&folders)?;
            judge_folders(images_dir, &folders, &detections, opts)?
        }
        Backend::Official(scorer) => {
            std::fs::create_dir_all(out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let outfile = out_dir.join("official_results.jsonl");
            let records = scorer.run(images_dir, &outfile)?;
            match_official(&folders, records)?
                .into_iter()
                .flatten()
                .collect()
        }
    };
    write_outputs(&records, out_dir)
}
