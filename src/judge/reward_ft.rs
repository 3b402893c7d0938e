//! `reward-ft`: fine-tunes a LLaVA-OneVision judge on LLaVA-format yes/no data (spec-judges §6):
//! `preprocess_qwen` labels (assistant turns supervised), mean CE over the supervised tokens, AdamW
//! with a separate LR multiplier for the vision tower, warmup + cosine, grad clipping, full
//! fine-tune or LoRA (merged on save), TensorBoard logging; saves in the original key layout and
//! reports held-out yes/no accuracy and pairwise ranking accuracy, measured on the reloaded
//! checkpoint. Without an initial checkpoint a small judge is initialised from scratch.
use super::dataset::{load_sources, DataSource, Layout, Record, Sourced};
use super::vision_pretrain::{pretrain_tower, VisionPretrain, VisionPretrainReport};
use crate::models::llava_ov::config::LlavaOvConfig;
use crate::models::llava_ov::model::LlavaOnevision;
use crate::models::llava_ov::prompt::{JudgeQuestion, PromptLayout};
use crate::models::llava_ov::train::{
    bare_tokens, chat_tokens, forward_batch, init_weights_on, model_from_tensors, pad_image_u8,
    save_checkpoint, BatchItem, ChatTokens, LoraConfig, ScratchConfig, Trainable,
};
use crate::train::ckpt;
use crate::train::logging::{Logger, LoggerOptions};
use crate::train::optim::{AdamW, AdamWConfig, ParamGroup};
use crate::train::schedule::LrSchedule;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

/// One fine-tuning run (the `orm:` / `parm:` sections of a judges recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardFtConfig {
    /// Training data (the seed's yaml list: path + sampling).
    pub data: Vec<DataSource>,
    /// Held-out data for the metrics.
    #[serde(default)]
    pub heldout: Vec<DataSource>,
    /// Initial checkpoint (LLaVA-NeXT layout); None = from scratch (`scratch` of the recipe).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Where the fine-tuned checkpoint is saved.
    pub out: PathBuf,
    /// Run folder (log.txt, TensorBoard).
    pub run_dir: PathBuf,
    pub lr: f64,
    /// LR multiplier of the vision tower (the seed: 2e-6 / 1e-5 = 0.2). 0 freezes the tower: it
    /// gets no gradients (its backward pass is skipped) and they are not in the clipped norm.
    #[serde(default = "one")]
    pub vision_lr_mult: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Warmup as a share of the steps (the seed: 0.03).
    #[serde(default = "d_warmup")]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Not in the paper: warmup-stable-decay, the peak LR held until the last `decay_ratio` of
    /// the steps, which decay by the same half-cosine. None: the cosine spans every step after
    /// warmup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_ratio: Option<f64>,
    /// Epochs over `data` (ignored when `max_steps` is set).
    #[serde(default = "one")]
    pub epochs: f64,
    #[serde(default)]
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default = "d_log")]
    pub log_every: u64,
    /// Held-out evaluation every this many steps (0 = only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Held-out records used by the periodic evaluation (0 = all).
    #[serde(default)]
    pub eval_subset: usize,
    /// Resume state (weights, optimizer moments, step) saved to `<run_dir>/resume` every this
    /// many steps, so that an interrupted stage continues where it stopped (0 = never).
    #[serde(default = "d_save_every")]
    pub save_every: u64,
    /// `preprocess_multimodal`: move `<image>` to the front of its message (the seed's training).
    #[serde(default = "yes")]
    pub image_to_front: bool,
    /// Stored dtype of the saved weights (`fp32`, `bf16`, `fp16`).
    #[serde(default = "d_save_dtype")]
    pub save_dtype: String,
    /// Not in the paper, whose loss also covers the assistant header and `<|im_end|>`: the loss on
    /// each record's last answer alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_only: bool,
    /// Not in the paper (its tower is a pretrained SigLIP): first train the tower alone to name
    /// each glyph cell's shape and color ([`super::vision_pretrain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision_pretrain: Option<VisionPretrain>,
    /// How the saved judge is asked at inference (`imgcot_prompt_layout` in its config.json);
    /// None keeps the initial checkpoint's (the paper's chat template for a scratch judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_layout: Option<PromptLayout>,
    /// Not in the paper: train the stage again with the next seed while its held-out accuracy
    /// on one kind stays under a floor. A scratch judge's verdict emerges late, at a step that
    /// depends on the seed (README, "Glyph judges").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
}

/// When [`RewardFtConfig::retry`] trains a stage again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// A held-out kind as the report names it (`orm-dense+bare`, `orm`, ...).
    pub kind: String,
    /// Train again while the saved judge's accuracy on `kind` is below this.
    pub min_accuracy: f64,
    /// Tries in all, with seeds `seed`, `seed + 1`, ...
    pub max_tries: u32,
}

/// One finished try of a stage with `retry` (`<run_dir>/tries.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TryRecord {
    pub seed: u64,
    pub accuracy: f64,
}

/// `<run_dir>/tries.json`: the tries that fell short, for the settings they ran with.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tries {
    config: serde_json::Value,
    tries: Vec<TryRecord>,
}

const TRIES_FILE: &str = "tries.json";

fn one() -> f64 {
    1.0
}
fn d_warmup() -> f64 {
    0.03
}
fn d_log() -> u64 {
    10
}
fn yes() -> bool {
    true
}
fn d_save_dtype() -> String {
    "fp32".into()
}
fn d_save_every() -> u64 {
    200
}

