//! Detector backends for GenEval scoring.
//!
//! * [`Detector`]: image + metadata → raw [`Detection`]s (before thresholding); the rules in
//!   [`super::rules`] decide correctness. Implemented by [`DetectionsFile`] here and by the glyph
//!   world's detector.
//! * [`OfficialScorer`]: runs upstream `evaluate_images.py` (or any command writing its
//!   results.jsonl) and takes its verdicts as they are.
use super::layout::{PromptFolder, Sample};
use super::summary::{read_results, ResultRecord};
use super::{Detection, Metadata};
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Produces the raw detections of one image. Implement [`Detector::detect`]; override
/// [`Detector::detect_all`] when the backend works better on whole folders.
pub trait Detector {
    /// Short backend name for messages.
    fn name(&self) -> &str;

    /// Raw detections of one image (any order, unthresholded; scores in [0, 1]).
    fn detect(&mut self, sample: &Sample, meta: &Metadata) -> Result<Vec<Detection>>;

    /// Detections of every sample of every folder: `out[folder][sample]`.
    fn detect_all(&mut self, folders: &[PromptFolder]) -> Result<Vec<Vec<Vec<Detection>>>> {
        folders
            .iter()
            .map(|f| {
                f.samples
                    .iter()
                    .map(|s| {
                        self.detect(s, &f.metadata)
                            .with_context(|| format!("{} detector on {}", self.name(), s.rel))
                    })
                    .collect()
            })
            .collect()
    }
}

/// A `/`-separated relative path without `./` prefixes, for matching image keys.
pub fn normalize_rel(p: &str) -> String {
    p.split(['/', '\\'])
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Deserialize)]
struct DetectionsLine {
    image: String,
    detections: Vec<Detection>,
}

/// Precomputed detections, one JSONL line per image:
/// `{"image": "00012/samples/0003.png", "detections": [{"class": "dog", "score": 0.97,
/// "box": [x1, y1, x2, y2], "color": "brown"}, ...]}`.
#[derive(Debug, Clone, Default)]
pub struct DetectionsFile {
    pub path: PathBuf,
    /// Keyed by the normalised relative image path.
    pub by_image: HashMap<String, Vec<Detection>>,
}

impl DetectionsFile {
    /// Loads the file; errors name file and line (bad JSON, bad fields, a repeated image).
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut by_image = HashMap::new();
        let mut line_of: HashMap<String, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = format!("{}:{}", path.display(), i + 1);
            if line.trim().is_empty() {
                continue;
            }
            let rec: DetectionsLine = serde_json::from_str(line).with_context(|| {
                format!("{at}: expected {{\"image\": ..., \"detections\": [...]}}")
            })?;
            for (k, d) in rec.detections.iter().enumerate() {
                ensure!(
                    d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite()),
                    "{at}: detection {k} ({}) has a non-finite score or box",
                    d.class
                );
            }
            let key = normalize_rel(&rec.image);
            if let Some(prev) = line_of.insert(key.clone(), i + 1) {
                bail!("{at}: image {key} already listed on line {prev}");
            }
            by_image.insert(key, rec.detections);
        }
        Ok(Self {
            path: path.to_path_buf(),
            by_image,
        })
    }

    /// Relative paths of `folders`' samples that have no line in the file.
    pub fn missing(&self, folders: &[PromptFolder]) -> Vec<String> {
        folders
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| !self.by_image.contains_key(&normalize_rel(&s.rel)))
            .map(|s| s.rel.clone())
            .collect()
    }
}

/// Formats a list of paths as "a, b, c and N more".
fn list_some(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let head = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        format!("{head} and {} more", items.len() - SHOWN)
    } else {
        head
    }
}

impl Detector for DetectionsFile {
    fn name(&self) -> &str {
        "detections"
    }

    fn detect(&mut self, sample: &Sample, _meta: &Metadata) -> Result<Vec<Detection>> {
        match self.by_image.get(&normalize_rel(&sample.rel)) {
            Some(d) => Ok(d.clone()),
            None => bail!("{}: no line for image {}", self.path.display(), sample.rel),
        }
    }

    fn detect_all(&mut self, folders: &[PromptFolder]) -> Result<Vec<Vec<Vec<Detection>>>> {
        let missing = self.missing(folders);
        ensure!(
            missing.is_empty(),
            "{}: no detections for {} image(s): {}",
            self.path.display(),
            missing.len(),
            list_some(&missing)
        );
        folders
            .iter()
            .map(|f| {
                f.samples
                    .iter()
                    .map(|s| self.detect(s, &f.metadata))
                    .collect()
            })
            .collect()
    }
}

