//! GenEval's image-folder layout (spec §1), metadata loading, resumable generation and sharding.
//!
//! ```text
//! <out>/00012/metadata.jsonl      one JSON object (read with json.load upstream)
//! <out>/00012/samples/0003.png    any name matching ^\d+\.png
//! ```
//! Listing follows `evaluate_images.py`: subfolders whose name is all digits, images whose name
//! *starts with* `\d+\.png` (upstream uses `re.match` without an end anchor) and that are regular
//! files. Unlike upstream (`os.listdir` order), listings are sorted: by numeric value of the
//! leading digits, then by name. Digits are ASCII only (upstream's `str.isdigit` also accepts
//! other Unicode digits; such names are out of scope).
//!
//! Sharding is round-robin: prompt `i` belongs to shard `i % n`. The metadata file is sorted by
//! tag, so round-robin gives every shard the same mix of tags (and similar run times).
use super::rules::validate_metadata;
use super::{python_json, Metadata};
use crate::util::atomic_write;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Name of the metadata file inside a prompt folder.
pub const METADATA_FILE: &str = "metadata.jsonl";
/// Name of the images subfolder inside a prompt folder.
pub const SAMPLES_DIR: &str = "samples";

/// `00012` for prompt 12 (the reference generator's `{index:0>5}`).
pub fn folder_name(index: usize) -> String {
    format!("{index:05}")
}

/// `0003.png` for sample 3 (README layout).
pub fn sample_name(n: usize) -> String {
    format!("{n:04}.png")
}

/// `00012/samples/0003.png`: the path of a sample relative to the image folder.
pub fn sample_rel(index: usize, n: usize) -> String {
    format!("{}/{SAMPLES_DIR}/{}", folder_name(index), sample_name(n))
}

/// Writes `<out>/<index:05>/metadata.jsonl` (one line, `json.dumps` form) atomically.
pub fn write_metadata(out: &Path, index: usize, meta: &Metadata) -> Result<PathBuf> {
    let path = out.join(folder_name(index)).join(METADATA_FILE);
    atomic_write(&path, format!("{}\n", python_json(meta)).as_bytes())?;
    Ok(path)
}

/// Writes `<out>/<index:05>/samples/<n:04>.png` atomically.
pub fn write_sample(out: &Path, index: usize, n: usize, png: &[u8]) -> Result<PathBuf> {
    let path = out
        .join(folder_name(index))
        .join(SAMPLES_DIR)
        .join(sample_name(n));
    atomic_write(&path, png)?;
    Ok(path)
}

/// Reads a prompt folder's metadata.jsonl as ONE JSON value, as upstream's `json.load` does.
pub fn read_folder_metadata(folder: &Path) -> Result<Metadata> {
    let path = folder.join(METADATA_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let meta: Metadata = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected one GenEval metadata JSON object",
            path.display()
        )
    })?;
    validate_metadata(&meta).with_context(|| format!("{}", path.display()))?;
    Ok(meta)
}

/// Loads an evaluation_metadata.jsonl (one metadata object per line; blank lines skipped).
pub fn load_metadata_jsonl(path: &Path) -> Result<Vec<Metadata>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let meta: Metadata = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a GenEval metadata object",
                path.display(),
                i + 1
            )
        })?;
        validate_metadata(&meta).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        out.push(meta);
    }
    Ok(out)
}

/// A name upstream treats as a prompt folder (`str.isdigit`, ASCII here).
pub fn is_prompt_folder_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// A name upstream scores: `re.match(r"\d+\.png", name)`, i.e. a prefix match.
pub fn is_image_name(name: &str) -> bool {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && name[digits..].starts_with(".png")
}

/// Sort key: numeric value of the leading digits (as length + digits without leading zeros),
/// then the whole name.
fn numeric_key(name: &str) -> (usize, String, String) {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    let trimmed = digits.trim_start_matches('0').to_string();
    (trimmed.len(), trimmed, name.to_string())
}

/// One image to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Relative to the image folder, `/`-separated: `00012/samples/0003.png`.
    pub rel: String,
    pub path: PathBuf,
}

/// One prompt folder with its metadata and images.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptFolder {
    pub name: String,
    pub path: PathBuf,
    pub metadata: Metadata,
    pub samples: Vec<Sample>,
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        // Non-UTF-8 names can match neither pattern.
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort_by_key(|n| numeric_key(n));
    Ok(names)
}

/// Lists the prompt folders and images of a GenEval image folder, sorted. A digit folder without
/// metadata.jsonl or samples/ is an error (upstream crashes on it too).
pub fn list_images(images_dir: &Path) -> Result<Vec<PromptFolder>> {
    let mut out = Vec::new();
    for name in file_names(images_dir)? {
        let path = images_dir.join(&name);
        if !is_prompt_folder_name(&name) || !path.is_dir() {
            continue;
        }
        let metadata = read_folder_metadata(&path)?;
        let samples_dir = path.join(SAMPLES_DIR);
        let samples = file_names(&samples_dir)?
            .into_iter()
            .filter(|n| is_image_name(n) && samples_dir.join(n).is_file())
            .map(|n| Sample {
                rel: format!("{name}/{SAMPLES_DIR}/{n}"),
                path: samples_dir.join(&n),
            })
            .collect();
        out.push(PromptFolder {
            name,
            path,
            metadata,
            samples,
        });
    }
    Ok(out)
}