/// A tokenised record with its preprocessed image.
pub struct Prepared {
    pub tokens: ChatTokens,
    /// uint8 [3, S, S].
    pub image: Tensor,
    pub label: Option<bool>,
    pub kind: String,
    pub group: String,
    /// Loss weight of its supervised tokens (its source's `loss_weight`).
    pub weight: f64,
}

/// Tokenises records in the chat layout with weight 1 and loads their images (each file once).
pub fn prepare(
    records: &[Record],
    tok: &Tokenizer,
    image_size: i64,
    image_to_front: bool,
) -> Result<Vec<Prepared>> {
    let items: Vec<_> = records.iter().map(|r| (r, Layout::Chat, 1.0)).collect();
    prepare_items(&items, tok, image_size, image_to_front, false)
}

/// [`prepare`] for records loaded with their sources' `layout` and `loss_weight`.
pub fn prepare_sourced(
    sourced: &[Sourced],
    tok: &Tokenizer,
    image_size: i64,
    image_to_front: bool,
    answer_only: bool,
) -> Result<Vec<Prepared>> {
    let items: Vec<_> = sourced
        .iter()
        .map(|s| (&s.record, s.layout, s.loss_weight))
        .collect();
    prepare_items(&items, tok, image_size, image_to_front, answer_only)
}

/// A record's tokens in `layout`.
fn record_tokens(
    r: &Record,
    layout: Layout,
    tok: &Tokenizer,
    image_to_front: bool,
) -> Result<ChatTokens> {
    let turns = r.turns()?;
    match layout {
        Layout::Chat => chat_tokens(tok, &turns, image_to_front),
        Layout::Bare => {
            let prompt = &r.meta.as_ref().context("no meta.prompt")?.prompt;
            let question = JudgeQuestion::of_kind(r.kind());
            bare_tokens(tok, question, prompt, &turns.last().context("no turns")?.1)
        }
    }
}

fn prepare_items(
    items: &[(&Record, Layout, f64)],
    tok: &Tokenizer,
    image_size: i64,
    image_to_front: bool,
    answer_only: bool,
) -> Result<Vec<Prepared>> {
    let mut cache: HashMap<String, Tensor> = HashMap::new();
    items
        .iter()
        .map(|&(r, layout, weight)| {
            let mut tokens = record_tokens(r, layout, tok, image_to_front)
                .with_context(|| format!("record {}", r.id))?;
            if answer_only {
                tokens.supervise_answer_only();
            }
            let image = match cache.get(&r.image) {
                Some(t) => t.shallow_clone(),
                None => {
                    let img = image::open(&r.image)
                        .with_context(|| format!("record {}: opening {}", r.id, r.image))?
                        .to_rgb8();
                    let t = pad_image_u8(&img, image_size as u32);
                    cache.insert(r.image.clone(), t.shallow_clone());
                    t
                }
            };
            Ok(Prepared {
                tokens,
                image,
                label: r.answer(),
                // Bare records report apart from the chat ones they are copies of.
                kind: match layout {
                    Layout::Chat => r.kind().to_string(),
                    Layout::Bare => format!("{}+bare", r.kind()),
                },
                group: r.group(),
                weight,
            })
        })
        .collect()
}

/// Held-out metrics of one question kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KindMetrics {
    pub n: usize,
    pub yes_share: f64,
    /// argmax over {yes, no} of the exact answer distribution = label.
    pub accuracy: f64,
    /// Over groups (same prompt) holding both labels: share of (yes, no) pairs whose P(yes) orders
    /// the yes image first (ties count half).
    pub pairwise: Option<f64>,
    pub pairs: usize,
    /// Mean CE of the answer token.
    pub answer_nll: f64,
}

/// P(yes), P(no) (exact softmax) at each item's answer position, batched, without gradients.
pub fn score_items(
    model: &LlavaOnevision,
    items: &[&Prepared],
    yes_no: (i64, i64),
    batch: usize,
) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let b: Vec<BatchItem> = chunk
            .iter()
            .map(|p| BatchItem {
                tokens: &p.tokens,
                image: &p.image,
                weight: p.weight,
            })
            .collect();
        let probs = tch::no_grad(|| -> Result<Tensor> {
            Ok(forward_batch(model, &b)?
                .answer_logits
                .softmax(-1, Kind::Float)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu))
        })?;
        let y: Vec<f64> = Vec::try_from(probs.select(1, yes_no.0))?;
        let n: Vec<f64> = Vec::try_from(probs.select(1, yes_no.1))?;
        out.extend(y.into_iter().zip(n));
    }
    Ok(out)
}

/// The error of a retry floor on a kind the held-out data lacks. `run_one` checks it before
/// training; the later checks (on the metrics) only guard that the two lists agree.
fn not_a_heldout_kind<'a>(kind: &str, have: impl IntoIterator<Item = &'a str>) -> anyhow::Error {
    anyhow!(
        "retry.kind '{kind}' is not a held-out kind of this stage (it has: {})",
        have.into_iter().collect::<Vec<_>>().join(", ")
    )
}

