//! One round of DPO on given preference pairs (the paper's "initial DPO"; `dpo --iter` repeats it).
//!
//! Every pairs line is validated before anything is written; image codes are encoded once and
//! cached; the reference is a frozen copy (fp32 or bf16) or log-probs precomputed for every
//! (epoch, pair, draw) and cached on disk with the mask seed that makes them valid; AdamW with
//! saveable state, warmup + cosine LR, gradient accumulation, grad-norm clipping; full-state
//! checkpoints `ckpts/<run>/step-N/` (model in Show-o's layout) and exact `--resume`.
use super::logp::{pair_draws, LogpConfig, PairBatch};
use super::loss::{dpo_loss, LossConfig, PairLogps};
use crate::eval::geneval::Metadata;
use crate::generate::{self, derive_seed};
use crate::models::showo::{Layout, Showo, TextTokenizer};
use crate::preference::build::ImageScorer;
use crate::preference::{cache, pairs};
use crate::recipe::Recipe;
use crate::train::{ckpt, grad, logging, optim, rng, schedule::LrSchedule};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceMode {
    /// A frozen copy of the initial policy, run at every step.
    Frozen,
    /// Reference log-probs computed once for every draw the run will use, cached on disk.
    Precomputed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub logp: LogpConfig,
    #[serde(default = "d_ref")]
    pub reference: ReferenceMode,
    /// dtype of a frozen reference (`fp32`, `bf16`, or `auto`: bf16 on CUDA and native-bf16 CPUs).
    #[serde(default = "d_fp32")]
    pub reference_dtype: String,
    /// dtype of the policy's parameters (`fp32`, `bf16`, `auto`); bf16 keeps fp32 master weights
    /// in the optimizer.
    #[serde(default = "d_fp32")]
    pub train_dtype: String,
    pub lr: f64,
    /// Optimizer steps per round.
    pub steps: u64,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "d_min_lr")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub seed: u64,
    /// Share of prompts held out for the implicit-reward accuracy.
    #[serde(default = "d_eval_frac")]
    pub eval_fraction: f64,
    #[serde(default = "d_eval_every")]
    pub eval_every: u64,
    /// Masks per held-out pair for the implicit-reward accuracy (default: `logp.n_mc`). The sign of
    /// a small reward difference needs more draws than a training gradient does.
    #[serde(default)]
    pub eval_n_mc: Option<usize>,
    #[serde(default = "d_ckpt_every")]
    pub ckpt_every: u64,
    /// Online reward guidance on the policy's own samples (used when a guide judge is given).
    #[serde(default)]
    pub guide: Option<super::guidance::GuideConfig>,
}

impl DpoConfig {
    /// Every setting that is checked before pairs are read or anything is written (a zero
    /// interval would otherwise divide by zero after the first optimizer step).
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        self.logp.validate()?;
        ensure!(
            self.batch_size > 0 && self.grad_accum > 0 && self.logp.n_mc > 0,
            "dpo: batch_size, grad_accum and logp.n_mc must be positive"
        );
        ensure!(
            self.eval_every > 0 && self.ckpt_every > 0,
            "dpo: eval_every ({}) and ckpt_every ({}) must be positive",
            self.eval_every,
            self.ckpt_every
        );
        ensure!(
            self.eval_n_mc != Some(0),
            "dpo: eval_n_mc must be positive (or absent: logp.n_mc)"
        );
        ensure!(
            (0.0..=1.0).contains(&self.eval_fraction),
            "dpo: eval_fraction {} must be in [0, 1]",
            self.eval_fraction
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "dpo: lr {} must be positive",
            self.lr
        );
        if let Some(g) = &self.guide {
            g.validate()?;
        }
        Ok(())
    }
}

fn d_ref() -> ReferenceMode {
    ReferenceMode::Frozen
}
fn d_fp32() -> String {
    "fp32".into()
}
fn d_one() -> usize {
    1
}
fn d_min_lr() -> f64 {
    0.1
}
fn d_clip() -> f64 {
    1.0
}
fn d_eval_frac() -> f64 {
    0.1
}
fn d_eval_every() -> u64 {
    50
}
fn d_ckpt_every() -> u64 {
    100
}

/// Where a round reads from and writes to.
pub struct RoundSpec<'a> {
    pub pairs: &'a Path,
    pub init: &'a Path,
    /// Reference checkpoint (default: `init`).
    pub reference: Option<&'a Path>,
    /// `ckpts/<run>` (step checkpoints, reference cache, `final/`).
    pub ckpt_dir: PathBuf,
    /// `runs/<run>` (TensorBoard, log).
    pub run_dir: PathBuf,
    pub resume: bool,
    pub max_steps: Option<u64>,
    pub skip_bad_rows: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub final_dir: PathBuf,
    pub steps: u64,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    /// Held-out implicit-reward accuracy before and after training.
    pub eval_accuracy_start: Option<f64>,
    pub eval_accuracy_end: Option<f64>,
}

