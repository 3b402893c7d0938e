//! The preference-pairs JSONL file: one object per line with `prompt`, `chosen`, `rejected`
//! (image paths relative to the file's folder) and optional `chosen_score`, `rejected_score`,
//! `tag`, `metadata` (any JSON). Unknown keys are errors, so a typo never turns into a silently
//! ignored column.
//!
//! [`load_pairs`] validates every line before training starts — JSON, fields, and that each image
//! exists, decodes as a PNG and has the expected size — and reports problems as
//! `pairs.jsonl:LINE: ...`. With `skip_bad_rows` the bad lines are skipped and counted instead.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One line of a pairs file, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRecord {
    pub prompt: String,
    /// Preferred image, relative to the pairs file's folder.
    pub chosen: String,
    /// Dispreferred image, relative to the pairs file's folder.
    pub rejected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The sampler step at which each image token of the chosen image was committed (written by
    /// pair building; DPO's trajectory likelihood replays it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_commit: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_commit: Option<Vec<u16>>,
}

/// A validated pair: the record plus where it came from and its resolved image paths.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub record: PairRecord,
    /// 1-based line number in the pairs file.
    pub line: usize,
    pub chosen_path: PathBuf,
    pub rejected_path: PathBuf,
}

/// How strictly to load a pairs file.
#[derive(Debug, Clone, Default)]
pub struct PairsOptions {
    /// Expected image size `(width, height)`; `None` accepts any size.
    pub image_size: Option<(u32, u32)>,
    /// Skip (and count) bad lines instead of failing.
    pub skip_bad_rows: bool,
}

/// A line that failed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// What [`load_pairs`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairsReport {
    /// Non-blank lines read.
    pub rows: usize,
    /// Pairs kept.
    pub kept: usize,
    /// Lines skipped (only non-empty when `skip_bad_rows`).
    pub skipped: Vec<BadRow>,
}

/// Outcome of checking one image file, cached per path (an image is often shared by many pairs).
#[derive(Clone)]
enum ImageCheck {
    Ok { width: u32, height: u32 },
    Bad(String),
}

fn check_image_file(path: &Path) -> ImageCheck {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ImageCheck::Bad("not found".into())
        }
        Err(e) => return ImageCheck::Bad(format!("unreadable ({e})")),
    };
    // A full decode, not just the header: truncated or corrupt files must fail here, not mid-epoch.
    match image::load_from_memory_with_format(&bytes, image::ImageFormat::Png) {
        Ok(img) => ImageCheck::Ok {
            width: img.width(),
            height: img.height(),
        },
        Err(e) => ImageCheck::Bad(format!("is not a readable PNG ({e})")),
    }
}

struct Validator<'a> {
    base: &'a Path,
    opts: &'a PairsOptions,
    seen: HashMap<PathBuf, ImageCheck>,
}

impl Validator<'_> {
    fn image(&mut self, role: &str, rel: &str) -> std::result::Result<PathBuf, String> {
        if rel.is_empty() {
            return Err(format!("{role} image path is empty"));
        }
        let path = self.base.join(rel);
        let check = self
            .seen
            .entry(path.clone())
            .or_insert_with(|| check_image_file(&path))
            .clone();
        match check {
            ImageCheck::Bad(why) => Err(format!("{role} image '{rel}' {why}")),
            ImageCheck::Ok { width, height } => match self.opts.image_size {
                Some((w, h)) if (w, h) != (width, height) => Err(format!(
                    "{role} image '{rel}' is {width}x{height}, expected {w}x{h}"
                )),
                _ => Ok(path),
            },
        }
    }

    fn row(&mut self, text: &str, line: usize) -> std::result::Result<PreferencePair, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
        if !value.is_object() {
            return Err("expected a JSON object".into());
        }
        let record: PairRecord =
            serde_json::from_value(value).map_err(|e| format!("invalid pair: {e}"))?;
        if record.prompt.trim().is_empty() {
            return Err("empty prompt".into());
        }
        let chosen_path = self.image("chosen", &record.chosen)?;
        let rejected_path = self.image("rejected", &record.rejected)?;
        // Identical images make h ≡ 0: the pair carries no preference, only noise.
        if chosen_path == rejected_path {
            return Err(format!(
                "chosen and rejected are the same image '{}'",
                record.chosen
            ));
        }
        Ok(PreferencePair {
            record,
            line,
            chosen_path,
            rejected_path,
        })
    }
}