/// Accuracy and pairwise ranking per kind (records without a yes/no label are skipped).
pub fn metrics(items: &[&Prepared], scores: &[(f64, f64)]) -> BTreeMap<String, KindMetrics> {
    let mut by_kind: BTreeMap<String, Vec<(usize, bool)>> = BTreeMap::new();
    for (i, p) in items.iter().enumerate() {
        if let Some(l) = p.label {
            by_kind.entry(p.kind.clone()).or_default().push((i, l));
        }
    }
    let mut out = BTreeMap::new();
    for (kind, list) in by_kind {
        let n = list.len();
        let correct = list
            .iter()
            .filter(|&&(i, l)| (scores[i].0 > scores[i].1) == l)
            .count();
        let nll = list
            .iter()
            .map(|&(i, l)| -(if l { scores[i].0 } else { scores[i].1 }).max(1e-12).ln())
            .sum::<f64>()
            / n as f64;
        let mut groups: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for &(i, l) in &list {
            let g = groups.entry(items[i].group.as_str()).or_default();
            if l {
                g.0.push(scores[i].0)
            } else {
                g.1.push(scores[i].0)
            }
        }
        let (mut won, mut pairs) = (0.0, 0usize);
        for (ys, ns) in groups.values() {
            for y in ys {
                for m in ns {
                    pairs += 1;
                    won += if y > m {
                        1.0
                    } else if y == m {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        out.insert(
            kind,
            KindMetrics {
                n,
                yes_share: list.iter().filter(|x| x.1).count() as f64 / n as f64,
                accuracy: correct as f64 / n as f64,
                pairwise: (pairs > 0).then(|| won / pairs as f64),
                pairs,
                answer_nll: nll,
            },
        );
    }
    out
}

/// What a run reports (also written to `<out>/reward_ft.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub steps: u64,
    pub train_records: usize,
    pub heldout_records: usize,
    pub trainable_params: i64,
    pub first_loss: f64,
    pub final_loss: f64,
    pub seconds: f64,
    /// Largest |ΔP(yes)|, |ΔP(no)| on the held-out records between the trained model in memory
    /// and the saved checkpoint reloaded with `LlavaJudge::load` (0 for a try under its retry
    /// floor, which is not saved).
    pub reload_max_abs_diff: f64,
    /// The tower pretraining, when the stage has `vision_pretrain`.
    #[serde(default)]
    pub vision_pretrain: Option<VisionPretrainReport>,
    /// Held-out metrics of the saved checkpoint, reloaded from disk (of the model in memory for a
    /// try under its retry floor).
    pub heldout: BTreeMap<String, KindMetrics>,
    pub config: RewardFtConfig,
}

/// The initial model: `init` (a checkpoint folder) or a scratch judge (`scratch` + `tokenizer`).
/// Returns the model, its config.json value and the folder holding the tokenizer/side files.
pub fn initial_model(
    init: Option<&Path>,
    scratch: Option<(&ScratchConfig, &Path)>,
    device: Device,
    seed: u64,
) -> Result<(LlavaOnevision, serde_json::Value, PathBuf)> {
    if let Some(dir) = init {
        let tok_path = dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("loading {}: {e}", tok_path.display()))?;
        let keep = tok.get_vocab_size(true) as i64;
        let model = LlavaOnevision::load(dir, device, Kind::Float, Some(keep))?;
        let cfg_path = dir.join("config.json");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?,
        )
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
        return Ok((model, cfg, dir.to_path_buf()));
    }
    let (sc, tok_path) = scratch.context("no --init checkpoint and no scratch config")?;
    let tok = Tokenizer::from_file(tok_path)
        .map_err(|e| anyhow!("loading {}: {e}", tok_path.display()))?;
    let json = sc.config_json(tok.get_vocab_size(true) as i64);
    let cfg = LlavaOvConfig::from_json_str(&json.to_string()).context("scratch judge config")?;
    let tensors = init_weights_on(&cfg, seed as i64, Device::Cpu, Kind::Float, sc.weight_init);
    let model = model_from_tensors(cfg, tensors, device)?;
    let side = tok_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((model, json, side))
}

/// The scratch tokenizer must sit in a folder as `tokenizer.json` (it is copied from there).
fn check_side_dir(side: &Path) -> Result<()> {
    ensure!(
        side.join("tokenizer.json").exists(),
        "{}: no tokenizer.json",
        side.display()
    );
    Ok(())
}

/// Runs one fine-tune. `scratch` is used when `cfg.init` is None. A stage interrupted after a
/// resume save continues from it (see [`RewardFtConfig::save_every`]).
pub fn run(
    cfg: &RewardFtConfig,
    scratch: Option<(&ScratchConfig, &Path)>,
    device: Device,
) -> Result<Report> {
    run_until(cfg, scratch, device, None)?
        .context("reward-ft stopped before its last step without being asked to")
}

/// [`run`], but with `stop_after: Some(k)` it saves the resume state after step k and returns
/// `None` there, as if interrupted (how the resume tests stop a run part-way). With `retry`, the
/// tries that fell short are kept in `<run_dir>/tries.json`, so an interrupted later try resumes
/// as itself.
pub fn run_until(
    cfg: &RewardFtConfig,
    scratch: Option<(&ScratchConfig, &Path)>,
    device: Device,
    stop_after: Option<u64>,
) -> Result<Option<Report>> {
    // `--max-steps 0` only scores: another seed would score the same weights again.
    let Some(retry) = cfg.retry.as_ref().filter(|_| cfg.max_steps != Some(0)) else {
        return run_one(cfg, scratch, device, stop_after, None);
    };
    ensure!(retry.max_tries >= 1, "retry.max_tries must be ≥ 1");
    ensure!(
        (0.0..=1.0).contains(&retry.min_accuracy),
        "retry.min_accuracy must lie in [0, 1], got {}",
        retry.min_accuracy
    );
    let path = cfg.run_dir.join(TRIES_FILE);
    let config = serde_json::to_value(cfg)?;
    let mut done: Vec<TryRecord> = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let t: Tries = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            // Tries of other settings say nothing about these.
            if t.config == config {
                t.tries
            } else {
                vec![]
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let summary = |done: &[TryRecord]| {
        done.iter()
            .map(|t| format!("seed {}: {:.4}", t.seed, t.accuracy))
            .collect::<Vec<_>>()
            .join(", ")
    };
    while (done.len() as u32) < retry.max_tries {
        let mut c = cfg.clone();
        c.retry = None;
        c.seed = cfg.seed + done.len() as u64;
        if !done.is_empty() {
            println!(
                "reward-ft: try {} of {} with seed {} (held-out {} accuracy under {}: {})",
                done.len() + 1,
                retry.max_tries,
                c.seed,
                retry.kind,
                retry.min_accuracy,
                summary(&done)
            );
        }
        let Some(rep) = run_one(&c, scratch, device, stop_after, Some(retry))? else {
            return Ok(None);
        };
        let Some(m) = rep.heldout.get(&retry.kind) else {
            return Err(not_a_heldout_kind(
                &retry.kind,
                rep.heldout.keys().map(String::as_str),
            ));
        };
        if m.accuracy >= retry.min_accuracy {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
            return Ok(Some(rep));
        }
        // `run_one` publishes no judge under the floor. A judge already at `out` (an earlier
        // run's, or one whose reloaded scores fell under the floor that the in-memory ones
        // met) goes too: nothing there may look like this stage's result. config.json first:
        // it is what marks a judge folder as present, so a kill during the removal leaves no
        // half-deleted judge that a later run would try to load.
        if cfg.out.join("config.json").exists() {
            std::fs::remove_file(cfg.out.join("config.json"))
                .with_context(|| format!("removing {}/config.json", cfg.out.display()))?;
        }
        if cfg.out.exists() {
            std::fs::remove_dir_all(&cfg.out)
                .with_context(|| format!("removing {} (under the floor)", cfg.out.display()))?;
        }
        done.push(TryRecord {
            seed: c.seed,
            accuracy: m.accuracy,
        });
        crate::util::atomic_write(
            &path,
            serde_json::to_string_pretty(&Tries {
                config: config.clone(),
                tries: done.clone(),
            })?
            .as_bytes(),
        )?;
    }
    bail!(
        "held-out {} accuracy stayed under {} in {} tries ({}), so no judge was saved to {}. \
         Train with other settings, or delete {} to try the same seeds again",
        retry.kind,
        retry.min_accuracy,
        done.len(),
        summary(&done),
        cfg.out.display(),
        path.display()
    )
}

/// The stage's LR schedule over `total` steps: warmup, then a cosine over every later step, or
/// over the last `decay_ratio` of them (warmup-stable-decay).
fn lr_schedule(cfg: &RewardFtConfig, total: u64) -> Result<LrSchedule> {
    let warmup_steps = (cfg.warmup_ratio * total as f64).ceil() as u64;
    Ok(match cfg.decay_ratio {
        None => LrSchedule::Cosine {
            warmup_steps,
            total_steps: total,
            min_lr_ratio: cfg.min_lr_ratio,
        },
        Some(r) => {
            ensure!(
                r > 0.0 && r <= 1.0,
                "decay_ratio must be in (0, 1], got {r}"
            );
            LrSchedule::Wsd {
                warmup_steps,
                total_steps: total,
                decay_steps: (r * total as f64).ceil() as u64,
                min_lr_ratio: cfg.min_lr_ratio,
            }
        }
    })
}

/// One try of a stage (`cfg.retry` is not looked at). With `floor`, a judge whose held-out
/// accuracy in memory falls under it is not saved, and the report then holds the in-memory
/// metrics. The floor is checked on the model in memory: if the saved checkpoint's reloaded
/// scores fall under it where those did not (a rounding `save_dtype`), the judge is already
/// published and [`run_until`] removes it afterwards.
fn run_one(
    cfg: &RewardFtConfig,
    scratch: Option<(&ScratchConfig, &Path)>,
    device: Device,
    stop_after: Option<u64>,
    floor: Option<&RetryConfig>,
) -> Result<Option<Report>> {
    let t0 = Instant::now();
    ensure!(cfg.batch_size >= 1, "batch_size must be ≥ 1");
    ensure!(
        cfg.vision_lr_mult.is_finite() && cfg.vision_lr_mult >= 0.0,
        "vision_lr_mult must be ≥ 0 (0 freezes the tower), got {}",
        cfg.vision_lr_mult
    );
    // A bad `decay_ratio` fails here, before any data is read.
    lr_schedule(cfg, 1)?;
    ensure!(
        !cfg.run_dir.starts_with(&cfg.out),
        "run_dir {} lies inside the checkpoint folder {}, which is replaced on save",
        cfg.run_dir.display(),
        cfg.out.display()
    );
    // libtorch's default generator starts from a random seed in each process: seeded here,
    // what a stage draws from it (scratch weights, the tower pretraining's heads) repeats.
    crate::train::rng::seed_torch(cfg.seed);
    let (model, mut config_json, side) =
        initial_model(cfg.init.as_deref(), scratch, device, cfg.seed)?;
    check_side_dir(&side)?;
    let tok_path = side.join("tokenizer.json");
    let tok = Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow!("loading {}: {e}", tok_path.display()))?;
    let yes_no = yes_no_ids(&tok)?;
    let size = model.config().vision.image_size;
    let train_recs = load_sources(&cfg.data, None, cfg.seed)?;
    ensure!(!train_recs.is_empty(), "no training records");
    let held_recs = load_sources(&cfg.heldout, None, cfg.seed)?;
    let train = prepare_sourced(&train_recs, &tok, size, cfg.image_to_front, cfg.answer_only)?;
    let held = prepare_sourced(&held_recs, &tok, size, cfg.image_to_front, cfg.answer_only)?;
    // A floor on a kind the held-out data lacks fails now, not after the training.
    if let Some(floor) = floor {
        let kinds: std::collections::BTreeSet<&str> = held
            .iter()
            .filter(|p| p.label.is_some())
            .map(|p| p.kind.as_str())
            .collect();
        if !kinds.contains(floor.kind.as_str()) {
            return Err(not_a_heldout_kind(&floor.kind, kinds));
        }
    }

    let steps_per_epoch = train.len().div_ceil(cfg.batch_size) as u64;
    let total = cfg
        .max_steps
        .unwrap_or(((cfg.epochs * steps_per_epoch as f64).ceil() as u64).max(1));
    let mut log = Logger::new(
        &cfg.run_dir,
        total,
        LoggerOptions {
            print_every: cfg.log_every.max(1),
            ..LoggerOptions::default()
        },
    )?;
    let resume_root = cfg.run_dir.join(RESUME_DIR);
    let fingerprint = resume_fingerprint(cfg, scratch)?;
    let resumed = open_resume(&resume_root, &fingerprint)?;
    // Before `Trainable::new`, which sets what trains (the tower pretraining trains the tower).
    let vision_pretrain = match (&cfg.vision_pretrain, &resumed) {
        (_, Some(r)) => r.extra.vision_pretrain.clone(),
        (Some(vp), None) => {
            fn imgs(p: &[Prepared]) -> Vec<&Tensor> {
                p.iter().map(|x| &x.image).collect()
            }
            Some(pretrain_tower(
                &model,
                &imgs(&train),
                &imgs(&held),
                vp,
                cfg.seed,
                &mut log,
            )?)
        }
        (None, None) => None,
    };
    if let Some(frozen) = resumed.as_ref().and_then(|r| r.frozen.as_ref()) {
        // The weights that do not train, of a run whose tower was pretrained (a LoRA run, its
        // targets as W0, or a frozen tower; older states hold every weight). What trains comes
        // from the trainable state below.
        let saved = frozen.load_tensors(RESUME_WEIGHTS)?;
        let names: std::collections::HashSet<&str> =
            saved.iter().map(|(n, _)| n.as_str()).collect();
        let held: Vec<(String, Tensor)> = model
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| names.contains(n.as_str()))
            .collect();
        let view = ckpt::var_store_of(device, held)?;
        ckpt::copy_into_varstore(
            &view,
            saved,
            &frozen.dir.join(RESUME_WEIGHTS).display().to_string(),
        )?;
    }
    // The saved judge is asked in this layout; training it only in another is almost surely a
    // recipe mistake (a scratch judge learns the verdict in one layout at a time; README).
    let asked = cfg.prompt_layout.unwrap_or(model.config().prompt_layout);
    if !cfg.data.iter().any(|d| d.layout == asked) {
        log.info(format!(
            "warning: the saved judge will be asked in the {asked:?} layout, which no training \
             source uses (set `prompt_layout` or a source's `layout`)"
        ));
    }
    // A zero multiplier freezes the tower outright: no backward pass through it (about a third
    // of a glyph judge's compute), so its gradients do not count in the clipped norm either.
    let trainable = Trainable::new(
        &model,
        cfg.lora.as_ref(),
        cfg.seed,
        cfg.vision_lr_mult == 0.0,
    )?;
    if let Some(r) = &resumed {
        // A frozen tower's pretraining lives only in `frozen/`, which every save since it
        // existed writes first; without it (an older build's state) the resume would go on
        // with the initial tower and then save that as the pretrained one.
        ensure!(
            !(trainable.freezes_some && r.extra.vision_pretrain.is_some() && r.frozen.is_none()),
            "{}: this resume state lacks the frozen pretrained weights (written by an older \
             build); remove it to train the stage from the start",
            resume_root.display()
        );
    }
    let vision_mult = cfg.vision_lr_mult;
    let mut opt = AdamW::with_groups(
        &trainable.vs,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
        |name| {
            let mut g = ParamGroup::default_for(name);
            if name.contains("vision_tower") {
                g.lr_mult = vision_mult;
            }
            g
        },
    )?;
    let sched = lr_schedule(cfg, total)?;
    let mut start = 0;
    let mut first_loss = f64::NAN;
    if let Some(r) = &resumed {
        // Everything that trains: all weights in a full fine-tune; the factors and the
        // `train_also` weights with LoRA, whose merged weights are then rebuilt.
        ckpt::copy_into_varstore(
            &trainable.vs,
            r.ckpt.load_tensors(RESUME_TRAINABLE)?,
            &r.ckpt.dir.join(RESUME_TRAINABLE).display().to_string(),
        )?;
        trainable.after_step();
        r.ckpt.load_optimizer(&mut opt)?;
        start = r.step;
        first_loss = r.extra.first_loss;
        ensure!(
            start < total,
            "{}: resume state at step {start} of a {total}-step run",
            r.ckpt.dir.display()
        );
        log.info(format!(
            "resumed from {} at step {start}",
            r.ckpt.dir.display()
        ));
    }
    log.info(format!(
        "reward-ft: {} train / {} held-out records, {} steps of batch {}, {} trainable params{}",
        train.len(),
        held.len(),
        total,
        cfg.batch_size,
        trainable.num_params(),
        if cfg.lora.is_some() { " (LoRA)" } else { "" }
    ));
    let vars = opt.vars();
    let mut batches = BatchOrder::new(cfg.seed, train.len(), cfg.batch_size);
    // A resumed run draws the batches the uninterrupted run would have drawn.
    for _ in 0..start {
        batches.next_batch();
    }
    let mut last_loss = f64::NAN;
    let eval_items: Vec<&Prepared> = if cfg.eval_subset > 0 {
        held.iter().take(cfg.eval_subset).collect()
    } else {
        held.iter().collect()
    };
    for step in start..total {
        let idx = batches.next_batch();
        let batch: Vec<BatchItem> = idx
            .iter()
            .map(|&i| BatchItem {
                tokens: &train[i].tokens,
                image: &train[i].image,
                weight: train[i].weight,
            })
            .collect();
        let out = forward_batch(&model, &batch)?;
        opt.zero_grad();
        out.loss.backward();
        trainable.after_backward();
        let gnorm = crate::train::grad::clip_grad_norm(&vars, cfg.max_grad_norm);
        let loss = out.loss.double_value(&[]);
        if !loss.is_finite() || !gnorm.is_finite() {
            bail!("step {step}: non-finite loss {loss} / grad norm {gnorm}");
        }
        let lr = sched.lr(cfg.lr, step);
        opt.set_lr(lr);
        opt.step()?;
        trainable.after_step();
        if step == 0 {
            first_loss = loss;
        }
        last_loss = loss;
        let acc = batch_accuracy(&out.answer_logits, &idx, &train, yes_no);
        log.step(
            step + 1,
            &[
                ("train/loss", loss),
                ("train/answer_acc", acc),
                ("train/grad_norm", gnorm),
                ("train/lr", lr),
            ],
        );
        if cfg.eval_every > 0
            && (step + 1) % cfg.eval_every == 0
            && step + 1 < total
            && !eval_items.is_empty()
        {
            let s = score_items(&model, &eval_items, yes_no, 64)?;
            for (k, m) in metrics(&eval_items, &s) {
                log.scalar(&format!("heldout/{k}/accuracy"), m.accuracy, step + 1);
                if let Some(p) = m.pairwise {
                    log.scalar(&format!("heldout/{k}/pairwise"), p, step + 1);
                }
                log.info(format!(
                    "step {} held-out {k}: acc {:.4} pairwise {} (n={})",
                    step + 1,
                    m.accuracy,
                    m.pairwise.map(|p| format!("{p:.4}")).unwrap_or("-".into()),
                    m.n
                ));
            }
        }
        let done = step + 1;
        let stop = stop_after == Some(done) && done < total;
        if stop || (cfg.save_every > 0 && done.is_multiple_of(cfg.save_every) && done < total) {
            let extra = ResumeExtra {
                fingerprint: fingerprint.clone(),
                first_loss,
                vision_pretrain: vision_pretrain.clone(),
            };
            save_resume(
                &resume_root,
                &model,
                &trainable,
                &opt,
                done,
                cfg.seed,
                &extra,
            )
            .with_context(|| format!("saving the resume state in {}", resume_root.display()))?;
        }
        if stop {
            log.info(format!(
                "stopped after step {done} as asked; resume state in {}",
                resume_root.display()
            ));
            log.finish();
            return Ok(None);
        }
    }
    let save_kind = crate::util::parse_dtype(&cfg.save_dtype)?;
    let all: Vec<&Prepared> = held.iter().collect();
    let in_memory = score_items(&model, &all, yes_no, 64)?;
    // The report of this try, saved or not.
    let report = |heldout, reload_max_abs_diff| Report {
        steps: total,
        train_records: train.len(),
        heldout_records: held.len(),
        trainable_params: trainable.num_params(),
        first_loss,
        final_loss: last_loss,
        seconds: t0.elapsed().as_secs_f64(),
        reload_max_abs_diff,
        vision_pretrain,
        heldout,
        config: cfg.clone(),
    };
    let clear_resume = || -> Result<()> {
        if resume_root.exists() {
            std::fs::remove_dir_all(&resume_root)
                .with_context(|| format!("removing {}", resume_root.display()))?;
        }
        Ok(())
    };
    if let Some(floor) = floor {
        let heldout = metrics(&all, &in_memory);
        let Some(m) = heldout.get(&floor.kind) else {
            return Err(not_a_heldout_kind(
                &floor.kind,
                heldout.keys().map(String::as_str),
            ));
        };
        if m.accuracy < floor.min_accuracy {
            log.info(format!(
                "held-out {} accuracy {:.4} is under {}: not saved",
                floor.kind, m.accuracy, floor.min_accuracy
            ));
            // This try is over; the next one (another seed) starts afresh.
            clear_resume()?;
            log.finish();
            return Ok(Some(report(heldout, 0.0)));
        }
    }
    if let Some(l) = cfg.prompt_layout {
        config_json
            .as_object_mut()
            .context("config.json is not an object")?
            .insert("imgcot_prompt_layout".into(), serde_json::to_value(l)?);
    }
    save_checkpoint(&model, config_json, &side, &cfg.out, save_kind)?;
    drop(model);
    // Metrics from the checkpoint as saved: proves it loads and scores as trained.
    let reloaded = crate::models::llava_ov::LlavaJudge::load(&cfg.out, device, Kind::Float)
        .with_context(|| format!("reloading {}", cfg.out.display()))?;
    let scores = score_items(reloaded.model(), &all, yes_no, 64)?;
    let reload_max_abs_diff = in_memory
        .iter()
        .zip(&scores)
        .map(|(a, b)| (a.0 - b.0).abs().max((a.1 - b.1).abs()))
        .fold(0.0, f64::max);
    let heldout = metrics(&all, &scores);
    for (k, m) in &heldout {
        log.scalar(&format!("heldout/{k}/accuracy"), m.accuracy, total);
        if let Some(p) = m.pairwise {
            log.scalar(&format!("heldout/{k}/pairwise"), p, total);
        }
        log.info(format!(
            "final held-out {k}: n={} yes={:.3} accuracy={:.4} pairwise={} ({} pairs) nll={:.4}",
            m.n,
            m.yes_share,
            m.accuracy,
            m.pairwise.map(|p| format!("{p:.4}")).unwrap_or("-".into()),
            m.pairs,
            m.answer_nll
        ));
    }
    let report = report(heldout, reload_max_abs_diff);
    crate::util::atomic_write(
        &cfg.out.join("reward_ft.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    // The stage is done: a later run with the same run folder trains afresh.
    clear_resume()?;
    log.info(format!(
        "saved {} ({:.0}s; reload max |Δp| {:.2e})",
        cfg.out.display(),
        report.seconds,
        report.reload_max_abs_diff
    ));
    log.finish();
    Ok(Some(report))
}

/// The shuffled batches of a run: each epoch is a fresh shuffle of the records, drawn from one
/// seeded stream, and a batch that crosses an epoch's end takes the rest of it first.
struct BatchOrder {
    rng: rand::rngs::ChaCha8Rng,
    order: Vec<usize>,
    n: usize,
    batch: usize,
}

impl BatchOrder {
    fn new(seed: u64, n: usize, batch: usize) -> Self {
        Self {
            rng: crate::glyphs::rng::seeded(seed, 0x0072_6674),
            order: Vec::new(),
            n,
            batch,
        }
    }

    fn next_batch(&mut self) -> Vec<usize> {
        if self.order.len() < self.batch {
            let mut e: Vec<usize> = (0..self.n).collect();
            crate::glyphs::rng::shuffle(&mut self.rng, &mut e);
            // Remaining indices first, then a fresh epoch.
            self.order.splice(0..0, e.into_iter().rev());
        }
        (0..self.batch.min(self.order.len()))
            .filter_map(|_| self.order.pop())
            .collect()
    }
}

/// Folder (inside the stage's run folder) of the state a resumed stage continues from:
/// `steps/state` (what trains, the optimizer, the step; replaced at each save) and, for a run
/// that freezes weights (LoRA, a frozen tower) and pretrained its tower first, `frozen` (the
/// other weights, written once).
pub const RESUME_DIR: &str = "resume";
const RESUME_STEPS: &str = "steps";
const RESUME_STATE: &str = "state";
const RESUME_FROZEN: &str = "frozen";
const RESUME_TRAINABLE: &str = "trainable.safetensors";
const RESUME_WEIGHTS: &str = "weights.safetensors";

/// What a resumed stage needs besides weights and optimizer moments (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeExtra {
    /// The settings of the run that saved it: only the same run may continue from it.
    fingerprint: serde_json::Value,
    first_loss: f64,
    vision_pretrain: Option<VisionPretrainReport>,
}

struct Resumed {
    ckpt: ckpt::Checkpoint,
    frozen: Option<ckpt::Checkpoint>,
    step: u64,
    extra: ResumeExtra,
}

/// The run's settings (`save_every` aside) and its initial checkpoint's save time.
fn resume_fingerprint(
    cfg: &RewardFtConfig,
    scratch: Option<(&ScratchConfig, &Path)>,
) -> Result<serde_json::Value> {
    let mut c = cfg.clone();
    c.save_every = 0;
    let init_saved = cfg
        .init
        .as_ref()
        .and_then(|d| {
            std::fs::metadata(d.join("config.json"))
                .ok()?
                .modified()
                .ok()
        })
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    // The data files by size and save time: `judge-data` rewrites them in place when the
    // generator changes, and a resumed stage must not train on a mix of two datasets.
    let config = serde_json::to_value(&c)?;
    let mut files = Vec::new();
    data_paths(&config, &mut files);
    let data: Vec<Vec<String>> = files
        .iter()
        .map(|f| crate::commands::eval::weights_fingerprint(Path::new(f)).unwrap_or_default())
        .collect();
    Ok(serde_json::json!({
        "config": config,
        "scratch": scratch.map(|(s, _)| s),
        "init_saved": init_saved,
        "data": data,
    }))
}

/// Every `path` string of a config (its data sources, train and held-out).
fn data_paths(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match x {
                    serde_json::Value::String(s) if k == "path" => out.push(s.clone()),
                    _ => data_paths(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| data_paths(x, out)),
        _ => {}
    }
}

/// The newest complete resume state under `root`, checked against this run's settings. Without
/// one, whatever a run killed before its first save left there is removed.
fn open_resume(root: &Path, fingerprint: &serde_json::Value) -> Result<Option<Resumed>> {
    let steps = root.join(RESUME_STEPS);
    let latest = if steps.exists() {
        ckpt::remove_stale_tmp(&steps)?;
        ckpt::Checkpoint::latest(&steps)?
    } else {
        None
    };
    let Some(c) = latest else {
        if root.exists() {
            std::fs::remove_dir_all(root)
                .with_context(|| format!("removing {}", root.display()))?;
        }
        return Ok(None);
    };
    let state = c.trainer_state()?;
    let extra: ResumeExtra = serde_json::from_value(state.extra.clone())
        .with_context(|| format!("{}: trainer_state.json extra", c.dir.display()))?;
    // States saved before the data files were recorded are compared without them.
    let ignore: &[&str] = if extra.fingerprint.get("data").is_none() {
        &["data"]
    } else {
        &[]
    };
    let diff = crate::util::settings_diff(&extra.fingerprint, fingerprint, ignore);
    if !diff.is_empty() {
        bail!(
            "{} holds the resume state of a run with other settings (differing: {}); delete it \
             to train this stage afresh, or run with the settings it was saved with",
            root.display(),
            diff.join(", ")
        );
    }
    let frozen = root.join(RESUME_FROZEN);
    Ok(Some(Resumed {
        step: state.step,
        frozen: ckpt::is_complete(&frozen)
            .then(|| ckpt::Checkpoint::open(&frozen))
            .transpose()?,
        ckpt: c,
        extra,
    }))
}

/// Saves the resume state after `step` steps: what trains (all weights in a full fine-tune; the
/// LoRA factors and `train_also` weights otherwise), the optimizer and the step. A run that
/// freezes weights (LoRA, or `vision_lr_mult: 0`) and pretrained its tower first also saves, once,
/// the weights it freezes (each LoRA target as its base W0), which its initial checkpoint does not
/// hold.
fn save_resume(
    root: &Path,
    model: &LlavaOnevision,
    trainable: &Trainable,
    opt: &AdamW,
    step: u64,
    seed: u64,
    extra: &ResumeExtra,
) -> Result<()> {
    let frozen = root.join(RESUME_FROZEN);
    if trainable.freezes_some && extra.vision_pretrain.is_some() && !ckpt::is_complete(&frozen) {
        let bases: HashMap<String, &Tensor> = trainable
            .adapters
            .iter()
            .map(|a| (format!("{}.weight", a.module), &a.base))
            .collect();
        // What trains is in the trainable state already (a full fine-tune's language model
        // would otherwise be written twice).
        let trains = trainable.vs.variables();
        let weights: Vec<(String, Tensor)> = model
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| !trains.contains_key(n))
            .map(|(n, t)| {
                let t = bases
                    .get(&n)
                    .map(|b| b.detach())
                    .unwrap_or_else(|| t.detach());
                (n, t)
            })
            .collect();
        let w = ckpt::CheckpointWriter::begin(&frozen)?;
        w.save_tensors(RESUME_WEIGHTS, &weights)?;
        w.commit(&ckpt::TrainerState::default())?;
    }
    let trained: Vec<(String, Tensor)> = ckpt::named_variables_sorted(&trainable.vs)
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    let w = ckpt::CheckpointWriter::begin(&root.join(RESUME_STEPS).join(RESUME_STATE))?;
    w.save_tensors(RESUME_TRAINABLE, &trained)?;
    w.save_optimizer(opt)?;
    w.commit(&ckpt::TrainerState {
        step,
        seed,
        extra: serde_json::to_value(extra)?,
        ..Default::default()
    })?;
    Ok(())
}