struct Data {
    text: Tensor,
    chosen: Tensor,
    rejected: Tensor,
    /// Commit steps of the chosen and rejected codes [M, N] (trajectory likelihood only).
    commits: Option<(Tensor, Tensor)>,
}

impl Data {
    /// The pairs `idx` with `draws` as one batch for [`PairBatch::logps`].
    fn pair_batch(
        &self,
        layout: &Layout,
        idx: &[usize],
        draws: &[Vec<(super::logp::Draw, super::logp::Draw)>],
        logp: &LogpConfig,
        dev: Device,
    ) -> Result<PairBatch> {
        let i = Tensor::from_slice(&idx.iter().map(|&x| x as i64).collect::<Vec<_>>());
        let pick = |t: &Tensor| t.index_select(0, &i).to_device(dev);
        let commits = self
            .commits
            .as_ref()
            .map(|(c, r)| (c.index_select(0, &i), r.index_select(0, &i)));
        let commits = commits.as_ref().map(|(c, r)| super::logp::Commits {
            chosen: c,
            rejected: r,
            steps: logp.trajectory_steps,
        });
        PairBatch::new(
            layout,
            &pick(&self.text),
            &pick(&self.chosen),
            &pick(&self.rejected),
            draws,
            commits.as_ref(),
        )
    }
}

/// Deterministic prompt-level split: a prompt is held out when its hash falls below the fraction.
fn held_out(prompt: &str, seed: u64, fraction: f64) -> bool {
    let h = crate::preference::hash::sha256(format!("{seed}:{prompt}").as_bytes());
    let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    (x as f64 / u64::MAX as f64) < fraction
}

/// Per-pair policy and reference log-probs for pairs `idx` (global indices into `data`) in `epoch`.
#[allow(clippy::too_many_arguments)]
fn batch_logps(
    policy: &Showo,
    reference: &RefSource,
    layout: &Layout,
    data: &Data,
    idx: &[usize],
    epoch: u64,
    cfg: &DpoConfig,
    dev: Device,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let n = layout.num_vq_tokens as usize;
    let draws: Vec<_> = idx
        .iter()
        .map(|&i| pair_draws(cfg.seed, epoch, i as u64, n, &cfg.logp))
        .collect();
    let batch = data.pair_batch(layout, idx, &draws, &cfg.logp, dev)?;
    let (pc, pr) = batch.logps(policy, layout, &cfg.logp);
    let (rc, rr) = match reference {
        RefSource::Model(m) => tch::no_grad(|| batch.logps(m, layout, &cfg.logp)),
        RefSource::Cache(c) => c.get(epoch, idx, dev)?,
    };
    Ok((pc, pr, rc, rr))
}

enum RefSource {
    Model(Box<Showo>),
    Cache(RefCache),
}

