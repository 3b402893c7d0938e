//! Strict safetensors loading for LLaVA-OneVision: sharded checkpoints via `model.safetensors.index.json`,
//! HF key layouts mapped to the original LLaVA-NeXT names, and a report of every missing, unexpected
//! or wrong-shape tensor (expected vs found) instead of failing on the first one.
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Prefix of the SigLIP tower in the original LLaVA-NeXT layout.
pub const VISION_PREFIX: &str = "model.vision_tower.vision_tower.vision_model.";

/// Maps a key of any known LLaVA-OneVision layout to its original LLaVA-NeXT name (spec-judges §5):
/// HF tf4.47 (`language_model.model.*`, `vision_tower.vision_model.*`, `multi_modal_projector.linear_N`),
/// tf5.24 saved (`vision_tower.*` without `vision_model.`) and tf5.24 in-memory (`model.language_model.*`).
pub fn canonical_name(name: &str) -> String {
    if name.starts_with(VISION_PREFIX) {
        return name.to_string();
    }
    for p in [
        "model.vision_tower.vision_model.",
        "model.vision_tower.",
        "vision_tower.vision_model.",
        "vision_tower.",
    ] {
        if let Some(rest) = name.strip_prefix(p) {
            return format!("{VISION_PREFIX}{rest}");
        }
    }
    for (p, q) in [
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
        (
            "model.multi_modal_projector.linear_1.",
            "model.mm_projector.0.",
        ),
        (
            "model.multi_modal_projector.linear_2.",
            "model.mm_projector.2.",
        ),
        ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ] {
        if let Some(rest) = name.strip_prefix(p) {
            return format!("{q}{rest}");
        }
    }
    if name == "image_newline" {
        return "model.image_newline".into();
    }
    name.to_string()
}

/// The safetensors files of a checkpoint folder: the shards named by `model.safetensors.index.json`,
/// else `model.safetensors`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no weight_map object", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .map(|f| {
                f.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{}: non-string shard", index.display()))
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{}: neither model.safetensors.index.json nor model.safetensors",
        dir.display()
    )
}

struct Entry {
    tensor: Tensor,
    /// File and original key, for error messages.
    origin: String,
}

/// A pool of named tensors consumed by the model constructors. `get` checks the shape and moves the
/// tensor to the target device/kind; `finish` fails with the full list of problems.
pub struct Weights {
    tensors: HashMap<String, Entry>,
    used: HashSet<String>,
    ignored_prefixes: Vec<String>,
    errors: Vec<String>,
    device: Device,
    kind: Kind,
}

impl Weights {
    /// Loads all tensors of `files`, renaming keys with [`canonical_name`] (duplicates are errors).
    pub fn from_files(files: &[PathBuf], device: Device, kind: Kind) -> Result<Self> {
        let mut tensors = HashMap::new();
        for f in files {
            let list = Tensor::read_safetensors(f)
                .with_context(|| format!("reading safetensors {}", f.display()))?;
            for (name, t) in list {
                let canon = canonical_name(&name);
                let origin = format!("{}:{name}", f.display());
                if let Some(prev) = tensors.insert(
                    canon.clone(),
                    Entry {
                        tensor: t,
                        origin: origin.clone(),
                    },
                ) {
                    bail!(
                        "tensor '{canon}' appears twice: {} and {origin}",
                        prev.origin
                    );
                }
            }
        }
        Ok(Self {
            tensors,
            used: HashSet::new(),
            ignored_prefixes: vec![],
            errors: vec![],
            device,
            kind,
        })
    }

