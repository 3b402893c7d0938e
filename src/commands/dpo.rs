//! `imgcot-train pairs` (build preference pairs with a judge) and `imgcot-train dpo` (one DPO round
//! on given pairs — the paper's initial DPO).
use crate::dpo::trainer::{train_round, RoundSpec};
use crate::eval::geneval::{layout::load_metadata_jsonl, Metadata};
use crate::models::showo::{Layout, Showo, TextTokenizer};
use crate::preference::build::{build_pairs, ImageScorer, OracleScorer, PairStats};
use crate::recipe::{PairsConfig, Recipe};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct PairsArgs {
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Policy that samples the images (default: the recipe's model).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Judge: `oracle` (the glyph world's exact evaluator).
    #[arg(long, default_value = "oracle")]
    pub judge: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub num_prompts: Option<usize>,
    #[arg(long)]
    pub n: Option<usize>,
    /// Round index: changes the prompt choice and sampling seeds.
    #[arg(long, default_value_t = 0)]
    pub round: u64,
}

#[derive(Debug, clap::Args)]
pub struct DpoArgs {
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Preference pairs JSONL (one round).
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Initial policy (default: the recipe's model).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Run name: checkpoints in ckpts/<run>, logs in runs/<run>.
    #[arg(long, default_value = "dpo")]
    pub run: String,
    /// Reference model of a one-round run (default: the initial policy). With `--max-steps 0` and
    /// `--init` a trained checkpoint, the run only measures that checkpoint's held-out
    /// implicit-reward accuracy against this reference.
    #[arg(long, conflicts_with = "iter")]
    pub reference: Option<PathBuf>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long)]
    pub resume: bool,
    /// Skip (and count) invalid pairs lines instead of failing.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Run K rounds of sample → judge → pairs → DPO → eval instead of one round on --pairs.
    #[arg(long, conflicts_with = "pairs")]
    pub iter: Option<usize>,
    /// Judge for pairs and guidance in the --iter loop: parm, orm, oracle, none.
    #[arg(long, default_value = "parm")]
    pub guide: String,
    /// In the --iter loop, use the base model as the reference of every round.
    #[arg(long)]
    pub reference_base: bool,
    /// In the --iter loop, the judge that labels the pairs (orm, parm, oracle) when it should differ
    /// from --guide — the paper labels pairs ORM-style and uses PARM only for guidance.
    #[arg(long)]
    pub labeller: Option<String>,
}

/// Chooses `cfg.num_prompts` training prompts, weighted by tag, deterministically per round.
pub fn choose_prompts(cfg: &PairsConfig, round: u64) -> Result<Vec<Metadata>> {
    let all = load_metadata_jsonl(&cfg.prompts)?;
    let mut by_tag: Vec<(String, Vec<Metadata>)> = Vec::new();
    for m in all {
        match by_tag.iter_mut().find(|(t, _)| *t == m.tag) {
            Some(e) => e.1.push(m),
            None => by_tag.push((m.tag.clone(), vec![m])),
        }
    }
    let w: Vec<f64> = by_tag
        .iter()
        .map(|(t, _)| *cfg.tag_weights.get(t).unwrap_or(&1.0))
        .collect();
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        bail!("pairs.tag_weights give every tag weight 0");
    }
    let mut out = Vec::new();
    for (i, (_, metas)) in by_tag.iter().enumerate() {
        let k = (cfg.num_prompts as f64 * w[i] / total).round() as usize;
        let mut rng = crate::train::rng::DataRng::with_stream(
            cfg.seed ^ round.wrapping_mul(0x9E37),
            i as u64,
        );
        let mut order = rng.permutation(metas.len());
        while order.len() < k {
            order.extend(rng.permutation(metas.len()));
        }
        out.extend(order[..k].iter().map(|&j| metas[j].clone()));
    }
    Ok(out)
}

/// The judge used to build pairs.
pub fn scorer(name: &str) -> Result<Box<dyn ImageScorer>> {
    match name {
        "oracle" => Ok(Box::new(OracleScorer)),
        _ => bail!("unknown judge '{name}' (oracle)"),
    }
}

