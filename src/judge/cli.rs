//! The CLI of the judge commands (`imgcot-train judge-data`, `reward-ft`, `inspect judge`): clap
//! `Args` + `run_*` functions, re-exported by `commands::judges`. Also [`qwen2_logits`] for
//! `inspect logits` on a Qwen2 checkpoint.
use crate::judge::dataset::DataSource;
use crate::judge::recipe::JudgesRecipe;
use crate::judge::reward_ft::{self, RewardFtConfig};
use crate::models::llava_ov::config::Qwen2Config;
use crate::models::llava_ov::image_processing::preprocess_pad;
use crate::models::llava_ov::prompt::{tokenizer_image_token, JudgeQuestion};
use crate::models::llava_ov::scoring::{answer_distribution, ScoreMode};
use crate::models::llava_ov::{LlavaJudge, Qwen2ForCausalLM, Weights};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct JudgeDataArgs {
    /// Judges recipe (default: the embedded recipes/judges-glyphs.yaml).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Generator checkpoint (overrides data.model / the generator recipe's paths.model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub num_prompts: Option<usize>,
    /// Paths per prompt.
    #[arg(long)]
    pub n: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub device: Option<String>,
}

/// `judge-data`.
pub fn run_judge_data(args: JudgeDataArgs) -> Result<()> {
    let r = JudgesRecipe::load(args.recipe.as_deref())?;
    let mut cfg = r.data.clone();
    if let Some(m) = args.model {
        cfg.model = Some(m);
    }
    if let Some(o) = args.out {
        cfg.out = o;
    }
    if let Some(n) = args.num_prompts {
        cfg.num_prompts = n;
    }
    if let Some(n) = args.n {
        cfg.n = n;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    let t0 = std::time::Instant::now();
    let s = crate::judge::data::build(&cfg, args.device.as_deref())?;
    for (split, c) in [("train", &s.train), ("heldout", &s.heldout)] {
        println!(
            "{split}: {} prompts; orm {} ({} yes); clarity {} ({} yes); potential {} ({} yes)",
            c.prompts, c.orm, c.orm_yes, c.clarity, c.clarity_yes, c.potential, c.potential_yes
        );
    }
    if s.repaired_train > 0 {
        println!(
            "train re-paired ORM: {} ({} yes)",
            s.repaired_train, s.repaired_train_yes
        );
    }
    if s.synthetic_train > 0 {
        println!(
            "rendered ORM: train {} ({} yes), held-out {} ({} yes)",
            s.synthetic_train, s.synthetic_train_yes, s.synthetic_heldout, s.synthetic_heldout_yes
        );
    }
    if s.caption_train > 0 {
        println!(
            "captions: train {}, held-out {}",
            s.caption_train, s.caption_heldout
        );
    }
    for d in &s.dense {
        println!(
            "crowded ORM ({}): train {} ({} yes), held-out {} ({} yes); crowded captions {}",
            d.name, d.train, d.train_yes, d.heldout, d.heldout_yes, d.captions
        );
    }
    let phases: Vec<String> = s
        .seconds
        .iter()
        .map(|(p, t)| format!("{p} {t:.0}s"))
        .collect();
    println!("time: {}", phases.join(", "));
    println!(
        "wrote {} ({} steps per path) in {:.0}s",
        cfg.out.display(),
        s.steps,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct RewardFtArgs {
    /// Judges recipe (default: the embedded recipes/judges-glyphs.yaml).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Recipe stage to run: `pretrain-N` (the recipe's `pretrain` list, 1-based), `orm` or `parm`.
    #[arg(long, default_value = "orm")]
    pub stage: String,
    /// Training data files (LLaVA JSON or JSONL; replaces the recipe's list; `PATH` or
    /// `PATH@random:70%`).
    #[arg(long = "data", num_args = 1..)]
    pub data: Vec<String>,
    /// Held-out data files (same syntax).
    #[arg(long = "heldout", num_args = 1..)]
    pub heldout: Vec<String>,
    /// Initial checkpoint (default: the recipe's, else a scratch judge).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Output checkpoint folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// LoRA rank (enables LoRA; alpha defaults to 2·rank unless --lora-alpha).
    #[arg(long)]
    pub lora_r: Option<i64>,
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    #[arg(long)]
    pub device: Option<String>,
    /// Stop after this step with the resume state saved (e.g. a time-boxed job); the same
    /// command without it continues from there.
    #[arg(long)]
    pub stop_after: Option<u64>,
}

impl RewardFtArgs {
    /// `stage` with every override unset (the recipe decides).
    pub fn for_stage(stage: &str) -> Self {
        Self {
            recipe: None,
            stage: stage.into(),
            data: vec![],
            heldout: vec![],
            init: None,
            out: None,
            run_dir: None,
            max_steps: None,
            epochs: None,
            lr: None,
            batch_size: None,
            lora_r: None,
            lora_alpha: None,
            device: None,
            stop_after: None,
        }
    }
}

fn parse_source(s: &str) -> DataSource {
    match s.rsplit_once('@') {
        Some((p, samp)) if samp == "all" || samp.contains(':') => DataSource {
            path: PathBuf::from(p),
            sampling: samp.to_string(),
            tags: vec![],
            loss_weight: 1.0,
            layout: Default::default(),
        },
        _ => DataSource {
            path: PathBuf::from(s),
            sampling: "all".into(),
            tags: vec![],
            loss_weight: 1.0,
            layout: Default::default(),
        },
    }
}

/// Applies the CLI overrides to a stage config.
pub fn reward_ft_config(r: &JudgesRecipe, args: &RewardFtArgs) -> Result<RewardFtConfig> {
    let mut c = r.stage(&args.stage)?.clone();
    if !args.data.is_empty() {
        c.data = args.data.iter().map(|s| parse_source(s)).collect();
    }
    if !args.heldout.is_empty() {
        c.heldout = args.heldout.iter().map(|s| parse_source(s)).collect();
    }
    if let Some(i) = &args.init {
        c.init = Some(i.clone());
    }
    if let Some(o) = &args.out {
        c.out = o.clone();
    }
    if let Some(d) = &args.run_dir {
        c.run_dir = d.clone();
    }
    // --epochs replaces a recipe's max_steps; an explicit --max-steps wins over both.
    if let Some(e) = args.epochs {
        c.epochs = e;
        c.max_steps = None;
    }
    if let Some(s) = args.max_steps {
        c.max_steps = Some(s);
    }
    if let Some(lr) = args.lr {
        c.lr = lr;
    }
    if let Some(b) = args.batch_size {
        c.batch_size = b;
    }
    if let Some(rk) = args.lora_r {
        let mut l: crate::models::llava_ov::train::LoraConfig = c.lora.clone().unwrap_or(
            serde_json::from_str(&format!(r#"{{"r":{rk},"alpha":{}}}"#, 2 * rk))
                .context("default LoRA config")?,
        );
        l.r = rk;
        l.alpha = args.lora_alpha.unwrap_or(2.0 * rk as f64);
        c.lora = Some(l);
    }
    Ok(c)
}

/// `reward-ft`.
pub fn run_reward_ft(args: RewardFtArgs) -> Result<()> {
    let r = JudgesRecipe::load(args.recipe.as_deref())?;
    let cfg = reward_ft_config(&r, &args)?;
    let device = crate::util::parse_device(args.device.as_deref().unwrap_or(&r.device))?;
    let Some(rep) = reward_ft::run_until(&cfg, r.scratch(), device, args.stop_after)? else {
        println!(
            "reward-ft {}: stopped after step {} with its resume state in {}; the same command \
             without --stop-after continues",
            args.stage,
            args.stop_after.unwrap_or_default(),
            cfg.run_dir.join(reward_ft::RESUME_DIR).display()
        );
        return Ok(());
    };
    println!(
        "reward-ft {}: {} steps, loss {:.4} → {:.4}, {:.0}s, saved {}",
        args.stage,
        rep.steps,
        rep.first_loss,
        rep.final_loss,
        rep.seconds,
        cfg.out.display()
    );
    for (k, m) in &rep.heldout {
        println!(
            "held-out {k}: n={} accuracy={:.4} pairwise={} ({} pairs)",
            m.n,
            m.accuracy,
            m.pairwise.map(|p| format!("{p:.4}")).unwrap_or("-".into()),
            m.pairs
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct InspectJudgeArgs {
    /// Judge checkpoint (LLaVA-OneVision, original or HF layout).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    /// Generation prompt; the question is built from it according to --kind, in the judge's
    /// prompt layout (its config.json's `imgcot_prompt_layout`; default the paper's template).
    #[arg(long, conflicts_with = "input_ids")]
    pub prompt: Option<String>,
    /// safetensors file with int64 `input_ids` [L] or [1, L] holding −200 where the image goes.
    #[arg(long)]
    pub input_ids: Option<PathBuf>,
    /// `orm`, `clarity` or `potential`.
    #[arg(long, default_value = "orm")]
    pub kind: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
}

/// P(yes), P(no) (exact and seed-style) of one image and question.
pub fn inspect_judge(args: &InspectJudgeArgs) -> Result<[(f64, f64); 2]> {
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    let judge = LlavaJudge::load(&args.model, device, kind)?;
    let tok_path = args.model.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", tok_path.display()))?;
    let ids: Vec<i64> = match (&args.prompt, &args.input_ids) {
        (Some(p), None) => {
            let q = match args.kind.as_str() {
                "orm" => JudgeQuestion::Outcome,
                "clarity" => JudgeQuestion::Clarity,
                "potential" => JudgeQuestion::Potential,
                k => bail!("--kind {k}: expected orm, clarity or potential"),
            };
            // In the layout the checkpoint was trained for (the paper's template by default).
            tokenizer_image_token(&tok, &judge.prompt_text(q, p))?
        }
        (None, Some(f)) => read_ids(f)?,
        _ => bail!("give --prompt TEXT or --input-ids FILE"),
    };
    let img = image::open(&args.image)
        .with_context(|| format!("opening {}", args.image.display()))?
        .to_rgb8();
    let size = judge.model().config().vision.image_size as u32;
    let px = preprocess_pad(&img, size).unsqueeze(0).to_device(device);
    let logits = tch::no_grad(|| -> Result<Tensor> {
        let vis = judge.model().encode_pad(&px)?;
        let seq = judge.model().splice(&ids, &vis)?;
        judge.model().last_logits(&[seq])
    })?;
    let (y, n) = judge.yes_no_ids();
    let read = |mode| {
        let d = answer_distribution(&logits, mode).to_kind(Kind::Double);
        (d.double_value(&[0, y]), d.double_value(&[0, n]))
    };
    Ok([read(ScoreMode::Exact), read(ScoreMode::paper())])
}

fn read_ids(path: &Path) -> Result<Vec<i64>> {
    let t = crate::train::ckpt::read_safetensors(path)?
        .into_iter()
        .find(|(n, _)| n == "input_ids")
        .map(|(_, t)| t)
        .with_context(|| format!("{}: no tensor named 'input_ids'", path.display()))?;
    ensure!(
        t.kind() == Kind::Int64,
        "input_ids must be int64, found {:?}",
        t.kind()
    );
    let s = t.size();
    ensure!(
        s.len() == 1 || (s.len() == 2 && s[0] == 1),
        "input_ids must be [L] or [1, L], found {s:?}"
    );
    Ok(Vec::try_from(t.flatten(0, -1))?)
}

/// `inspect judge`.
pub fn run_inspect_judge(args: InspectJudgeArgs) -> Result<()> {
    let [exact, seed] = inspect_judge(&args)?;
    println!("P(yes)={:.6} P(no)={:.6}", exact.0, exact.1);
    println!(
        "seed top-k 20/top-p 0.8: P(yes)={:.6} P(no)={:.6}",
        seed.0, seed.1
    );
    Ok(())
}

/// Whether `dir/config.json` declares `model_type: qwen2` (for `inspect logits`).
pub fn is_qwen2_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("model_type")?.as_str().map(|s| s == "qwen2"))
        .unwrap_or(false)
}

/// fp32 logits [B, L, V] of a Qwen2ForCausalLM checkpoint (`config.json` + safetensors, HF
/// names `model.*`, `lm_head.weight`) on text-only ids [B, L] (int64, in the vocabulary), on CPU.
pub fn qwen2_logits(model_dir: &Path, ids: &Tensor) -> Result<Tensor> {
    let cfg_path = model_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let cfg: Qwen2Config =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))?;
    let mut w = Weights::from_dir(model_dir, Device::Cpu, Kind::Float)?;
    let lm = Qwen2ForCausalLM::load(&mut w, &cfg, None)?;
    w.finish()
        .with_context(|| format!("loading {}", model_dir.display()))?;
    ensure!(
        ids.dim() == 2 && ids.kind() == Kind::Int64 && ids.numel() > 0,
        "input_ids must be a non-empty int64 [B, L], found {:?} {:?}",
        ids.kind(),
        ids.size()
    );
    let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
    ensure!(
        lo >= 0 && hi < lm.vocab_size(),
        "input_ids out of range [0, {}): min {lo}, max {hi}",
        lm.vocab_size()
    );
    tch::no_grad(|| lm.forward(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(max_steps: Option<u64>, epochs: Option<f64>) -> RewardFtArgs {
        RewardFtArgs {
            max_steps,
            epochs,
            ..RewardFtArgs::for_stage("orm")
        }
    }

    #[test]
    fn max_steps_wins_over_epochs() {
        let r = JudgesRecipe::load(None).unwrap();
        let c = reward_ft_config(&r, &args(Some(30), Some(4.0))).unwrap();
        assert_eq!((c.max_steps, c.epochs), (Some(30), 4.0));
        let c = reward_ft_config(&r, &args(None, Some(4.0))).unwrap();
        assert_eq!((c.max_steps, c.epochs), (None, 4.0));
    }
}
