//! Atomic checkpoint directories and safetensors I/O for any `VarStore`.
//!
//! A checkpoint is a directory:
//! - `pytorch_model.safetensors`: every VarStore variable under its VarStore name, written with
//!   `{"format":"pt"}` metadata (safetensors 0.8 crate) so `safetensors.torch.load_file` and
//!   `transformers` accept it;
//! - `config.json`: the model config (any `Serialize`);
//! - `optimizer.safetensors` + `optimizer.json`: [`AdamW`] state;
//! - `trainer_state.json`: [`TrainerState`], written last.
//!
//! Everything is first written into `<dir>.tmp-<owner>`, fsynced, then renamed to `<dir>` (an
//! existing `<dir>` is first renamed to `<dir>.old-<owner>` and deleted afterwards; the owner is
//! `<pid>@<host>`, [`crate::util::owner_tag`]). A kill at any moment therefore leaves the
//! previous checkpoint whole (as `<dir>` or `<dir>.old-<owner>`) or the
//! new one whole; [`find_latest`] ignores `.tmp-` directories. The run directory also holds a
//! `latest` file naming the newest checkpoint directory (for humans and Python tooling).

use crate::train::optim::AdamW;
use crate::train::rng::RngState;
use crate::util::Owner;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, View};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Kind, Tensor};

pub const MODEL_FILE: &str = "pytorch_model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const LATEST_FILE: &str = "latest";

// ---------------------------------------------------------------------------------------------
// safetensors I/O

fn kind_to_dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        k => bail!("dtype {k:?} cannot be stored in safetensors"),
    })
}

/// A tch tensor seen through the safetensors `View` trait; bytes are copied to host lazily, one
/// tensor at a time, while the file is written.
struct TchView {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
}

impl TchView {
    fn new(name: &str, t: &Tensor) -> Result<Self> {
        let dtype = kind_to_dtype(t.kind()).with_context(|| format!("tensor '{name}'"))?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let len = shape.iter().product::<usize>() * t.kind().elt_size_in_bytes();
        // Detach so that writing never records autograd history; contiguous because raw bytes
        // are copied in row-major order.
        Ok(Self {
            tensor: t.detach(),
            dtype,
            shape,
            len,
        })
    }
}

impl View for TchView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let t = self.tensor.to_device(Device::Cpu).contiguous();
        let mut buf = vec![0u8; self.len];
        t.copy_data_u8(&mut buf, t.numel());
        Cow::Owned(buf)
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// Writes `tensors` to `path` as safetensors with `{"format":"pt"}` metadata, atomically
/// (temp file + rename). Tensors may live on any device and need not be contiguous.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            bail!(
                "duplicate tensor name '{name}' while writing {}",
                path.display()
            );
        }
        views.push((name.clone(), TchView::new(name, t)?));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = crate::util::tmp_sibling(path);
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    safetensors::serialize_to_file(views, Some(meta), &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Reads every tensor of a safetensors file (CPU tensors, file dtype).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path)
        .with_context(|| format!("reading safetensors {}", path.display()))
}