/// Whether prompt `index` is already generated in `out`: its metadata.jsonl holds `meta` and
/// samples `0000.png..` up to `n_images` exist and are non-empty. A folder holding a different
/// prompt is an error (the output folder belongs to another prompt set).
pub fn prompt_folder_complete(
    out: &Path,
    index: usize,
    meta: &Metadata,
    n_images: usize,
) -> Result<bool> {
    let folder = out.join(folder_name(index));
    if !folder.join(METADATA_FILE).is_file() {
        return Ok(false);
    }
    let found = read_folder_metadata(&folder)?;
    ensure!(
        &found == meta,
        "{} holds prompt '{}', expected '{}'",
        folder.display(),
        found.prompt,
        meta.prompt
    );
    let all = (0..n_images).all(|n| {
        std::fs::metadata(folder.join(SAMPLES_DIR).join(sample_name(n)))
            .is_ok_and(|m| m.is_file() && m.len() > 0)
    });
    Ok(all)
}

/// `--shard i/n`: this process generates prompts with `index % n == i` (0-based `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some((i, n)) = s.split_once('/') else {
            bail!("shard '{s}': expected i/n, e.g. 0/4");
        };
        let index: usize = i
            .trim()
            .parse()
            .with_context(|| format!("shard '{s}': bad index '{i}'"))?;
        let count: usize = n
            .trim()
            .parse()
            .with_context(|| format!("shard '{s}': bad count '{n}'"))?;
        ensure!(count >= 1, "shard '{s}': count must be at least 1");
        ensure!(
            index < count,
            "shard '{s}': index must be below the count (0-based)"
        );
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn contains(&self, prompt_index: usize) -> bool {
        prompt_index % self.count == self.index
    }

    /// The prompt indices (out of `n_prompts`) of this shard, ascending.
    pub fn prompt_indices(&self, n_prompts: usize) -> Vec<usize> {
        (self.index..n_prompts).step_by(self.count).collect()
    }
}

/// (path relative to the image folder, bytes) of each file of a prompt folder.
type FolderFiles = Vec<(String, Vec<u8>)>;

/// Every file of a prompt folder that scoring reads: metadata.jsonl and the listed samples,
/// as (path relative to the image folder, bytes).
fn folder_files(f: &PromptFolder) -> Result<FolderFiles> {
    let mut files = Vec::new();
    let meta = f.path.join(METADATA_FILE);
    files.push((
        format!("{}/{METADATA_FILE}", f.name),
        std::fs::read(&meta).with_context(|| format!("reading {}", meta.display()))?,
    ));
    for s in &f.samples {
        files.push((
            s.rel.clone(),
            std::fs::read(&s.path).with_context(|| format!("reading {}", s.path.display()))?,
        ));
    }
    Ok(files)
}

/// Copies the prompt folders of several shard outputs into `out`. The same folder in two shards
/// is accepted only with identical files. Returns the number of prompt folders in `out`.
pub fn merge_shards(shards: &[&Path], out: &Path) -> Result<usize> {
    let mut seen: std::collections::BTreeMap<String, (PathBuf, FolderFiles)> = Default::default();
    for shard in shards {
        for f in list_images(shard)? {
            let files = folder_files(&f)?;
            if let Some((other, prev)) = seen.get(&f.name) {
                ensure!(
                    prev == &files,
                    "prompt folder {} differs between {} and {}",
                    f.name,
                    other.display(),
                    shard.display()
                );
                continue;
            }
            for (rel, bytes) in &files {
                atomic_write(&out.join(rel), bytes)?;
            }
            seen.insert(f.name.clone(), (shard.to_path_buf(), files));
        }
    }
    Ok(list_images(out)?.len())
}

/// Checks that two image folders hold the same scoring input: the same prompt folder names,
/// metadata and sample names, and byte-identical files. The error names the first difference.
pub fn compare_sets(a: &Path, b: &Path) -> Result<()> {
    let (la, lb) = (list_images(a)?, list_images(b)?);
    let names = |l: &[PromptFolder]| l.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    ensure!(
        names(&la) == names(&lb),
        "prompt folders differ: {} has {:?}, {} has {:?}",
        a.display(),
        names(&la),
        b.display(),
        names(&lb)
    );
    for (fa, fb) in la.iter().zip(&lb) {
        ensure!(
            fa.metadata == fb.metadata,
            "metadata of {} differs",
            fa.name
        );
        let (xa, xb) = (folder_files(fa)?, folder_files(fb)?);
        let rels = |x: &[(String, Vec<u8>)]| x.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
        ensure!(
            rels(&xa) == rels(&xb),
            "files of {} differ: {:?} vs {:?}",
            fa.name,
            rels(&xa),
            rels(&xb)
        );
        for ((rel, ba), (_, bb)) in xa.iter().zip(&xb) {
            ensure!(
                ba == bb,
                "{rel} differs between {} and {}",
                a.display(),
                b.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_upstream_patterns() {
        assert!(is_image_name("0003.png") && is_image_name("00003.png") && is_image_name("7.png"));
        // re.match has no end anchor.
        assert!(is_image_name("0003.png.bak"));
        assert!(
            !is_image_name("0003.PNG") && !is_image_name("a0003.png") && !is_image_name(".png")
        );
        assert!(!is_image_name("0003.jpg") && !is_image_name("grid.png"));
        assert!(
            is_prompt_folder_name("00012")
                && !is_prompt_folder_name("")
                && !is_prompt_folder_name("12a")
        );
        let mut v = vec!["10", "9", "009", "0010"];
        v.sort_by_key(|n| numeric_key(n));
        assert_eq!(v, ["009", "9", "0010", "10"]);
    }

    #[test]
    fn shard_parsing_and_split() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s.prompt_indices(8), vec![1, 4, 7]);
        assert!(s.contains(4) && !s.contains(5));
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(s.to_string(), "1/3");
    }
}
