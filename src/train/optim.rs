//! AdamW with saveable state and fp32 master weights, on any `VarStore`.
//!
//! tch's AdamW wraps libtorch's C++ optimizer, whose state cannot be read or written, so runs
//! could not resume exactly. This one follows `torch.optim.AdamW` (single-tensor path,
//! `amsgrad=False`, `maximize=False`) op for op:
//!
//! ```text
//! step += 1
//! p      *= 1 - lr * wd                      (decoupled weight decay)
//! m.lerp_(g, 1 - beta1)
//! v       = v * beta2 + (1 - beta2) * g * g
//! p      -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
//! ```
//!
//! - Parameters are the VarStore variables that require grad at construction, addressed by
//!   their names, sorted. Each gets a [`ParamGroup`] (weight decay on/off, LR multiplier) from a
//!   name rule; the default puts biases, norms and `embed_tokens` in the no-decay group.
//! - A parameter whose grad is undefined is skipped (no decay, no state change), as in torch.
//!   State (`exp_avg`, `exp_avg_sq`, per-parameter step) is created at a parameter's first step.
//! - bf16/fp16 parameters get an fp32 master copy (taken at their first step, so loading weights
//!   after building the optimizer is fine); the update runs in fp32 on the master and is copied
//!   back into the low-precision parameter.
//! - [`AdamW::save`] writes `optimizer.safetensors` (keys `exp_avg.<name>`, `exp_avg_sq.<name>`,
//!   `master.<name>`) and `optimizer.json` (steps, hyper-parameters, parameter list);
//!   [`AdamW::load`] checks names and shapes against the model.

use crate::train::ckpt::{read_safetensors, write_safetensors};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Kind, Tensor};

pub const OPTIM_TENSORS_FILE: &str = "optimizer.safetensors";
pub const OPTIM_JSON_FILE: &str = "optimizer.json";
const FORMAT: &str = "imgcot-adamw-v1";

/// AdamW hyper-parameters (defaults are torch's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// Per-parameter group settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    /// Apply `AdamWConfig::weight_decay` (false: decay 0).
    pub decay: bool,
    /// Multiplier of the current LR (e.g. a smaller LR for a vision tower).
    pub lr_mult: f64,
}

impl ParamGroup {
    /// Default grouping: no decay for [`is_no_decay`] names, LR multiplier 1.
    pub fn default_for(name: &str) -> Self {
        Self {
            decay: !is_no_decay(name),
            lr_mult: 1.0,
        }
    }
}

/// Biases, normalization weights and token embeddings are not decayed.
pub fn is_no_decay(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".bias")
        || lower == "bias"
        || lower.contains("layernorm")
        || lower.contains("layer_norm")
        || lower.contains("norm")
        || lower.contains("embed_tokens")
}

#[derive(Debug)]
struct Param {
    name: String,
    var: Tensor,
    group: ParamGroup,
    /// Steps taken by this parameter (torch's `state['step']`).
    step: u64,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    /// fp32 copy of a bf16/fp16 parameter.
    master: Option<Tensor>,
}