/// All variables of `vs` (trainable or not), sorted by name.
pub fn named_variables_sorted(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A VarStore whose variables are `tensors` as given (shallow clones share storage, so an
/// optimizer on it, or [`copy_into_varstore`] into it, updates the tensors themselves).
pub fn var_store_of(
    device: Device,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<VarStore> {
    let vs = VarStore::new(device);
    {
        let mut vars = vs
            .variables_
            .lock()
            .map_err(|_| anyhow::anyhow!("VarStore lock poisoned"))?;
        vars.named_variables.extend(tensors);
    }
    Ok(vs)
}

/// Saves every variable of `vs` under its VarStore name (dtype kept).
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<()> {
    write_safetensors(path, &named_variables_sorted(vs))
}

fn list(names: &[String]) -> String {
    const MAX: usize = 10;
    let mut s = names
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

/// Copies `tensors` into the variables of `vs` with a strict check: every variable must be
/// present with the same shape and no extra tensor may be present. The VarStore keeps its own
/// dtype and device (unlike `VarStore::load`, which adopts the file's dtype). `source` names the
/// origin in error messages.
pub fn copy_into_varstore(
    vs: &VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &str,
) -> Result<()> {
    let vars = vs.variables();
    let file: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let mut missing: Vec<String> = vars
        .keys()
        .filter(|k| !file.contains_key(*k))
        .cloned()
        .collect();
    let mut unexpected: Vec<String> = file
        .keys()
        .filter(|k| !vars.contains_key(*k))
        .cloned()
        .collect();
    missing.sort();
    unexpected.sort();
    let mut shape_errs = Vec::new();
    for (name, src) in &file {
        if let Some(dst) = vars.get(name) {
            if src.size() != dst.size() {
                shape_errs.push(format!(
                    "'{name}': model {:?} vs checkpoint {:?}",
                    dst.size(),
                    src.size()
                ));
            }
        }
    }
    shape_errs.sort();
    if !missing.is_empty() || !unexpected.is_empty() || !shape_errs.is_empty() {
        let mut msg = format!("weights in {source} do not match the model:");
        if !missing.is_empty() {
            msg.push_str(&format!(
                "\n  missing in checkpoint ({}): {}",
                missing.len(),
                list(&missing)
            ));
        }
        if !unexpected.is_empty() {
            msg.push_str(&format!(
                "\n  not in model ({}): {}",
                unexpected.len(),
                list(&unexpected)
            ));
        }
        if !shape_errs.is_empty() {
            msg.push_str(&format!(
                "\n  shape mismatch ({}): {}",
                shape_errs.len(),
                list(&shape_errs)
            ));
        }
        bail!(msg);
    }
    tch::no_grad(|| -> Result<()> {
        for (name, src) in &file {
            let mut dst = vars[name].shallow_clone();
            dst.f_copy_(src)
                .with_context(|| format!("copying '{name}' from {source}"))?;
        }
        Ok(())
    })
}

/// Strictly loads a safetensors file into `vs`, keeping the VarStore's dtype (see
/// [`copy_into_varstore`]).
pub fn load_weights(vs: &VarStore, path: &Path) -> Result<()> {
    let tensors = read_safetensors(path)?;
    copy_into_varstore(vs, tensors, &path.display().to_string())
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .with_context(|| format!("serializing {}", path.display()))?;
    bytes.push(b'\n');
    crate::util::atomic_write(path, &bytes)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Trainer state

/// Everything besides weights and optimizer state that a resumed run needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken so far (the next step to run has this index).
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Number of examples of the current epoch's order already consumed.
    pub data_position: u64,
    /// The run's base seed (torch is re-seeded from it per step, see `rng::seed_torch_for_step`).
    pub seed: u64,
    /// Position of the host RNG, if the run draws from one.
    #[serde(default)]
    pub data_rng: Option<RngState>,
    /// Anything else (metrics, best score, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------
// Writing

fn tmp_dir_for(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("checkpoint path {} has no final component", dir.display()))?;
    Ok(dir.with_file_name(format!(
        "{}.tmp-{}",
        name.to_string_lossy(),
        crate::util::owner_tag()
    )))
}

pub(crate) fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.is_file() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync {}", p.display()))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes the renames durable; not supported everywhere, so best effort.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Stages a checkpoint in `<dir>.tmp-<owner>`; [`CheckpointWriter::commit`] publishes it. Dropping
/// an uncommitted writer deletes the staging directory.
#[derive(Debug)]
pub struct CheckpointWriter {
    dir: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl CheckpointWriter {
    pub fn begin(dir: &Path) -> Result<Self> {
        // Staging folders of killed saves beside it would otherwise stay for good (each a
        // model plus optimizer state). Only this checkpoint's own names and the trainer's
        // `step-N` / `latest` are touched (the parent may be any folder), and a failure to
        // clean is a warning, not a lost save.
        if let Some(parent) = dir.parent().filter(|p| p.is_dir()) {
            let own = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let latest_tmp = format!(".{LATEST_FILE}");
            let ours = |stem: &str| {
                stem == own
                    || stem == latest_tmp
                    || stem
                        .strip_prefix("step-")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            };
            if let Err(e) = remove_stale_in(parent, ours) {
                eprintln!("warning: cleaning stale checkpoint folders: {e:#}");
            }
        }
        let tmp = tmp_dir_for(dir)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("removing stale {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
            committed: false,
        })
    }

    /// The staging directory, for extra files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn save_model(&self, vs: &VarStore) -> Result<()> {
        save_weights(vs, &self.tmp.join(MODEL_FILE))
    }

    pub fn save_tensors(&self, file_name: &str, tensors: &[(String, Tensor)]) -> Result<()> {
        write_safetensors(&self.tmp.join(file_name), tensors)
    }

    pub fn save_json<T: Serialize + ?Sized>(&self, file_name: &str, value: &T) -> Result<()> {
        write_json(&self.tmp.join(file_name), value)
    }

    pub fn save_config<T: Serialize + ?Sized>(&self, config: &T) -> Result<()> {
        self.save_json(CONFIG_FILE, config)
    }

    pub fn save_optimizer(&self, opt: &AdamW) -> Result<()> {
        opt.save(&self.tmp)
    }

    /// Writes `trainer_state.json` (the completion marker), fsyncs, and atomically replaces
    /// `<dir>`. Returns the final directory.
    pub fn commit(mut self, state: &TrainerState) -> Result<PathBuf> {
        write_json(&self.tmp.join(TRAINER_STATE_FILE), state)?;
        sync_tree(&self.tmp)?;
        let aside = if self.dir.exists() {
            let name = self
                .dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let aside = self
                .dir
                .with_file_name(format!("{name}.old-{}", crate::util::owner_tag()));
            if aside.exists() {
                discard_dir(&aside)?;
            }
            std::fs::rename(&self.dir, &aside)
                .with_context(|| format!("renaming {} aside", self.dir.display()))?;
            Some(aside)
        } else {
            None
        };
        std::fs::rename(&self.tmp, &self.dir).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.dir.display())
        })?;
        self.committed = true;
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent);
        }
        if let Some(aside) = aside {
            discard_dir(&aside)?;
        }
        Ok(self.dir.clone())
    }
}