/// Reads and validates a pairs file. Every line is checked; without `skip_bad_rows` the first bad
/// line is reported as `FILE:LINE: reason` (with a count of further bad lines).
pub fn load_pairs(path: &Path, opts: &PairsOptions) -> Result<(Vec<PreferencePair>, PairsReport)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading pairs file {}", path.display()))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut v = Validator {
        base,
        opts,
        seen: HashMap::new(),
    };
    let mut pairs = Vec::new();
    let mut bad = Vec::new();
    let mut rows = 0;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let result = match std::str::from_utf8(raw) {
            Err(e) => Err(format!("not valid UTF-8 ({e})")),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => v.row(text.trim_end_matches('\r'), line),
        };
        rows += 1;
        match result {
            Ok(p) => pairs.push(p),
            Err(reason) => bad.push(BadRow { line, reason }),
        }
    }
    let file = path.display();
    if !opts.skip_bad_rows {
        if let Some(first) = bad.first() {
            let mut msg = format!("{file}:{}: {}", first.line, first.reason);
            if bad.len() > 1 {
                let lines: Vec<String> = bad[1..]
                    .iter()
                    .take(10)
                    .map(|b| b.line.to_string())
                    .collect();
                let more = if bad.len() > 11 { ", ..." } else { "" };
                msg.push_str(&format!(
                    " ({} more bad rows, lines {}{more}; set skip_bad_rows to skip them)",
                    bad.len() - 1,
                    lines.join(", ")
                ));
            }
            bail!(msg);
        }
    }
    if pairs.is_empty() {
        bail!("{file}: no valid pairs ({rows} rows, {} bad)", bad.len());
    }
    let report = PairsReport {
        rows,
        kept: pairs.len(),
        skipped: bad,
    };
    Ok((pairs, report))
}

/// Writes `records` as a pairs file, atomically (temp file + rename).
pub fn write_pairs(path: &Path, records: &[PairRecord]) -> Result<()> {
    let mut out = String::new();
    for (i, r) in records.iter().enumerate() {
        let line = serde_json::to_string(r)
            .with_context(|| format!("serializing pair {i} for {}", path.display()))?;
        out.push_str(&line);
        out.push('\n');
    }
    crate::util::atomic_write(path, out.as_bytes())
}

/// The path of `image` relative to the folder of `pairs_file`, as stored in a record. Both are
/// compared as given (no canonicalisation), so build them from the same root.
pub fn relative_image_path(pairs_file: &Path, image: &Path) -> Result<String> {
    let base = pairs_file.parent().unwrap_or(Path::new(""));
    let rel = image.strip_prefix(base).with_context(|| {
        format!(
            "image {} is not under the pairs file's folder {}",
            image.display(),
            base.display()
        )
    })?;
    rel.to_str()
        .map(|s| s.replace('\\', "/"))
        .with_context(|| format!("image path {} is not valid UTF-8", rel.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_skips_absent_optionals() {
        let r = PairRecord {
            prompt: "a red A".into(),
            chosen: "img/0.png".into(),
            rejected: "img/1.png".into(),
            chosen_score: Some(0.9),
            rejected_score: None,
            tag: None,
            metadata: Some(serde_json::json!({"seed": 3, "judge": ["orm", 1]})),
            chosen_commit: None,
            rejected_commit: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(!s.contains("rejected_score") && !s.contains("tag"), "{s}");
        assert_eq!(serde_json::from_str::<PairRecord>(&s).unwrap(), r);
        let e = serde_json::from_str::<PairRecord>(
            r#"{"prompt":"p","chosen":"a","rejected":"b","choosen":1}"#,
        );
        assert!(e.unwrap_err().to_string().contains("choosen"));
    }

    #[test]
    fn relative_paths() {
        let p = relative_image_path(
            Path::new("out/round1/pairs.jsonl"),
            Path::new("out/round1/img/3.png"),
        )
        .unwrap();
        assert_eq!(p, "img/3.png");
        assert!(
            relative_image_path(Path::new("out/pairs.jsonl"), Path::new("elsewhere/3.png"))
                .is_err()
        );
        assert_eq!(
            relative_image_path(Path::new("pairs.jsonl"), Path::new("img/3.png")).unwrap(),
            "img/3.png"
        );
    }
}