impl Param {
    fn needs_master(&self) -> bool {
        matches!(self.var.kind(), Kind::BFloat16 | Kind::Half)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ParamMeta {
    name: String,
    shape: Vec<i64>,
    step: u64,
    decay: bool,
    lr_mult: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateMeta {
    format: String,
    /// Calls to `step()`.
    step: u64,
    lr: f64,
    config: AdamWConfig,
    params: Vec<ParamMeta>,
}

/// See the module docs.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    lr: f64,
    step: u64,
    params: Vec<Param>,
}

impl AdamW {
    /// AdamW over the trainable variables of `vs` with the default grouping.
    pub fn new(vs: &VarStore, cfg: AdamWConfig) -> Result<Self> {
        Self::with_groups(vs, cfg, ParamGroup::default_for)
    }

    /// AdamW over the trainable variables of `vs`, grouped by `group(name)`.
    pub fn with_groups(
        vs: &VarStore,
        cfg: AdamWConfig,
        group: impl Fn(&str) -> ParamGroup,
    ) -> Result<Self> {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if !var.is_floating_point() {
                bail!(
                    "trainable variable '{name}' has non-float dtype {:?}",
                    var.kind()
                );
            }
            let group = group(&name);
            params.push(Param {
                name,
                var,
                group,
                step: 0,
                exp_avg: None,
                exp_avg_sq: None,
                master: None,
            });
        }
        Ok(Self {
            cfg,
            lr: cfg.lr,
            step: 0,
            params,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The current base LR (group LR = base * `lr_mult`).
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Sets the base LR (call before every `step` with the schedule's value).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Number of `step()` calls so far (restored by `load`).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Managed parameter names (sorted) with their groups.
    pub fn param_groups(&self) -> Vec<(String, ParamGroup)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.group))
            .collect()
    }

    /// The managed variables (shallow clones), in name order.
    pub fn vars(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.var.shallow_clone()).collect()
    }

    /// Zeroes the grads of the managed variables (see `grad::zero_grad`).
    pub fn zero_grad(&self) {
        crate::train::grad::zero_grad(&self.vars());
    }

    /// Re-takes the fp32 master copies from the current parameters. Only needed when the model
    /// weights were overwritten after the optimizer already stepped (e.g. a manual reload).
    pub fn sync_master_from_params(&mut self) {
        tch::no_grad(|| {
            for p in &mut self.params {
                if p.master.is_some() {
                    p.master = Some(p.var.detach().to_kind(Kind::Float));
                }
            }
        });
    }

    /// Copies every parameter at full precision (its fp32 master when it has one) into the
    /// variable of the same name in `vs`, e.g. an fp32 copy of a bf16-trained model for saving.
    pub fn copy_full_precision_into(&self, vs: &VarStore) -> Result<()> {
        let vars = vs.variables();
        tch::no_grad(|| {
            for p in &self.params {
                let mut dst = vars
                    .get(&p.name)
                    .with_context(|| format!("no variable '{}' to copy into", p.name))?
                    .shallow_clone();
                let src = p.master.as_ref().unwrap_or(&p.var);
                dst.f_copy_(src)
                    .with_context(|| format!("copying '{}'", p.name))?;
            }
            Ok(())
        })
    }

    /// One AdamW step over every parameter with a defined grad.
    pub fn step(&mut self) -> Result<()> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.cfg;
        let base_lr = self.lr;
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let grad = p.var.grad();
                if !grad.defined() {
                    continue;
                }
                let master_kind = if p.needs_master() {
                    Kind::Float
                } else {
                    p.var.kind()
                };
                if p.needs_master() && p.master.is_none() {
                    p.master = Some(p.var.detach().to_kind(Kind::Float));
                }
                let grad = if grad.kind() == master_kind {
                    grad
                } else {
                    grad.to_kind(master_kind)
                };
                let m = p.exp_avg.get_or_insert_with(|| grad.zeros_like());
                let v = p.exp_avg_sq.get_or_insert_with(|| grad.zeros_like());
                // Update either the master copy or the parameter itself.
                let mut target = match &p.master {
                    Some(master) => master.shallow_clone(),
                    None => p.var.shallow_clone(),
                };
                p.step += 1;
                let lr = base_lr * p.group.lr_mult;
                let wd = if p.group.decay { weight_decay } else { 0.0 };
                let step = p.step as f64;
                let _ = target.g_mul_scalar_(1.0 - lr * wd);
                let _ = m.lerp_(&grad, 1.0 - beta1);
                let _ = v.g_mul_scalar_(beta2);
                let _ = v.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                let bias_correction1 = 1.0 - beta1.powf(step);
                let bias_correction2_sqrt = (1.0 - beta2.powf(step)).sqrt();
                let step_size = lr / bias_correction1;
                let mut denom = v.sqrt() / bias_correction2_sqrt;
                let _ = denom.g_add_scalar_(eps);
                let _ = target.addcdiv_(&(&*m * -step_size), &denom);
                if p.master.is_some() {
                    let mut var = p.var.shallow_clone();
                    var.f_copy_(&target)
                        .with_context(|| format!("copying master weights into '{}'", p.name))?;
                }
            }
            Ok(())
        })?;
        self.step += 1;
        Ok(())
    }

    /// Writes `optimizer.safetensors` and `optimizer.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for p in &self.params {
            if let Some(t) = &p.exp_avg {
                tensors.push((format!("exp_avg.{}", p.name), t.shallow_clone()));
            }
            if let Some(t) = &p.exp_avg_sq {
                tensors.push((format!("exp_avg_sq.{}", p.name), t.shallow_clone()));
            }
            if let Some(t) = &p.master {
                tensors.push((format!("master.{}", p.name), t.shallow_clone()));
            }
        }
        write_safetensors(&dir.join(OPTIM_TENSORS_FILE), &tensors)?;
        let meta = StateMeta {
            format: FORMAT.to_string(),
            step: self.step,
            lr: self.lr,
            config: self.cfg,
            params: self
                .params
                .iter()
                .map(|p| ParamMeta {
                    name: p.name.clone(),
                    shape: p.var.size(),
                    step: p.step,
                    decay: p.group.decay,
                    lr_mult: p.group.lr_mult,
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&meta)?;
        bytes.push(b'\n');
        crate::util::atomic_write(&dir.join(OPTIM_JSON_FILE), &bytes)
    }

    /// Restores the state saved by [`AdamW::save`]. The parameter names and shapes must match
    /// this optimizer's exactly. Hyper-parameters and groups stay those of this optimizer (so a
    /// resumed run may change them); the step counters and the last LR are restored. Master
    /// weights, when saved, are copied back into the low-precision parameters.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let json_path = dir.join(OPTIM_JSON_FILE);
        let bytes = std::fs::read(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let meta: StateMeta = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", json_path.display()))?;
        if meta.format != FORMAT {
            bail!(
                "{}: format '{}', expected '{FORMAT}'",
                json_path.display(),
                meta.format
            );
        }
        let ours: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let theirs: Vec<&str> = meta.params.iter().map(|p| p.name.as_str()).collect();
        if ours != theirs {
            let missing: Vec<&str> = ours
                .iter()
                .filter(|n| !theirs.contains(n))
                .copied()
                .collect();
            let extra: Vec<&str> = theirs
                .iter()
                .filter(|n| !ours.contains(n))
                .copied()
                .collect();
            bail!(
                "optimizer state {} does not match the model: missing {:?}, unexpected {:?}",
                json_path.display(),
                missing,
                extra
            );
        }
        for (p, m) in self.params.iter().zip(&meta.params) {
            if p.var.size() != m.shape {
                bail!(
                    "optimizer state {}: '{}' has shape {:?}, model has {:?}",
                    json_path.display(),
                    p.name,
                    m.shape,
                    p.var.size()
                );
            }
        }
        let tensors_path = dir.join(OPTIM_TENSORS_FILE);
        let mut file: BTreeMap<String, Tensor> =
            read_safetensors(&tensors_path)?.into_iter().collect();
        let mut take = |key: String, p: &Param, kind: Kind| -> Result<Option<Tensor>> {
            let Some(t) = file.remove(&key) else {
                return Ok(None);
            };
            if t.size() != p.var.size() {
                bail!(
                    "{}: '{key}' has shape {:?}, model has {:?}",
                    tensors_path.display(),
                    t.size(),
                    p.var.size()
                );
            }
            Ok(Some(t.to_device(p.var.device()).to_kind(kind)))
        };
        let mut loaded = Vec::with_capacity(self.params.len());
        for (p, m) in self.params.iter().zip(&meta.params) {
            let kind = if p.needs_master() {
                Kind::Float
            } else {
                p.var.kind()
            };
            let exp_avg = take(format!("exp_avg.{}", p.name), p, kind)?;
            let exp_avg_sq = take(format!("exp_avg_sq.{}", p.name), p, kind)?;
            let master = take(format!("master.{}", p.name), p, Kind::Float)?;
            let has_state = exp_avg.is_some() && exp_avg_sq.is_some();
            if has_state != (m.step > 0) || (exp_avg.is_some() != exp_avg_sq.is_some()) {
                bail!(
                    "{}: '{}' has step {} but exp_avg/exp_avg_sq present = {}/{}",
                    tensors_path.display(),
                    p.name,
                    m.step,
                    exp_avg.is_some(),
                    exp_avg_sq.is_some()
                );
            }
            if p.needs_master() && m.step > 0 && master.is_none() {
                bail!(
                    "{}: missing 'master.{}' for a {:?} parameter",
                    tensors_path.display(),
                    p.name,
                    p.var.kind()
                );
            }
            loaded.push((
                m.step,
                exp_avg,
                exp_avg_sq,
                if p.needs_master() { master } else { None },
            ));
        }
        if !file.is_empty() {
            let extra: Vec<&String> = file.keys().collect();
            bail!("{}: unexpected tensors {:?}", tensors_path.display(), extra);
        }
        tch::no_grad(|| -> Result<()> {
            for (p, (step, exp_avg, exp_avg_sq, master)) in self.params.iter_mut().zip(loaded) {
                p.step = step;
                p.exp_avg = exp_avg;
                p.exp_avg_sq = exp_avg_sq;
                if let Some(master) = &master {
                    p.var
                        .shallow_clone()
                        .f_copy_(master)
                        .with_context(|| format!("restoring '{}'", p.name))?;
                }
                p.master = master;
            }
            Ok(())
        })?;
        self.step = meta.step;
        self.lr = meta.lr;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    #[test]
    fn no_decay_names() {
        for n in [
            "lin.bias",
            "model.layernorm.weight",
            "ln.layer_norm.weight",
            "x.norm1.weight",
            "model.embed_tokens.weight",
        ] {
            assert!(is_no_decay(n), "{n}");
        }
        for n in [
            "lin.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "lm_head.weight",
        ] {
            assert!(!is_no_decay(n), "{n}");
        }
    }

    /// One step by hand: with m = v = 0, step 1 gives p - lr * g / (|g| + eps) after decay.
    #[test]
    fn first_step_closed_form_and_skip_undefined() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let b = (vs.root() / "x").var_copy("bias", &Tensor::from_slice(&[0.5f32]));
        let unused = vs.root().var_copy("unused", &Tensor::from_slice(&[3.0f32]));
        let mut opt = AdamW::new(
            &vs,
            AdamWConfig {
                lr: 0.1,
                weight_decay: 0.5,
                ..Default::default()
            },
        )
        .unwrap();
        // grads: w -> [3, 3], b -> [1]
        let loss = (&w * 3.0).sum(Kind::Float) + b.sum(Kind::Float);
        loss.backward();
        opt.step().unwrap();
        let got = Vec::<f32>::try_from(&w).unwrap();
        let want = [1.0 * (1.0 - 0.05) - 0.1, -2.0 * (1.0 - 0.05) - 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
        }
        // No decay on the bias.
        assert!((f64::try_from(&b).unwrap() - 0.4).abs() < 1e-6);
        assert_eq!(f64::try_from(&unused).unwrap(), 3.0);
        assert_eq!(opt.step_count(), 1);
    }

    #[test]
    fn bf16_params_use_fp32_master() {
        let mut vs = VarStore::new(Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32]));
        vs.bfloat16();
        let mut opt = AdamW::new(
            &vs,
            AdamWConfig {
                lr: 1e-4,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        // Steps of 1e-4 are below bf16 resolution at 1.0 (2^-7): only the master accumulates.
        for _ in 0..10 {
            opt.zero_grad();
            w.sum(Kind::Float).backward();
            opt.step().unwrap();
        }
        let master = opt.params[0].master.as_ref().unwrap();
        assert_eq!(master.kind(), Kind::Float);
        assert!((f64::try_from(master).unwrap() - (1.0 - 1e-3)).abs() < 1e-6);
        assert_eq!(w.kind(), Kind::BFloat16);
        assert_eq!(f64::try_from(w.to_kind(Kind::Float)).unwrap(), 1.0);
        // Saving goes through an fp32 copy that gets the master, not the rounded parameter.
        let full = VarStore::new(Device::Cpu);
        let _ = full.root().var_copy("w", &Tensor::from_slice(&[0.0f32]));
        opt.copy_full_precision_into(&full).unwrap();
        let saved = f64::try_from(&full.variables()["w"]).unwrap();
        assert!((saved - (1.0 - 1e-3)).abs() < 1e-6, "{saved}");
        assert!(opt
            .copy_full_precision_into(&VarStore::new(Device::Cpu))
            .is_err());
    }

    #[test]
    fn save_load_roundtrip_and_mismatch_errors() {
        let dir = std::env::temp_dir().join(format!("imgcot-optim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let make = |shape: i64| {
            let vs = VarStore::new(Device::Cpu);
            let l = nn::linear(vs.root() / "lin", 2, shape, Default::default());
            (vs, l)
        };
        let (vs, l) = make(3);
        let mut opt = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        let x = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
        for _ in 0..3 {
            opt.zero_grad();
            nn::Module::forward(&l, &x)
                .square()
                .sum(Kind::Float)
                .backward();
            opt.step().unwrap();
        }
        opt.save(&dir).unwrap();
        let (vs2, _) = make(3);
        let mut opt2 = AdamW::new(&vs2, AdamWConfig::default()).unwrap();
        opt2.load(&dir).unwrap();
        assert_eq!(opt2.step_count(), 3);
        for (a, b) in opt.params.iter().zip(&opt2.params) {
            assert_eq!(a.step, b.step);
            assert!(a
                .exp_avg
                .as_ref()
                .unwrap()
                .equal(b.exp_avg.as_ref().unwrap()));
            assert!(a
                .exp_avg_sq
                .as_ref()
                .unwrap()
                .equal(b.exp_avg_sq.as_ref().unwrap()));
        }
        let (vs3, _) = make(5);
        let err = format!(
            "{:#}",
            AdamW::new(&vs3, AdamWConfig::default())
                .unwrap()
                .load(&dir)
                .unwrap_err()
        );
        assert!(
            err.contains("'lin.bias' has shape [3], model has [5]"),
            "{err}"
        );
        let vs4 = VarStore::new(Device::Cpu);
        let _ = nn::linear(vs4.root() / "other", 2, 3, Default::default());
        let err = format!(
            "{:#}",
            AdamW::new(&vs4, AdamWConfig::default())
                .unwrap()
                .load(&dir)
                .unwrap_err()
        );
        assert!(
            err.contains("missing [\"other.bias\", \"other.weight\"]"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