/// Precomputed reference log-probs: [epochs, pairs, 2] plus what makes them valid.
struct RefCache {
    values: Tensor,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct RefCacheKey {
    mask_seed: u64,
    logp: LogpConfig,
    epochs: u64,
    pairs_sha256: String,
    reference: String,
    /// The cache is indexed by position in the training split: the split's rows (eval_fraction,
    /// skipped rows), the reference's weights and its dtype all change what a position holds.
    train_rows_sha256: String,
    reference_weights: Vec<String>,
    reference_dtype: String,
}

impl RefCache {
    fn get(&self, epoch: u64, idx: &[usize], dev: Device) -> Result<(Tensor, Tensor)> {
        ensure!(
            (epoch as i64) < self.values.size()[0],
            "reference cache has no epoch {epoch}"
        );
        let i = Tensor::from_slice(&idx.iter().map(|&x| x as i64).collect::<Vec<_>>());
        let v = self
            .values
            .get(epoch as i64)
            .index_select(0, &i)
            .to_device(dev);
        Ok((v.select(1, 0), v.select(1, 1)))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        dir: &Path,
        key: RefCacheKey,
        model: &Showo,
        layout: &Layout,
        data: &Data,
        cfg: &DpoConfig,
        dev: Device,
        log: &mut logging::Logger,
    ) -> Result<Self> {
        let file = dir.join("ref_logps.safetensors");
        let meta = dir.join("ref_logps.json");
        if file.exists() && meta.exists() {
            // Compared as JSON: a key written by an older build (fewer fields) is stale, not
            // an error.
            let old: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&meta)?).context("ref_logps.json")?;
            if old == serde_json::to_value(&key)? {
                let t = crate::nn::weights::read_state_dict(&file)?;
                let values = t
                    .into_iter()
                    .find(|(n, _)| n == "ref_logps")
                    .context("ref_logps tensor")?
                    .1;
                log.info(format!("reference log-probs: reusing {}", file.display()));
                return Ok(Self { values });
            }
            log.info("reference log-probs: cache is for other settings; recomputing");
        }
        let m = data.chosen.size()[0] as usize;
        let mut rows = Vec::new();
        for epoch in 0..key.epochs {
            let mut vals = Vec::new();
            for chunk in (0..m).collect::<Vec<_>>().chunks(cfg.batch_size.max(1)) {
                let n = layout.num_vq_tokens as usize;
                let draws: Vec<_> = chunk
                    .iter()
                    .map(|&i| pair_draws(cfg.seed, epoch, i as u64, n, &cfg.logp))
                    .collect();
                let batch = data.pair_batch(layout, chunk, &draws, &cfg.logp, dev)?;
                let (rc, rr) = tch::no_grad(|| batch.logps(model, layout, &cfg.logp));
                vals.push(Tensor::stack(&[rc, rr], 1).to_device(Device::Cpu));
            }
            rows.push(Tensor::cat(&vals, 0));
        }
        let values = Tensor::stack(&rows, 0);
        std::fs::create_dir_all(dir)?;
        crate::nn::weights::write_safetensors(
            &file,
            &[("ref_logps".into(), values.shallow_clone())],
        )?;
        crate::util::atomic_write(&meta, serde_json::to_string_pretty(&key)?.as_bytes())?;
        log.info(format!(
            "reference log-probs: computed {} epochs × {m} pairs × {} draws",
            key.epochs, cfg.logp.n_mc
        ));
        Ok(Self { values })
    }
}

/// The commit steps of every pair's chosen and rejected image, [M, N] int64 each, checked
/// against the trajectory length and the recipe's sampler (a trajectory replayed with another
/// step count is not the one that was sampled).
fn trajectory_commits(
    pairs: &[pairs::PreferencePair],
    steps: usize,
    sampler: &crate::generate::SamplerConfig,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    ensure!(
        steps == sampler.steps,
        "dpo.logp.trajectory_steps is {steps} but the recipe's sampler runs {} steps",
        sampler.steps
    );
    let rows = |side: &str, get: &dyn Fn(&pairs::PairRecord) -> Option<&Vec<u16>>| {
        let mut flat = Vec::with_capacity(pairs.len() * n);
        for p in pairs {
            let c = get(&p.record).with_context(|| {
                format!(
                    "pairs line {}: no {side}_commit; the trajectory likelihood needs the commit \
                     steps that pair building writes (rebuild the pairs)",
                    p.line
                )
            })?;
            ensure!(
                c.len() == n,
                "pairs line {}: {side}_commit has {} steps, the image {n} tokens",
                p.line,
                c.len()
            );
            ensure!(
                c.iter().all(|&s| (s as usize) < steps),
                "pairs line {}: {side}_commit has a step ≥ {steps}",
                p.line
            );
            flat.extend(c.iter().map(|&s| s as i64));
        }
        Ok::<_, anyhow::Error>(Tensor::from_slice(&flat).view([pairs.len() as i64, n as i64]))
    };
    Ok((
        rows("chosen", &|r| r.chosen_commit.as_ref())?,
        rows("rejected", &|r| r.rejected_commit.as_ref())?,
    ))
}

/// `step-N` inside a run's checkpoint folder.
pub fn step_dir(ckpt_dir: &Path, step: u64) -> PathBuf {
    ckpt::checkpoint_dir(ckpt_dir, step)
}