    /// Loads a checkpoint folder (see [`checkpoint_files`]).
    pub fn from_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::from_files(&checkpoint_files(dir)?, device, kind)
    }

    /// Wraps already-loaded tensors (names taken as they are).
    pub fn from_tensors(list: Vec<(String, Tensor)>, device: Device, kind: Kind) -> Self {
        let tensors = list
            .into_iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    Entry {
                        tensor: t,
                        origin: n,
                    },
                )
            })
            .collect();
        Self {
            tensors,
            used: HashSet::new(),
            ignored_prefixes: vec![],
            errors: vec![],
            device,
            kind,
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Tensors under `prefix` that exist in the checkpoint but are intentionally unused
    /// (SigLIP `post_layernorm`, dropped layers, `head.*`).
    pub fn ignore_prefix(&mut self, prefix: &str) {
        self.ignored_prefixes.push(prefix.to_string());
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name` with exactly `shape`, on the target device and kind. On a problem the error
    /// is recorded and an empty placeholder returned; [`Weights::finish`] then fails.
    pub fn get(&mut self, name: &str, shape: &[i64]) -> Tensor {
        self.get_rows(name, shape, None)
    }

    /// Like [`Weights::get`], keeping only the first `keep_rows` rows of dim 0 (vocab truncation of the
    /// seed's `resize_token_embeddings(len(tokenizer))`).
    pub fn get_rows(&mut self, name: &str, shape: &[i64], keep_rows: Option<i64>) -> Tensor {
        let placeholder = || Tensor::empty([0], (Kind::Float, Device::Cpu));
        let Some(e) = self.tensors.get(name) else {
            self.errors.push(format!(
                "missing tensor '{name}' (expected shape {shape:?})"
            ));
            return placeholder();
        };
        self.used.insert(name.to_string());
        let found = e.tensor.size();
        if found != shape {
            self.errors.push(format!(
                "tensor '{name}' ({}): expected shape {shape:?}, found {found:?}",
                e.origin
            ));
            return placeholder();
        }
        let t = match keep_rows {
            Some(k) if k < shape[0] => e.tensor.narrow(0, 0, k),
            Some(k) if k > shape[0] => {
                self.errors.push(format!(
                    "tensor '{name}': cannot keep {k} rows of {}",
                    shape[0]
                ));
                return placeholder();
            }
            _ => e.tensor.shallow_clone(),
        };
        let kind = if t.is_floating_point() {
            self.kind
        } else {
            t.kind()
        };
        t.to_device(self.device).to_kind(kind).contiguous().detach()
    }

    /// Fails unless every tensor was consumed or ignored and no `get` failed.
    pub fn finish(self) -> Result<()> {
        let mut errors = self.errors;
        let unexpected: BTreeMap<&String, &Entry> = self
            .tensors
            .iter()
            .filter(|(n, _)| {
                !self.used.contains(*n) && !self.ignored_prefixes.iter().any(|p| n.starts_with(p))
            })
            .collect();
        for (n, e) in unexpected {
            errors.push(format!(
                "unexpected tensor '{n}' ({}, shape {:?})",
                e.origin,
                e.tensor.size()
            ));
        }
        if errors.is_empty() {
            return Ok(());
        }
        let shown: Vec<&String> = errors.iter().take(40).collect();
        let more = if errors.len() > 40 {
            format!("\n  … and {} more", errors.len() - 40)
        } else {
            String::new()
        };
        bail!(
            "checkpoint does not match the model ({} problems):\n  {}{more}",
            errors.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_layouts_map_to_original_names() {
        let v = VISION_PREFIX;
        for (hf, orig) in [
            (
                "language_model.model.layers.3.mlp.up_proj.weight",
                "model.layers.3.mlp.up_proj.weight".to_string(),
            ),
            (
                "model.language_model.norm.weight",
                "model.norm.weight".into(),
            ),
            ("language_model.lm_head.weight", "lm_head.weight".into()),
            ("lm_head.weight", "lm_head.weight".into()),
            (
                "multi_modal_projector.linear_1.bias",
                "model.mm_projector.0.bias".into(),
            ),
            (
                "model.multi_modal_projector.linear_2.weight",
                "model.mm_projector.2.weight".into(),
            ),
            ("image_newline", "model.image_newline".into()),
            ("model.image_newline", "model.image_newline".into()),
            (
                "vision_tower.vision_model.post_layernorm.bias",
                format!("{v}post_layernorm.bias"),
            ),
            (
                "vision_tower.encoder.layers.0.mlp.fc1.weight",
                format!("{v}encoder.layers.0.mlp.fc1.weight"),
            ),
            (
                "model.vision_tower.embeddings.patch_embedding.bias",
                format!("{v}embeddings.patch_embedding.bias"),
            ),
            (
                &format!("{v}embeddings.position_embedding.weight"),
                format!("{v}embeddings.position_embedding.weight"),
            ),
            (
                "model.mm_projector.0.weight",
                "model.mm_projector.0.weight".into(),
            ),
        ] {
            assert_eq!(canonical_name(hf), orig, "{hf}");
        }
    }

    #[test]
    fn strict_errors_name_tensors_and_shapes() {
        let mut w = Weights::from_tensors(
            vec![
                (
                    "a".into(),
                    Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
                ),
                ("b".into(), Tensor::zeros([4], (Kind::Float, Device::Cpu))),
                (
                    "extra".into(),
                    Tensor::zeros([1], (Kind::Float, Device::Cpu)),
                ),
                (
                    "skip.me".into(),
                    Tensor::zeros([1], (Kind::Float, Device::Cpu)),
                ),
            ],
            Device::Cpu,
            Kind::Float,
        );
        w.ignore_prefix("skip.");
        let _ = w.get("a", &[2, 3]);
        let _ = w.get("b", &[5]);
        let _ = w.get("c", &[7]);
        let msg = format!("{:#}", w.finish().unwrap_err());
        assert!(msg.contains("3 problems"), "{msg}");
        assert!(
            msg.contains("'b'") && msg.contains("expected shape [5], found [4]"),
            "{msg}"
        );
        assert!(
            msg.contains("missing tensor 'c' (expected shape [7])"),
            "{msg}"
        );
        assert!(msg.contains("unexpected tensor 'extra'"), "{msg}");
        assert!(!msg.contains("skip.me"), "{msg}");
    }

    #[test]
    fn get_rows_truncates_vocab() {
        let t = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([6, 2]);
        let mut w = Weights::from_tensors(vec![("e".into(), t)], Device::Cpu, Kind::Float);
        let e = w.get_rows("e", &[6, 2], Some(4));
        assert_eq!(e.size(), vec![4, 2]);
        assert_eq!(e.double_value(&[3, 1]), 7.0);
        w.finish().unwrap();
    }
}