/// Deletes a checkpoint directory so that a kill part-way never leaves a torn directory that
/// still looks complete: the completion marker goes first (and that is made durable), then the
/// rest. `remove_dir_all` alone deletes in arbitrary order.
fn discard_dir(dir: &Path) -> Result<()> {
    let marker = dir.join(TRAINER_STATE_FILE);
    if marker.exists() {
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        sync_dir(dir);
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// `<run_dir>/step-<step>`.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!("step-{step}"))
}

/// Points `<run_dir>/latest` at `ckpt_dir` (stored relative to `run_dir` when inside it).
pub fn set_latest(run_dir: &Path, ckpt_dir: &Path) -> Result<()> {
    let rel = ckpt_dir.strip_prefix(run_dir).unwrap_or(ckpt_dir);
    crate::util::atomic_write(
        &run_dir.join(LATEST_FILE),
        format!("{}\n", rel.display()).as_bytes(),
    )
}

/// Saves a full checkpoint `<run_dir>/step-<step>` (model, optional config, optimizer,
/// trainer state), then updates `latest`. Returns the checkpoint directory.
pub fn save_checkpoint<C: Serialize + ?Sized>(
    run_dir: &Path,
    vs: &VarStore,
    config: Option<&C>,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf> {
    let w = CheckpointWriter::begin(&checkpoint_dir(run_dir, state.step))?;
    w.save_model(vs)?;
    if let Some(c) = config {
        w.save_config(c)?;
    }
    w.save_optimizer(opt)?;
    let dir = w.commit(state)?;
    set_latest(run_dir, &dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A directory is a complete checkpoint when it is not a staging dir and has its trainer state
/// (written last, and the directory only appears under its final name once whole).
pub fn is_complete(dir: &Path) -> bool {
    let staging = dir
        .file_name()
        .map(|n| n.to_string_lossy().contains(".tmp-"))
        .unwrap_or(true);
    !staging && dir.join(TRAINER_STATE_FILE).is_file()
}

/// The newest complete checkpoint in `run_dir`: among complete sub-directories (including a
/// `<name>.old-<owner>` left by a kill between the two renames), the one with the highest
/// `trainer_state.step`; ties go to the `latest` pointer, then to non-`.old-` names. `.tmp-`
/// directories are ignored. `Ok(None)` when there is none.
pub fn find_latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    if !run_dir.exists() {
        return Ok(None);
    }
    let pointer = std::fs::read_to_string(run_dir.join(LATEST_FILE))
        .ok()
        .map(|s| run_dir.join(s.trim()))
        .filter(|p| is_complete(p));
    let mut best: Option<((u64, bool, bool), PathBuf)> = None;
    let entries =
        std::fs::read_dir(run_dir).with_context(|| format!("listing {}", run_dir.display()))?;
    for e in entries {
        let p = e?.path();
        if !p.is_dir() || !is_complete(&p) {
            continue;
        }
        let state: TrainerState = match read_json(&p.join(TRAINER_STATE_FILE)) {
            Ok(s) => s,
            Err(err) => {
                eprintln!("warning: skipping checkpoint {}: {err:#}", p.display());
                continue;
            }
        };
        let is_pointer = pointer.as_deref() == Some(p.as_path());
        let not_old = !p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .contains(".old-");
        let key = (state.step, is_pointer, not_old);
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, p));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Removes `.tmp-<owner>` staging directories (and temp files), and `.old-<owner>` copies whose
/// checkpoint is complete again, of this host's processes that are no longer running (Linux:
/// checks `/proc/<pid>`; elsewhere it removes nothing), and another host's once untouched for a
/// day. Returns what was removed.
pub fn remove_stale_tmp(run_dir: &Path) -> Result<Vec<PathBuf>> {
    remove_stale_in(run_dir, |_| true)
}

/// How long another host's temp names must lie untouched before a cleanup here removes them.
const FOREIGN_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// [`remove_stale_tmp`] for the entries whose name before `.tmp-` / `.old-` passes `stem`.
fn remove_stale_in(run_dir: &Path, stem: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    // Without /proc every owner would look dead, and a live save of another process removed.
    if !Path::new("/proc/self").exists() {
        return Ok(removed);
    }
    let entries =
        std::fs::read_dir(run_dir).with_context(|| format!("listing {}", run_dir.display()))?;
    for e in entries {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let tmp = name
            .rsplit_once(".tmp-")
            .filter(|(base, _)| stem(base))
            .map(|(_, tag)| crate::util::owner_of(tag));
        // A checkpoint moved aside by a save killed between its two renames: garbage once the
        // directory it was moved aside from is complete again, else the only copy (kept).
        let old = name
            .rsplit_once(".old-")
            .filter(|(base, _)| stem(base) && is_complete(&run_dir.join(base)))
            .map(|(_, tag)| crate::util::owner_of(tag));
        let stale = match tmp.or(old) {
            Some(Owner::Local(pid)) => {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            }
            // Another host's (or container's) process is not in this /proc: its names go only
            // once untouched for longer than any save takes, e.g. after that container is gone.
            Some(Owner::Foreign) => std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > FOREIGN_STALE_AFTER),
            Some(Owner::NotATag) | None => false,
        };
        if !stale {
            continue;
        }
        // Staging checkpoint dirs, and temp files of `latest` written by `atomic_write`.
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match gone {
            Ok(()) => removed.push(p),
            // Another process cleaned it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(removed)
}

/// A complete checkpoint directory opened for reading.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        if !is_complete(dir) {
            bail!(
                "{} is not a complete checkpoint (no {TRAINER_STATE_FILE}, or a staging dir)",
                dir.display()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The newest complete checkpoint of `run_dir`, if any.
    pub fn latest(run_dir: &Path) -> Result<Option<Self>> {
        find_latest(run_dir)?.map(|d| Self::open(&d)).transpose()
    }

    pub fn trainer_state(&self) -> Result<TrainerState> {
        read_json(&self.dir.join(TRAINER_STATE_FILE))
    }

    pub fn load_model(&self, vs: &VarStore) -> Result<()> {
        load_weights(vs, &self.dir.join(MODEL_FILE))
    }

    pub fn load_config<T: DeserializeOwned>(&self) -> Result<T> {
        read_json(&self.dir.join(CONFIG_FILE))
    }

    pub fn load_json<T: DeserializeOwned>(&self, file_name: &str) -> Result<T> {
        read_json(&self.dir.join(file_name))
    }

    pub fn load_tensors(&self, file_name: &str) -> Result<Vec<(String, Tensor)>> {
        read_safetensors(&self.dir.join(file_name))
    }

    pub fn load_optimizer(&self, opt: &mut AdamW) -> Result<()> {
        opt.load(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    fn tmpdir(tag: &str) -> PathBuf {
        // Under target/ like the integration tests' scratch folders, kept for inspection.
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-tmp")
            .join(format!("ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn weights_roundtrip_keeps_varstore_dtype_and_has_pt_metadata() {
        let d = tmpdir("rt");
        let vs = VarStore::new(Device::Cpu);
        let w = (vs.root() / "lin").var(
            "weight",
            &[3, 2],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        // Non-contiguous source is fine.
        let _b = (vs.root() / "lin").var_copy(
            "bias",
            &Tensor::arange(6, (Kind::Float, Device::Cpu))
                .view([3, 2])
                .tr(),
        );
        let f = d.join("m.safetensors");
        save_weights(&vs, &f).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );

        let mut vs2 = VarStore::new(Device::Cpu);
        let w2 = (vs2.root() / "lin").var("weight", &[3, 2], nn::Init::Const(0.0));
        let b2 = (vs2.root() / "lin").var("bias", &[2, 3], nn::Init::Const(0.0));
        vs2.bfloat16();
        load_weights(&vs2, &f).unwrap();
        assert_eq!(w2.kind(), Kind::BFloat16);
        assert!(w2.requires_grad());
        let diff = (w2.to_kind(Kind::Float) - &w).abs().max().double_value(&[]);
        assert!(diff < 1e-2, "{diff}");
        assert_eq!(
            Vec::<f32>::try_from(b2.to_kind(Kind::Float).flatten(0, -1)).unwrap(),
            vec![0., 2., 4., 1., 3., 5.]
        );
    }

    #[test]
    fn strict_load_names_tensors_and_shapes() {
        let d = tmpdir("strict");
        let vs = VarStore::new(Device::Cpu);
        let _ = (vs.root() / "a").var("weight", &[3, 2], nn::Init::Const(1.0));
        let _ = (vs.root() / "b").var("weight", &[4], nn::Init::Const(1.0));
        let f = d.join("m.safetensors");
        save_weights(&vs, &f).unwrap();
        let other = VarStore::new(Device::Cpu);
        let _ = (other.root() / "a").var("weight", &[2, 3], nn::Init::Const(0.0));
        let _ = (other.root() / "c").var("bias", &[1], nn::Init::Const(0.0));
        let err = format!("{:#}", load_weights(&other, &f).unwrap_err());
        assert!(err.contains("missing in checkpoint (1): c.bias"), "{err}");
        assert!(err.contains("not in model (1): b.weight"), "{err}");
        assert!(
            err.contains("'a.weight': model [2, 3] vs checkpoint [3, 2]"),
            "{err}"
        );
    }

    #[test]
    fn a_new_save_clears_what_killed_saves_left_and_keeps_a_sole_copy() {
        let d = tmpdir("stale");
        // No process has this id (Linux ids stay below 2^22).
        let dead = 4_000_000_000u32;
        let complete = |dir: &Path| {
            std::fs::create_dir_all(dir).unwrap();
            write_json(&dir.join(TRAINER_STATE_FILE), &TrainerState::default()).unwrap();
        };
        std::fs::create_dir_all(d.join(format!("step-1.tmp-{dead}"))).unwrap();
        complete(&d.join("step-2"));
        complete(&d.join(format!("step-2.old-{dead}")));
        // Killed between the renames: the aside copy is the only step-3.
        complete(&d.join(format!("step-3.old-{dead}")));
        let live = format!("step-5.tmp-{}", crate::util::owner_tag());
        std::fs::create_dir_all(d.join(&live)).unwrap();
        // A dead pid on another host: this /proc cannot tell, so it stays.
        let remote = format!("step-6.tmp-{dead}@another-host");
        std::fs::create_dir_all(d.join(&remote)).unwrap();
        // Another host's, untouched for two days: gone.
        let aged = d.join(format!("step-8.tmp-{dead}@another-host"));
        std::fs::write(&aged, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&aged)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400))
            .unwrap();
        // This host's dead pid in the tagged spelling goes like the bare one.
        std::fs::create_dir_all(d.join(format!(
            "step-7.tmp-{dead}@{}",
            crate::util::owner_tag().split_once('@').map_or("", |(_, h)| h)
        )))
        .unwrap();
        // Not a name the trainer writes: another tool's, left alone.
        let foreign = format!("notes.tmp-{dead}");
        std::fs::write(d.join(&foreign), b"x").unwrap();
        let w = CheckpointWriter::begin(&d.join("step-4")).unwrap();
        drop(w);
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        if Path::new("/proc/self").exists() {
            assert_eq!(
                left,
                vec![
                    foreign,
                    "step-2".to_string(),
                    format!("step-3.old-{dead}"),
                    live,
                    remote
                ]
            );
        }
    }

    #[test]
    fn commit_replaces_existing_dir_and_latest_tracks_steps() {
        let run = tmpdir("commit");
        let dir = run.join("ck");
        for step in [1u64, 2] {
            let w = CheckpointWriter::begin(&dir).unwrap();
            w.save_json("x.json", &step).unwrap();
            w.commit(&TrainerState {
                step,
                ..Default::default()
            })
            .unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["ck".to_string()], "aside/tmp dirs must be gone");
        let c = Checkpoint::open(&dir).unwrap();
        assert_eq!(c.trainer_state().unwrap().step, 2);
        assert_eq!(c.load_json::<u64>("x.json").unwrap(), 2);
        // A dropped, uncommitted writer cleans up after itself.
        let w = CheckpointWriter::begin(&run.join("other")).unwrap();
        let tmp = w.path().to_path_buf();
        assert!(tmp.exists());
        drop(w);
        assert!(!tmp.exists());
        assert_eq!(find_latest(&run).unwrap(), Some(dir));
    }
}
