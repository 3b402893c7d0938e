//! Strict checkpoint loading: read a state dict (safetensors or PyTorch `.bin`), check that its
//! names and shapes are exactly those the model declared, and copy it into the model's VarStore
//! keeping the store's dtype (tch's own `VarStore::load` silently adopts the file's dtype).
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Tensor};

/// Reads every tensor of a `.safetensors` or PyTorch (`.bin`/`.pt`) state dict onto the CPU.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        bail!("checkpoint file {} not found", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tensors = match ext {
        "safetensors" => Tensor::read_safetensors(path),
        "bin" | "pt" | "pth" => Tensor::loadz_multi(path),
        _ => bail!(
            "{}: unknown checkpoint format (expected .safetensors or .bin)",
            path.display()
        ),
    }
    .with_context(|| format!("reading {}", path.display()))?;
    Ok(tensors)
}

/// The first existing file among `names` in `dir` (e.g. safetensors before `.bin`, as Show-o's loader).
pub fn find_weights(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    if dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    if !dir.is_dir() {
        bail!("checkpoint directory {} not found", dir.display());
    }
    for n in names {
        let p = dir.join(n);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "no weights in {}: expected one of {}",
        dir.display(),
        names.join(", ")
    )
}

/// Copies `tensors` into `vs` strictly. `optional` names the tensors that may be absent from the
/// file (buffers the caller regenerates); `rename` maps file names to store names (e.g. prefixes).
/// Every missing, unexpected or wrongly-shaped tensor is reported at once.
pub fn load_strict(
    vs: &VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
    optional: &[&str],
) -> Result<()> {
    let vars = vs.variables();
    let mut found: HashMap<String, Tensor> = HashMap::new();
    let mut errors = Vec::new();
    for (name, t) in tensors {
        match vars.get(&name) {
            None => errors.push(format!("unexpected tensor '{name}' {:?}", t.size())),
            Some(v) if v.size() != t.size() => errors.push(format!(
                "tensor '{name}': expected shape {:?}, found {:?}",
                v.size(),
                t.size()
            )),
            Some(_) => {
                found.insert(name, t);
            }
        }
    }
    let mut missing: Vec<&String> = vars
        .keys()
        .filter(|k| !found.contains_key(*k) && !optional.contains(&k.as_str()))
        .collect();
    missing.sort();
    for m in missing {
        errors.push(format!("missing tensor '{m}' {:?}", vars[m].size()));
    }
    if !errors.is_empty() {
        errors.sort();
        bail!(
            "{}: checkpoint does not match the model:\n  {}",
            source.display(),
            errors.join("\n  ")
        );
    }
    tch::no_grad(|| {
        for (name, t) in &found {
            let mut v = vars[name].shallow_clone();
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
        }
    });
    Ok(())
}

/// All variables of `vs` as (name, contiguous CPU tensor) sorted by name, converted to `kind`.
pub fn named_tensors(vs: &VarStore, kind: Option<tch::Kind>) -> Vec<(String, Tensor)> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    vars.into_iter()
        .map(|(n, t)| {
            let t = t.detach().to_device(tch::Device::Cpu);
            let t = match kind {
                Some(k) => t.to_kind(k),
                None => t,
            };
            (n, t.contiguous())
        })
        .collect()
}

/// Writes tensors as safetensors with `{"format":"pt"}` metadata, atomically (one implementation,
/// in the checkpoint module).
pub use crate::train::ckpt::write_safetensors;