/// Runs the official scorer through a command template and reads its results.jsonl.
///
/// Placeholders: `{images}` (image folder), `{outfile}` (results.jsonl to write) and
/// `{model_path}` (detector checkpoint folder); each is substituted shell-quoted and the command
/// runs with `sh -c`. Example: `python evaluate_images.py {images} --outfile {outfile}
/// --model-path {model_path}`.
#[derive(Debug, Clone)]
pub struct OfficialScorer {
    pub template: String,
    pub model_path: Option<PathBuf>,
}

/// Quotes `s` for `sh` (single quotes; `'` becomes `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl OfficialScorer {
    /// The shell command for these paths.
    pub fn command(&self, images: &Path, outfile: &Path) -> Result<String> {
        let mut cmd = self
            .template
            .replace("{images}", &shell_quote(&images.to_string_lossy()))
            .replace("{outfile}", &shell_quote(&outfile.to_string_lossy()));
        if cmd.contains("{model_path}") {
            let Some(mp) = &self.model_path else {
                bail!("the official command uses {{model_path}} but no model path was given (--model-path)");
            };
            cmd = cmd.replace("{model_path}", &shell_quote(&mp.to_string_lossy()));
        }
        Ok(cmd)
    }

    /// Runs the command (stdio inherited), checks its exit status and reads `outfile`.
    pub fn run(&self, images: &Path, outfile: &Path) -> Result<Vec<ResultRecord>> {
        let cmd = self.command(images, outfile)?;
        eprintln!("geneval official: {cmd}");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .status()
            .with_context(|| format!("starting sh -c {cmd}"))?;
        ensure!(status.success(), "official scorer failed ({status}): {cmd}");
        ensure!(
            outfile.is_file(),
            "official scorer exited 0 but wrote no {}",
            outfile.display()
        );
        read_results(outfile)
    }
}

/// Matches official records to listed samples by `<folder>/samples/<name>` (the last three
/// components of `filename`). Every sample needs exactly one record, and every record a sample.
pub fn match_official(
    folders: &[PromptFolder],
    records: Vec<ResultRecord>,
) -> Result<Vec<Vec<ResultRecord>>> {
    let mut by_rel: HashMap<String, ResultRecord> = HashMap::new();
    for r in records {
        let norm = normalize_rel(&r.filename);
        let parts: Vec<&str> = norm.rsplitn(4, '/').collect();
        ensure!(
            parts.len() >= 3,
            "official record filename '{}' is not <folder>/samples/<name>",
            r.filename
        );
        let rel = format!("{}/{}/{}", parts[2], parts[1], parts[0]);
        if by_rel.insert(rel.clone(), r).is_some() {
            bail!("official results list {rel} twice");
        }
    }
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for f in folders {
        let mut recs = Vec::new();
        for s in &f.samples {
            match by_rel.remove(&s.rel) {
                Some(r) => {
                    let meta: Metadata = serde_json::from_str(&r.metadata).with_context(|| {
                        format!(
                            "official record for {}: metadata is not GenEval metadata",
                            s.rel
                        )
                    })?;
                    ensure!(
                        meta == f.metadata,
                        "official record for {} has prompt '{}', the folder has '{}'",
                        s.rel,
                        meta.prompt,
                        f.metadata.prompt
                    );
                    recs.push(ResultRecord {
                        file: Some(s.rel.clone()),
                        ..r
                    });
                }
                None => missing.push(s.rel.clone()),
            }
        }
        out.push(recs);
    }
    ensure!(
        missing.is_empty(),
        "official results lack {} image(s): {}",
        missing.len(),
        list_some(&missing)
    );
    let mut extra: Vec<String> = by_rel.into_keys().collect();
    extra.sort();
    ensure!(
        extra.is_empty(),
        "official results list {} image(s) not in the folder: {}",
        extra.len(),
        list_some(&extra)
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_substitutes_quoted_paths() {
        let o = OfficialScorer {
            template: "python ev.py {images} --outfile {outfile} --model-path {model_path}".into(),
            model_path: Some("/m/it's".into()),
        };
        let cmd = o
            .command(Path::new("/a b"), Path::new("/o/r.jsonl"))
            .unwrap();
        assert_eq!(
            cmd,
            r"python ev.py '/a b' --outfile '/o/r.jsonl' --model-path '/m/it'\''s'"
        );
        let o = OfficialScorer {
            model_path: None,
            ..o
        };
        assert!(o.command(Path::new("/a"), Path::new("/o")).is_err());
    }

    #[test]
    fn normalizes_relative_paths() {
        assert_eq!(
            normalize_rel("./00012//samples/0003.png"),
            "00012/samples/0003.png"
        );
        assert_eq!(
            normalize_rel(r"00012\samples\0003.png"),
            "00012/samples/0003.png"
        );
    }
}
