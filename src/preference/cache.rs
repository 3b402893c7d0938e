//! Image codes encoded once and cached on disk, so DPO never re-runs the image tokenizer on the
//! same picture (the seed code re-encodes every image every step).
//!
//! An entry's key is the SHA-256 of the image file's bytes within a namespace for the tokenizer's
//! identity string (e.g. checkpoint name + weights hash): a different identity never sees another
//! tokenizer's codes. Layout under the cache dir, one folder per identity:
//!
//! ```text
//! <cache_dir>/<sha256(identity)[..16]>/codes.safetensors   "codes": int64 [N, L]
//! <cache_dir>/<sha256(identity)[..16]>/index.json          identity, L, N, sha256 of codes file,
//!                                                          image sha256 → row
//! ```
//!
//! Rows are only ever appended and the index records the codes file's hash, so a stale or
//! half-written pair of files is detected on open and the cache starts afresh (with a warning).
use super::hash::{sha256_hex, Sha256};
use super::pairs::PreferencePair;
use crate::models::ImageTokenizer;
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const CODES_FILE: &str = "codes.safetensors";
const INDEX_FILE: &str = "index.json";
const FORMAT: u32 = 1;
/// Persist progress every this many encoded batches, so a crash loses little work.
const SAVE_EVERY_BATCHES: usize = 50;

/// Decodes PNG bytes into float [3, H, W] in [-1, 1] (x / 127.5 − 1, as Show-o's transforms).
/// Grey and RGBA images are converted to RGB (alpha dropped).
pub fn png_bytes_to_tensor(bytes: &[u8], name: &str) -> Result<Tensor> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .with_context(|| format!("decoding PNG {name}"))?
        .to_rgb8();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let t = Tensor::from_slice(img.as_raw())
        .view([h, w, 3])
        .permute([2, 0, 1]);
    Ok(t.to_kind(Kind::Float) / 127.5 - 1.0)
}

/// Reads a PNG file into float [3, H, W] in [-1, 1]; stack several for the `[B, 3, H, W]` batch.
pub fn png_to_tensor(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    png_bytes_to_tensor(&bytes, &path.display().to_string())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    format: u32,
    tokenizer: String,
    code_len: usize,
    rows: usize,
    codes_sha256: String,
    /// image sha256 (hex) → row of `codes`.
    entries: BTreeMap<String, usize>,
}

/// Counts from one [`CodeCache::encode_images`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Distinct images (by content) requested.
    pub unique_images: usize,
    /// Of those, already in the cache.
    pub cache_hits: usize,
    /// Of those, newly encoded.
    pub encoded: usize,
    /// Tokenizer `encode` calls made.
    pub batches: usize,
}

/// The on-disk code cache for one tokenizer identity.
pub struct CodeCache {
    dir: PathBuf,
    tokenizer_id: String,
    code_len: Option<usize>,
    /// Row-major [rows, code_len].
    codes: Vec<i64>,
    entries: BTreeMap<String, usize>,
    dirty: bool,
}

impl CodeCache {
    /// Opens (or starts) the cache for `tokenizer_id` under `cache_dir`. A missing, stale or
    /// inconsistent cache is replaced by an empty one — it only costs re-encoding.
    pub fn open(cache_dir: &Path, tokenizer_id: &str) -> Result<Self> {
        ensure!(
            !tokenizer_id.is_empty(),
            "code cache: the tokenizer identity string is empty"
        );
        let dir = cache_dir.join(&sha256_hex(tokenizer_id.as_bytes())[..16]);
        let mut cache = Self {
            dir,
            tokenizer_id: tokenizer_id.to_string(),
            code_len: None,
            codes: Vec::new(),
            entries: BTreeMap::new(),
            dirty: false,
        };
        let index_path = cache.dir.join(INDEX_FILE);
        if index_path.exists() {
            if let Err(e) = cache.load() {
                eprintln!(
                    "warning: ignoring image-code cache {}: {e:#}",
                    cache.dir.display()
                );
                cache.code_len = None;
                cache.codes.clear();
                cache.entries.clear();
            }
        }
        Ok(cache)
    }