/// Trains one DPO round. Validates the pairs before writing anything. With `guide`, adds the
/// online guidance term scored by that judge (settings from `cfg.guide`).
pub fn train_round(
    recipe: &Recipe,
    cfg: &DpoConfig,
    spec: &RoundSpec,
    mut guide: Option<&mut dyn ImageScorer>,
) -> Result<RoundResult> {
    cfg.validate()?;
    let device = recipe.device()?;
    // 1. Validate every line first: nothing is written when the pairs file is bad.
    let vq = crate::world::image_tokenizer(&recipe.paths.vq, device)?;
    let size = if recipe.is_glyph() {
        Some((128, 128))
    } else {
        None
    };
    let (all_pairs, report) = pairs::load_pairs(
        spec.pairs,
        &pairs::PairsOptions {
            image_size: size,
            skip_bad_rows: spec.skip_bad_rows,
        },
    )?;
    ensure!(
        !all_pairs.is_empty(),
        "{}: no usable pairs",
        spec.pairs.display()
    );
    // What the steps depend on (not `max_steps`: a shorter run resumes into a longer one; not
    // the eval and save intervals). Kept in every checkpoint, so a run folder resumed under
    // another recipe, pairs file or initialisation is refused, before any work, instead of
    // continuing another run's weights.
    let ref_path = spec.reference.unwrap_or(spec.init);
    let pairs_sha256 = cache::hash_file(spec.pairs)?;
    let mut settings = serde_json::json!({
        "dpo": serde_json::to_value(cfg)?,
        "pairs_sha256": pairs_sha256,
        "init": spec.init.display().to_string(),
        "reference": ref_path.display().to_string(),
        "sampler": serde_json::to_value(&recipe.sampler)?,
    });
    const NO_EFFECT: [&str; 3] = ["dpo.eval_every", "dpo.ckpt_every", "dpo.eval_n_mc"];
    crate::util::drop_keys(&mut settings, &NO_EFFECT);
    let total = spec
        .max_steps
        .map(|s| s.min(cfg.steps))
        .unwrap_or(cfg.steps);
    // The checkpoint a resume continues from, checked here and loaded once the model exists.
    let latest = if spec.resume {
        ckpt::Checkpoint::latest(&spec.ckpt_dir)?
    } else {
        None
    };
    let resume_from = match latest {
        Some(c) => {
            let state = c.trainer_state()?;
            if let Some(was) = state.extra.get("settings") {
                let diff = crate::util::settings_diff(was, &settings, &NO_EFFECT);
                ensure!(
                    diff.is_empty(),
                    "{} was written by a run with other settings ({}): resume with those, or train into another run folder",
                    c.dir.display(),
                    diff.join(", ")
                );
            }
            ensure!(
                state.step <= total,
                "the latest checkpoint {} is at step {}, past the {total} steps asked for",
                c.dir.display(),
                state.step
            );
            Some((c, state.step))
        }
        None => None,
    };

    let mut log =
        logging::Logger::new(&spec.run_dir, cfg.steps, logging::LoggerOptions::default())?;
    if !report.skipped.is_empty() {
        log.info(format!(
            "skipped {} bad rows of {} in {}",
            report.skipped.len(),
            report.rows,
            spec.pairs.display()
        ));
    }
    let tok = TextTokenizer::from_file(&recipe.paths.tokenizer)?;
    let train_kind = crate::util::parse_dtype_on(&cfg.train_dtype, device)?;
    // Without native bf16 dot products a CPU emulates bf16 matmuls, slower than fp32.
    if train_kind == Kind::BFloat16 && device == Device::Cpu && !crate::util::cpu_has_native_bf16()
    {
        bail!(
            "train_dtype bf16 on this CPU (no AVX512-BF16) is slower than fp32: use fp32 or auto"
        );
    }
    let policy = Showo::load(spec.init, device, train_kind)?;
    let layout = Layout::new(&policy.cfg, &tok);

    // 2. Codes (cached) and prompt rows.
    let tok_id = format!("{}:{}", recipe.paths.vq, policy.cfg.codebook_size);
    let codes = cache::encode_all(
        &all_pairs,
        vq.as_ref(),
        &tok_id,
        &recipe.paths.ckpts.join("cache").join("codes"),
        device,
        64,
    )?;
    // Images of another resolution encode to another number of codes than the model's grid.
    for ((c, r), p) in codes.iter().zip(&all_pairs) {
        for (side, t) in [("chosen", c), ("rejected", r)] {
            ensure!(
                t.numel() as i64 == layout.num_vq_tokens,
                "pairs file {}: the {side} image of prompt '{}' encodes to {} codes, the model takes {} (an image of another resolution?)",
                spec.pairs.display(),
                p.record.prompt,
                t.numel(),
                layout.num_vq_tokens
            );
        }
    }
    let (mut train_idx, mut eval_idx) = (Vec::new(), Vec::new());
    for (i, p) in all_pairs.iter().enumerate() {
        if held_out(&p.record.prompt, cfg.seed, cfg.eval_fraction) {
            eval_idx.push(i)
        } else {
            train_idx.push(i)
        }
    }
    ensure!(
        !train_idx.is_empty(),
        "every pair fell into the held-out split"
    );
    let prompts: Vec<String> = all_pairs.iter().map(|p| p.record.prompt.clone()).collect();
    // Guidance prompts: the training pairs' prompts (with their metadata when present), deduplicated.
    let mut guide_metas: Vec<Metadata> = Vec::new();
    for &i in &train_idx {
        let r = &all_pairs[i].record;
        if guide_metas.iter().any(|m| m.prompt == r.prompt) {
            continue;
        }
        let meta = r
            .metadata
            .clone()
            .and_then(|v| serde_json::from_value::<Metadata>(v).ok());
        guide_metas.push(meta.unwrap_or(Metadata {
            tag: r.tag.clone().unwrap_or_default(),
            include: vec![],
            exclude: vec![],
            prompt: r.prompt.clone(),
        }));
    }
    let guide_cfg = match (&guide, &cfg.guide) {
        (Some(_), Some(g)) => Some(g.clone()),
        (Some(_), None) => bail!("a guide judge was given but the recipe has no dpo.guide section"),
        _ => None,
    };
    let text_all = layout.text_batch(&tok, &prompts, Device::Cpu)?;
    let commits = if cfg.logp.trajectory_steps > 0 {
        Some(trajectory_commits(
            &all_pairs,
            cfg.logp.trajectory_steps,
            &recipe.sampler,
            layout.num_vq_tokens as usize,
        )?)
    } else {
        None
    };
    let make = |idx: &[usize]| -> Data {
        let i = Tensor::from_slice(&idx.iter().map(|&x| x as i64).collect::<Vec<_>>());
        Data {
            text: text_all.index_select(0, &i),
            chosen: Tensor::stack(
                &idx.iter()
                    .map(|&j| codes[j].0.shallow_clone())
                    .collect::<Vec<_>>(),
                0,
            ),
            rejected: Tensor::stack(
                &idx.iter()
                    .map(|&j| codes[j].1.shallow_clone())
                    .collect::<Vec<_>>(),
                0,
            ),
            commits: commits
                .as_ref()
                .map(|(c, r)| (c.index_select(0, &i), r.index_select(0, &i))),
        }
    };
    let train = make(&train_idx);
    let eval = if eval_idx.is_empty() {
        None
    } else {
        Some(make(&eval_idx))
    };
    let m = train_idx.len();

    // 3. Reference.
    let ref_kind = crate::util::parse_dtype_on(&cfg.reference_dtype, device)?;
    let mut ref_model = Showo::load(ref_path, device, ref_kind)?;
    ref_model.vs.freeze();
    let per_step = (cfg.batch_size * cfg.grad_accum) as u64;
    let epochs = (cfg.steps * per_step).div_ceil(m as u64).max(1);
    // Held-out accuracy always uses epoch-0 draws of the eval pairs, from the reference model.
    let eval_logp = LogpConfig {
        n_mc: cfg.eval_n_mc.unwrap_or(cfg.logp.n_mc),
        ..cfg.logp.clone()
    };
    let eval_ref = match &eval {
        Some(e) => {
            let idx: Vec<usize> = (0..e.chosen.size()[0] as usize).collect();
            Some(batch_ref_only(
                &ref_model, &layout, e, &idx, cfg, &eval_logp, device,
            )?)
        }
        None => None,
    };
    // The guidance term's KL penalty needs the reference model itself, also when the DPO term
    // reads precomputed log-probs.
    let kl_needs_model = guide_cfg.as_ref().is_some_and(|g| g.kl_coef > 0.0);
    let mut kl_model: Option<Box<Showo>> = None;
    let reference = match cfg.reference {
        ReferenceMode::Frozen => RefSource::Model(Box::new(ref_model)),
        ReferenceMode::Precomputed => {
            let key = RefCacheKey {
                mask_seed: cfg.seed,
                logp: cfg.logp.clone(),
                epochs,
                pairs_sha256: pairs_sha256.clone(),
                reference: ref_path.display().to_string(),
                train_rows_sha256: {
                    let rows: Vec<String> = train_idx
                        .iter()
                        .map(|&i| {
                            let p = &all_pairs[i];
                            format!(
                                "{}\t{}\t{}",
                                p.record.prompt,
                                p.chosen_path.display(),
                                p.rejected_path.display()
                            )
                        })
                        .collect();
                    crate::preference::hash::sha256_hex(rows.join("\n").as_bytes())
                },
                reference_weights: crate::commands::eval::weights_fingerprint(ref_path)?,
                reference_dtype: format!("{ref_kind:?}"),
            };
            let c = RefCache::build(
                &spec.ckpt_dir,
                key,
                &ref_model,
                &layout,
                &train,
                cfg,
                device,
                &mut log,
            )?;
            if kl_needs_model {
                kl_model = Some(Box::new(ref_model));
            } else {
                drop(ref_model);
            }
            RefSource::Cache(c)
        }
    };

    // 4. Optimizer and resume.
    let mut opt = optim::AdamW::new(
        &policy.vs,
        optim::AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let sched = LrSchedule::Cosine {
        warmup_steps: cfg.warmup_steps,
        total_steps: cfg.steps,
        min_lr_ratio: cfg.min_lr_ratio,
    };
    let mut start = 0;
    if let Some((c, step)) = &resume_from {
        c.load_model(&policy.vs)?;
        c.load_optimizer(&mut opt)?;
        start = *step;
        log.info(format!("resumed from {} at step {start}", c.dir.display()));
    }
    log.info(format!(
        "dpo: {} train pairs, {} held-out, {} draws/pair, {} pairs/step, steps {start}..{total}, loss {:?} β={}",
        m,
        eval_idx.len(),
        cfg.logp.n_mc,
        per_step,
        cfg.loss.kind,
        cfg.loss.beta
    ));
    let eval_acc = |policy: &Showo| -> Result<Option<f64>> {
        match (&eval, &eval_ref) {
            (Some(e), Some((rc, rr))) => {
                let idx: Vec<usize> = (0..e.chosen.size()[0] as usize).collect();
                let (pc, pr) = batch_ref_only(policy, &layout, e, &idx, cfg, &eval_logp, device)?;
                let h = (pc - pr) - (rc - rr);
                Ok(Some(
                    h.gt(0.0)
                        .to_kind(Kind::Float)
                        .mean(Kind::Float)
                        .double_value(&[]),
                ))
            }
            _ => Ok(None),
        }
    };
    let acc_start = eval_acc(&policy)?;
    if let Some(a) = acc_start {
        log.scalar("eval/rewards/accuracies", a, start);
    }

    let vars = grad::trainable_vars(&policy.vs);
    for step in start..total {
        opt.zero_grad();
        let mut sums: Vec<(&'static str, f64)> = Vec::new();
        let dpo_coef = guide_cfg.as_ref().map(|g| g.dpo_coef).unwrap_or(1.0);
        // With `dpo_coef: 0` (the guidance term alone) the pair forward would be wasted work.
        let micros = if dpo_coef == 0.0 { 0 } else { cfg.grad_accum };
        for micro in 0..micros {
            let pos = (step * per_step) as usize + micro * cfg.batch_size;
            let epoch = (pos / m) as u64;
            let order = rng::epoch_order(cfg.seed, epoch, m);
            let idx: Vec<usize> = (0..cfg.batch_size).map(|j| order[(pos + j) % m]).collect();
            let (pc, pr, rc, rr) = batch_logps(
                &policy, &reference, &layout, &train, &idx, epoch, cfg, device,
            )?;
            let nll = -(&pc) / (layout.num_vq_tokens as f64);
            let out = dpo_loss(
                &cfg.loss,
                &PairLogps {
                    policy_chosen: &pc,
                    policy_rejected: &pr,
                    ref_chosen: &rc,
                    ref_rejected: &rr,
                },
                Some(&nll),
            )?;
            (out.loss * (dpo_coef / cfg.grad_accum as f64)).backward();
            for (k, v) in out.metrics.named() {
                match sums.iter_mut().find(|(n, _)| *n == k) {
                    Some(e) => e.1 += v / cfg.grad_accum as f64,
                    None => sums.push((k, v / cfg.grad_accum as f64)),
                }
            }
        }
        if let (Some(scorer), Some(g)) = (guide.as_deref_mut(), &guide_cfg) {
            if step % g.every == 0 {
                // Only a penalised run pays for the reference's replay.
                let ref_for_kl = match (&reference, &kl_model) {
                    _ if g.kl_coef == 0.0 => None,
                    (_, Some(m)) | (RefSource::Model(m), None) => Some(&**m),
                    (RefSource::Cache(_), None) => None,
                };
                let gs = guided_backward(
                    &policy,
                    ref_for_kl,
                    &layout,
                    &tok,
                    vq.as_ref(),
                    scorer,
                    &guide_metas,
                    g,
                    recipe,
                    cfg.seed,
                    step,
                )?;
                sums.push(("guide/reward", gs.reward));
                sums.push(("guide/loss", gs.loss));
                if let Some(kl) = gs.kl {
                    sums.push(("guide/kl", kl));
                }
            }
        }
        let gnorm = grad::clip_grad_norm(&vars, cfg.max_grad_norm);
        let lr = sched.lr(cfg.lr, step);
        opt.set_lr(lr);
        opt.step()?;
        let done = step + 1;
        sums.push(("lr", lr));
        sums.push(("grad_norm", gnorm));
        log.step(done, &sums);
        if done % cfg.eval_every == 0 || done == total {
            if let Some(a) = eval_acc(&policy)? {
                log.scalar("eval/rewards/accuracies", a, done);
                log.info(format!(
                    "step {done}: held-out implicit-reward accuracy {a:.3}"
                ));
            }
        }
        if done % cfg.ckpt_every == 0 || done == total {
            let state = ckpt::TrainerState {
                step: done,
                seed: cfg.seed,
                epoch: ((done * per_step) as usize / m) as u64,
                data_position: ((done * per_step) as usize % m) as u64,
                extra: serde_json::json!({ "settings": settings }),
                ..Default::default()
            };
            ckpt::save_checkpoint(&spec.ckpt_dir, &policy.vs, Some(&policy.cfg), &opt, &state)?;
        }
    }
    let acc_end = eval_acc(&policy)?;
    let final_dir = spec.ckpt_dir.join("final");
    if total == cfg.steps {
        if train_kind == Kind::Float {
            crate::commands::pretrain::save_model_dir(&policy, &final_dir)?;
            log.info(format!("saved {}", final_dir.display()));
        } else {
            // The final weights are the fp32 masters, not their bf16 rounding: the next round
            // (and any fp32 user) starts from the update the optimizer accumulated.
            let full = Showo::load(spec.init, device, Kind::Float)?;
            opt.copy_full_precision_into(&full.vs)?;
            crate::commands::pretrain::save_model_dir(&full, &final_dir)?;
            log.info(format!(
                "saved {} (fp32 master weights)",
                final_dir.display()
            ));
        }
    }
    log.finish();
    Ok(RoundResult {
        final_dir,
        steps: total,
        train_pairs: m,
        eval_pairs: eval_idx.len(),
        eval_accuracy_start: acc_start,
        eval_accuracy_end: acc_end,
    })
}

/// Log-likelihoods of the chosen and rejected images of `idx` under `model` (no gradient), with
/// the held-out draws of `logp`.
#[allow(clippy::too_many_arguments)]
fn batch_ref_only(
    model: &Showo,
    layout: &Layout,
    data: &Data,
    idx: &[usize],
    cfg: &DpoConfig,
    logp: &LogpConfig,
    dev: Device,
) -> Result<(Tensor, Tensor)> {
    let n = layout.num_vq_tokens as usize;
    let mut cs = Vec::new();
    let mut rs = Vec::new();
    for chunk in idx.chunks(cfg.batch_size.max(1)) {
        let draws: Vec<_> = chunk
            .iter()
            .map(|&i| pair_draws(cfg.seed ^ 0xE7A1, 0, i as u64, n, logp))
            .collect();
        let batch = data.pair_batch(layout, chunk, &draws, logp, dev)?;
        let (lc, lr) = tch::no_grad(|| batch.logps(model, layout, logp));
        cs.push(lc);
        rs.push(lr);
    }
    Ok((Tensor::cat(&cs, 0), Tensor::cat(&rs, 0)))
}

/// What one guided step measured: mean reward, the term's loss, and the mean KL to the reference
/// per trajectory (when a reference is given).
pub struct GuideStep {
    pub reward: f64,
    pub loss: f64,
    pub kl: Option<f64>,
}

/// Samples with the current policy, scores with the judge, and backpropagates the guidance term.
/// With `reference`, the KL to it on the replayed states is measured (and penalised when
/// `g.kl_coef` > 0, which requires it).
#[allow(clippy::too_many_arguments)]
pub fn guided_backward(
    policy: &Showo,
    reference: Option<&Showo>,
    layout: &Layout,
    tok: &TextTokenizer,
    vq: &dyn crate::models::ImageTokenizer,
    scorer: &mut dyn ImageScorer,
    metas: &[Metadata],
    g: &super::guidance::GuideConfig,
    recipe: &Recipe,
    seed: u64,
    step: u64,
) -> Result<GuideStep> {
    ensure!(!metas.is_empty(), "no prompts for guidance");
    let mut rng = rng::DataRng::with_stream(seed ^ 0x6D1D_E000, step);
    let chosen: Vec<&Metadata> = (0..g.prompts_per_step)
        .map(|_| &metas[rng.below(metas.len() as u64) as usize])
        .collect();
    let prompts: Vec<String> = chosen.iter().map(|m| m.prompt.clone()).collect();
    let dev = policy.device();
    let text = layout.text_batch(tok, &prompts, dev)?;
    let k = g.samples_per_prompt;
    let prompt_of: Vec<usize> = (0..prompts.len())
        .flat_map(|j| std::iter::repeat_n(j, k))
        .collect();
    let seeds: Vec<u64> = (0..prompt_of.len())
        .map(|r| derive_seed(seed ^ 0x6D1D_E000, step, r as u64))
        .collect();
    let row_metas: Vec<&Metadata> = prompt_of.iter().map(|&j| chosen[j]).collect();
    let mut score = |codes: &Tensor| -> Result<Vec<f64>> {
        let images = vq.decode(&codes.to_device(dev))?;
        scorer.score(&row_metas, &images, codes)
    };
    guided_backward_on(
        policy,
        reference,
        layout,
        &text,
        &prompt_of,
        &seeds,
        &mut score,
        g,
        &recipe.sampler,
        &mut rng,
    )
}

/// [`guided_backward`] on prompts already tokenized: samples one row per seed (`prompt_of[r]`
/// indexes `text`; rows of a prompt are consecutive, `g.samples_per_prompt` of them), rewards
/// each row through `score` (its codes → one reward per row), and backpropagates the term.
/// `rng` draws the replayed states when `g.replay_steps` is set. The benchmark calls it directly.
#[allow(clippy::too_many_arguments)]
pub fn guided_backward_on(
    policy: &Showo,
    reference: Option<&Showo>,
    layout: &Layout,
    text: &Tensor,
    prompt_of: &[usize],
    seeds: &[u64],
    score: &mut dyn FnMut(&Tensor) -> Result<Vec<f64>>,
    g: &super::guidance::GuideConfig,
    sampler: &generate::SamplerConfig,
    rng: &mut rng::DataRng,
) -> Result<GuideStep> {
    ensure!(
        g.kl_coef.is_finite() && g.kl_coef >= 0.0,
        "dpo.guide.kl_coef must be a finite number ≥ 0, found {}",
        g.kl_coef
    );
    ensure!(
        g.kl_coef == 0.0 || reference.is_some(),
        "dpo.guide.kl_coef needs the reference model"
    );
    let k = g.samples_per_prompt;
    ensure!(
        k >= 2,
        "dpo.guide.samples_per_prompt must be at least 2 (leave-one-out baseline)"
    );
    ensure!(
        seeds.len() == prompt_of.len() && seeds.len().is_multiple_of(k),
        "guidance: {} seeds for {} rows in groups of {k}",
        seeds.len(),
        prompt_of.len()
    );
    let dev = policy.device();
    let out = generate::sample(
        policy,
        layout,
        text,
        prompt_of,
        seeds,
        sampler,
        &mut generate::NoHook,
    )?;
    let rewards = score(&out.codes)?;
    ensure!(
        rewards.len() == seeds.len(),
        "guidance: {} rewards for {} rows",
        rewards.len(),
        seeds.len()
    );
    let adv = super::guidance::rloo_advantages(&rewards, k);
    let idx =
        Tensor::from_slice(&prompt_of.iter().map(|&j| j as i64).collect::<Vec<_>>()).to_device(dev);
    let t = sampler.steps;
    let r = g.replayed_states(t);
    let replay: Vec<i64> = if r == t {
        (0..t as i64).collect()
    } else {
        // A uniform subset of the states (partial Fisher–Yates on the same per-step stream).
        let mut all: Vec<i64> = (0..t as i64).collect();
        for i in 0..r {
            let j = i + rng.below((t - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(r);
        all
    };
    let states = super::guidance::replay_states(
        layout,
        &text.index_select(0, &idx),
        &out.codes.to_device(dev),
        &out.commit_step.to_device(dev),
        &replay,
    );
    let cfg_scale = sampler.cfg_scale;
    let policy_lp = states.log_probs(policy, layout, cfg_scale);
    let traj = states.trajectory_logps(&policy_lp, t);
    let mut loss = super::guidance::guidance_loss(&traj, &adv, layout.num_vq_tokens, g.reward_coef);
    let mut kl_mean = None;
    if let Some(reference) = reference {
        let ref_lp = tch::no_grad(|| states.log_probs(reference, layout, cfg_scale));
        let kl = states.kl(&policy_lp, &ref_lp, t).mean(Kind::Float);
        kl_mean = Some(kl.double_value(&[]));
        if g.kl_coef > 0.0 {
            loss += kl * (g.kl_coef / layout.num_vq_tokens as f64);
        }
    }
    loss.backward();
    Ok(GuideStep {
        reward: rewards.iter().sum::<f64>() / rewards.len() as f64,
        loss: loss.double_value(&[]),
        kl: kl_mean,
    })
}