/// Ids of "yes" and "no" (single tokens, as the judges read them).
pub fn yes_no_ids(tok: &Tokenizer) -> Result<(i64, i64)> {
    let id = |t: &str| {
        tok.token_to_id(t)
            .map(|i| i as i64)
            .with_context(|| format!("tokenizer has no token '{t}'"))
    };
    Ok((id("yes")?, id("no")?))
}

fn batch_accuracy(logits: &Tensor, idx: &[usize], data: &[Prepared], yn: (i64, i64)) -> f64 {
    let l = logits.detach().to_device(Device::Cpu).to_kind(Kind::Double);
    let (mut ok, mut n) = (0, 0);
    for (r, &i) in idx.iter().enumerate() {
        if let Some(lab) = data[i].label {
            let y = l.double_value(&[r as i64, yn.0]);
            let no = l.double_value(&[r as i64, yn.1]);
            ok += ((y > no) == lab) as usize;
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        ok as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> RewardFtConfig {
        let y = format!("data: []\nout: o\nrun_dir: r\nlr: 0.001\nbatch_size: 1\nwarmup_ratio: 0.1\nmin_lr_ratio: 0.05\n{extra}");
        serde_norway::from_str(&y).unwrap()
    }

    #[test]
    fn decay_ratio_picks_warmup_stable_decay() {
        assert_eq!(
            lr_schedule(&cfg(""), 100).unwrap(),
            LrSchedule::Cosine {
                warmup_steps: 10,
                total_steps: 100,
                min_lr_ratio: 0.05
            }
        );
        assert_eq!(
            lr_schedule(&cfg("decay_ratio: 0.25"), 100).unwrap(),
            LrSchedule::Wsd {
                warmup_steps: 10,
                total_steps: 100,
                decay_steps: 25,
                min_lr_ratio: 0.05
            }
        );
        for bad in ["0.0", "1.5", "-0.2"] {
            let e = lr_schedule(&cfg(&format!("decay_ratio: {bad}")), 100).unwrap_err();
            assert!(e.to_string().contains("decay_ratio"), "{e}");
        }
    }
}