    fn load(&mut self) -> Result<()> {
        let index_path = self.dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&index_path)
            .with_context(|| format!("reading {}", index_path.display()))?;
        let index: Index = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", index_path.display()))?;
        ensure!(
            index.format == FORMAT,
            "format {} (expected {FORMAT})",
            index.format
        );
        ensure!(
            index.tokenizer == self.tokenizer_id,
            "made for tokenizer '{}', not '{}'",
            index.tokenizer,
            self.tokenizer_id
        );
        let codes_path = self.dir.join(CODES_FILE);
        let bytes = std::fs::read(&codes_path)
            .with_context(|| format!("reading {}", codes_path.display()))?;
        ensure!(
            sha256_hex(&bytes) == index.codes_sha256,
            "{} does not match its index (written by another run?)",
            codes_path.display()
        );
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("parsing safetensors {}", codes_path.display()))?;
        let view = st
            .tensor("codes")
            .with_context(|| format!("tensor 'codes' in {}", codes_path.display()))?;
        ensure!(
            view.dtype() == safetensors::Dtype::I64,
            "'codes' has dtype {:?}, expected I64",
            view.dtype()
        );
        ensure!(
            view.shape() == [index.rows, index.code_len],
            "'codes' has shape {:?}, index says [{}, {}]",
            view.shape(),
            index.rows,
            index.code_len
        );
        ensure!(
            index.entries.values().all(|&r| r < index.rows),
            "index rows out of range"
        );
        self.codes = view
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        self.code_len = Some(index.code_len);
        self.entries = index.entries;
        Ok(())
    }

    /// Number of cached images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The folder holding this identity's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Cached codes [L] (int64, CPU) of the image whose bytes hash to `image_sha256`.
    pub fn get(&self, image_sha256: &str) -> Option<Tensor> {
        let (&row, l) = (self.entries.get(image_sha256)?, self.code_len?);
        Some(Tensor::from_slice(&self.codes[row * l..(row + 1) * l]))
    }

    fn insert(&mut self, key: String, codes: &[i64]) -> Result<()> {
        match self.code_len {
            None => self.code_len = Some(codes.len()),
            Some(l) => ensure!(
                l == codes.len(),
                "tokenizer '{}' returned {} codes per image, the cache holds {l}",
                self.tokenizer_id,
                codes.len()
            ),
        }
        if self.entries.contains_key(&key) {
            return Ok(());
        }
        let row = self.entries.len();
        self.codes.extend_from_slice(codes);
        self.entries.insert(key, row);
        self.dirty = true;
        Ok(())
    }

    /// Writes the cache (codes first, then the index that vouches for them), each atomically.
    pub fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let l = self.code_len.unwrap_or(0);
        let rows = self.entries.len();
        let data: Vec<u8> = self.codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        let view = TensorView::new(safetensors::Dtype::I64, vec![rows, l], &data)
            .map_err(|e| anyhow::anyhow!("building codes tensor [{rows}, {l}]: {e}"))?;
        let bytes = safetensors::serialize([("codes", view)], None)
            .map_err(|e| anyhow::anyhow!("serializing image-code cache: {e}"))?;
        let index = Index {
            format: FORMAT,
            tokenizer: self.tokenizer_id.clone(),
            code_len: l,
            rows,
            codes_sha256: sha256_hex(&bytes),
            entries: self.entries.clone(),
        };
        crate::util::atomic_write(&self.dir.join(CODES_FILE), &bytes)?;
        let json = serde_json::to_string_pretty(&index)?;
        crate::util::atomic_write(&self.dir.join(INDEX_FILE), json.as_bytes())?;
        self.dirty = false;
        Ok(())
    }

    /// Codes [L] (int64, CPU) for each of `paths`, encoding only images whose content is not
    /// cached yet, `batch_size` at a time on `device`. Saves the cache as it goes and at the end.
    pub fn encode_images(
        &mut self,
        paths: &[PathBuf],
        tokenizer: &dyn ImageTokenizer,
        device: Device,
        batch_size: usize,
    ) -> Result<(Vec<Tensor>, EncodeStats)> {
        ensure!(batch_size > 0, "code cache: batch_size must be > 0");
        let mut keys = Vec::with_capacity(paths.len());
        // Missing images by content, first path seen; the bytes are re-read at encode time rather
        // than held, so memory stays bounded by one batch.
        let mut missing: Vec<(String, &Path)> = Vec::new();
        let mut unique: HashSet<String> = HashSet::new();
        for p in paths {
            let key = hash_file(p)?;
            if unique.insert(key.clone()) && !self.entries.contains_key(&key) {
                missing.push((key.clone(), p));
            }
            keys.push(key);
        }
        let mut stats = EncodeStats {
            unique_images: unique.len(),
            cache_hits: unique.len() - missing.len(),
            ..Default::default()
        };
        for chunk in missing.chunks(batch_size) {
            let images: Vec<Tensor> = chunk
                .iter()
                .map(|(_, p)| png_to_tensor(p))
                .collect::<Result<_>>()?;
            let first = images[0].size();
            for ((_, p), img) in chunk.iter().zip(&images) {
                ensure!(
                    img.size() == first,
                    "image {} is {:?} but {} in the same batch is {first:?}; validate the pairs with an image size",
                    p.display(),
                    img.size(),
                    chunk[0].1.display()
                );
            }
            let batch = Tensor::stack(&images, 0).to_device(device);
            let codes = tch::no_grad(|| tokenizer.encode(&batch))
                .with_context(|| format!("encoding images {} .. ", chunk[0].1.display()))?;
            stats.batches += 1;
            let b = chunk.len() as i64;
            let size = codes.size();
            ensure!(
                size.len() == 2 && size[0] == b && size[1] > 0,
                "tokenizer '{}' returned codes of shape {size:?} for {b} images, expected [{b}, L]",
                self.tokenizer_id
            );
            let codes = codes
                .to_device(Device::Cpu)
                .to_kind(Kind::Int64)
                .contiguous();
            let flat: Vec<i64> = Vec::<i64>::try_from(codes.view([-1])).context("reading codes")?;
            let k = tokenizer.codebook_size();
            if let Some(bad) = flat.iter().find(|&&c| c < 0 || c >= k) {
                bail!(
                    "tokenizer '{}' returned code {bad} outside [0, {k})",
                    self.tokenizer_id
                );
            }
            let l = size[1] as usize;
            for ((key, _), row) in chunk.iter().zip(flat.chunks_exact(l)) {
                self.insert(key.clone(), row)?;
            }
            stats.encoded += chunk.len();
            if stats.batches.is_multiple_of(SAVE_EVERY_BATCHES) {
                self.save()?;
            }
        }
        self.save()?;
        let out = keys
            .iter()
            .map(|k| self.get(k).expect("every key is cached after encoding"))
            .collect();
        Ok((out, stats))
    }
}

/// SHA-256 (hex) of a file's bytes, streamed.
pub fn hash_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("opening image {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading image {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(super::hash::hex(&h.finalize()))
}

/// Codes `(chosen [L], rejected [L])` (int64, CPU) for every pair, encoding each distinct image at
/// most once across runs. `tokenizer_id` must change whenever the tokenizer's weights or
/// preprocessing do (use e.g. the checkpoint name plus its file hash).
pub fn encode_all(
    pairs: &[PreferencePair],
    tokenizer: &dyn ImageTokenizer,
    tokenizer_id: &str,
    cache_dir: &Path,
    device: Device,
    batch_size: usize,
) -> Result<Vec<(Tensor, Tensor)>> {
    let mut cache = CodeCache::open(cache_dir, tokenizer_id)?;
    let paths: Vec<PathBuf> = pairs
        .iter()
        .flat_map(|p| [p.chosen_path.clone(), p.rejected_path.clone()])
        .collect();
    let (codes, _) = cache.encode_images(&paths, tokenizer, device, batch_size)?;
    let mut it = codes.into_iter();
    Ok(pairs
        .iter()
        .map(|_| {
            (
                it.next().expect("chosen codes"),
                it.next().expect("rejected codes"),
            )
        })
        .collect())
}