/// Samples and judges with `init`, writing pairs under `out`.
pub fn make_pairs(
    recipe: &Recipe,
    init: &Path,
    scorer: &mut dyn ImageScorer,
    out: &Path,
    round: u64,
    num_prompts: Option<usize>,
    n: Option<usize>,
) -> Result<PairStats> {
    let mut cfg = recipe
        .pairs
        .clone()
        .context("the recipe has no `pairs:` section")?;
    if let Some(k) = num_prompts {
        cfg.num_prompts = k;
    }
    if let Some(k) = n {
        cfg.n = k;
    }
    let device = recipe.device()?;
    let model = Showo::load(init, device, recipe.kind()?)?;
    let tok = TextTokenizer::from_file(&recipe.paths.tokenizer)?;
    let layout = Layout::new(&model.cfg, &tok);
    let vq = crate::world::image_tokenizer(&recipe.paths.vq, device)?;
    let metas = choose_prompts(&cfg, round)?;
    let seed = crate::generate::derive_seed(cfg.seed, round, 0xA11);
    build_pairs(
        &model,
        &layout,
        &tok,
        vq.as_ref(),
        &metas,
        cfg.n,
        seed,
        &recipe.sampler,
        scorer,
        &cfg.rule,
        cfg.batch_size,
        out,
    )
}

pub fn run_pairs(args: PairsArgs) -> Result<()> {
    let recipe = Recipe::load(args.recipe.as_deref())?;
    let init = args.init.clone().unwrap_or(recipe.paths.model.clone());
    let mut s = scorer(&args.judge)?;
    let t0 = std::time::Instant::now();
    let st = make_pairs(
        &recipe,
        &init,
        s.as_mut(),
        &args.out,
        args.round,
        args.num_prompts,
        args.n,
    )?;
    println!(
        "pairs: {} from {} prompts × {} images (yes-rate {:.3}, {} prompts all-agree) by {} in {:.1}s → {}",
        st.pairs,
        st.prompts,
        st.images / st.prompts.max(1),
        st.yes_rate,
        st.agreeing_prompts,
        st.judge,
        t0.elapsed().as_secs_f64(),
        args.out.join("pairs.jsonl").display()
    );
    Ok(())
}

pub fn run(args: DpoArgs) -> Result<()> {
    if let Some(k) = args.iter {
        let run = if args.run == "dpo" {
            format!("iter-{}", args.guide)
        } else {
            args.run.clone()
        };
        let it = crate::commands::iterate::IterArgs {
            recipe: args.recipe.clone(),
            iter: k,
            guide: args.guide.clone(),
            run,
            reference_base: args.reference_base,
            labeller: args.labeller.clone(),
        };
        return crate::commands::iterate::run(it, &crate::commands::iterate::load_llava_judges);
    }
    let recipe = Recipe::load(args.recipe.as_deref())?;
    let cfg = recipe
        .dpo
        .clone()
        .context("the recipe has no `dpo:` section")?;
    let pairs = args
        .pairs
        .clone()
        .context("give --pairs FILE (one round) or --iter K (the full loop)")?;
    let init = args.init.clone().unwrap_or(recipe.paths.model.clone());
    let spec = RoundSpec {
        pairs: &pairs,
        init: &init,
        reference: args.reference.as_deref(),
        ckpt_dir: recipe.paths.ckpts.join(&args.run),
        run_dir: recipe.paths.runs.join(&args.run),
        resume: args.resume,
        max_steps: args.max_steps,
        skip_bad_rows: args.skip_bad_rows,
    };
    let r = train_round(&recipe, &cfg, &spec, None)?;
    println!(
        "dpo round: {} steps on {} pairs ({} held out); held-out implicit-reward accuracy {} → {}; model {}",
        r.steps,
        r.train_pairs,
        r.eval_pairs,
        r.eval_accuracy_start.map(|a| format!("{a:.3}")).unwrap_or("-".into()),
        r.eval_accuracy_end.map(|a| format!("{a:.3}")).unwrap_or("-".into()),
        r.final_dir.display()
    );
    Ok(())
}
