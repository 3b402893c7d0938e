//! `imgcot-train sample`: N candidates per prompt with the MaskGIT sampler; PNGs plus a JSON
//! sidecar with every setting; optional intermediate images per step.
use crate::generate::{self, derive_seed, SamplerConfig, StepHook, StepState};
use crate::models::showo::{Layout, Showo, TextTokenizer};
use crate::models::ImageTokenizer;
use crate::recipe::Recipe;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// Recipe supplying defaults (default: the embedded glyph-world recipe).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Show-o checkpoint directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Image tokenizer: a MAGVIT-v2 checkpoint directory, or `glyph`.
    #[arg(long)]
    pub vq: Option<String>,
    /// Prompt tokenizer (`tokenizer.json`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A text file with one prompt per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Candidates per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub cfg: Option<f64>,
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub dtype: Option<String>,
    /// Also save the decoded prediction of every step.
    #[arg(long)]
    pub save_steps: bool,
    /// Rows decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Test-time verification: keep the best of the --n candidates per prompt (orm, parm, oracle).
    #[arg(long)]
    pub verify: Option<String>,
    /// Judge checkpoint for --verify (default: the recipe's iterate.orm / iterate.parm_model).
    #[arg(long)]
    pub judge: Option<PathBuf>,
}

#[derive(Serialize)]
struct Sidecar<'a> {
    prompt: &'a str,
    prompt_index: usize,
    candidate: usize,
    seed: u64,
    model: String,
    vq: &'a str,
    tokenizer: String,
    sampler: &'a SamplerConfig,
    device: &'a str,
    dtype: &'a str,
}

struct SaveSteps<'a> {
    vq: &'a dyn ImageTokenizer,
    dir: PathBuf,
    names: Vec<String>,
}

impl StepHook for SaveSteps<'_> {
    fn on_step(&mut self, s: &StepState) -> Result<Vec<usize>> {
        let images = self.vq.decode(s.sampled)?;
        for (png, &row) in crate::world::to_pngs(&images)?.iter().zip(s.live) {
            let p = self
                .dir
                .join(format!("{}-step{:02}.png", self.names[row], s.step));
            crate::util::atomic_write(&p, png)?;
        }
        Ok(Vec::new())
    }
}

fn read_prompts(args: &SampleArgs) -> Result<Vec<String>> {
    match (&args.prompt, &args.prompts) {
        (Some(p), None) => Ok(vec![p.clone()]),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading prompts file {}", f.display()))?;
            let prompts: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if prompts.is_empty() {
                bail!("prompts file {} holds no prompt", f.display());
            }
            Ok(prompts)
        }
        _ => bail!("give --prompt TEXT or --prompts FILE"),
    }
}

pub fn run(args: SampleArgs) -> Result<()> {
    let recipe = Recipe::load(args.recipe.as_deref())?;
    let prompts = read_prompts(&args)?;
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let device_s = args.device.clone().unwrap_or(recipe.device.clone());
    let dtype_s = args.dtype.clone().unwrap_or(recipe.dtype.clone());
    let device = crate::util::parse_device(&device_s)?;
    let kind = crate::util::parse_dtype_on(&dtype_s, device)?;
    // The side files record the precision used, not `auto`.
    let dtype_s = match kind {
        tch::Kind::BFloat16 => "bf16".to_string(),
        _ => "fp32".to_string(),
    };
    let model_dir = args.model.clone().unwrap_or(recipe.paths.model.clone());
    let vq_s = args.vq.clone().unwrap_or(recipe.paths.vq.clone());
    let tok_path = args
        .tokenizer
        .clone()
        .unwrap_or(recipe.paths.tokenizer.clone());
    let mut sampler = recipe.sampler.clone();
    if let Some(s) = args.steps {
        sampler.steps = s;
    }
    if let Some(c) = args.cfg {
        sampler.cfg_scale = c;
    }
    if let Some(t) = args.temperature {
        sampler.temperature = t;
    }
    if let Some(s) = &args.schedule {
        sampler.schedule = generate::Schedule::parse(s)?;
    }
    let model = Showo::load(&model_dir, device, kind)?;
    let tok = TextTokenizer::from_file(&tok_path)?;
    let layout = Layout::new(&model.cfg, &tok);
    let vq = crate::world::image_tokenizer(&vq_s, device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    if let Some(v) = &args.verify {
        return run_verified(
            &args,
            v,
            &recipe,
            &model,
            &layout,
            &tok,
            vq.as_ref(),
            &prompts,
            &sampler,
            device,
        );
    }

    let rows: Vec<(usize, usize)> = (0..prompts.len())
        .flat_map(|i| (0..args.n).map(move |k| (i, k)))
        .collect();
    let names: Vec<String> = rows.iter().map(|(i, k)| format!("{i:05}-{k:03}")).collect();
    let pb = crate::train::logging::progress_bar(rows.len() as u64, true);
    for chunk_start in (0..rows.len()).step_by(args.batch.max(1)) {
        let chunk = &rows[chunk_start..(chunk_start + args.batch.max(1)).min(rows.len())];
        let (uniq, prompt_of) = crate::generate::group_rows(chunk);
        let text = layout.text_batch(
            &tok,
            &uniq.iter().map(|&i| prompts[i].clone()).collect::<Vec<_>>(),
            device,
        )?;
        let seeds: Vec<u64> = chunk
            .iter()
            .map(|&(i, k)| derive_seed(args.seed, i as u64, k as u64))
            .collect();
        let out = if args.save_steps {
            let chunk_names = names[chunk_start..chunk_start + chunk.len()].to_vec();
            let mut hook = SaveSteps {
                vq: vq.as_ref(),
                dir: args.out.clone(),
                names: chunk_names,
            };
            generate::sample(
                &model, &layout, &text, &prompt_of, &seeds, &sampler, &mut hook,
            )?
        } else {
            generate::sample(
                &model,
                &layout,
                &text,
                &prompt_of,
                &seeds,
                &sampler,
                &mut generate::NoHook,
            )?
        };
        let images = vq.decode(&out.codes.to_device(device))?;
        for (j, png) in crate::world::to_pngs(&images)?.iter().enumerate() {
            let (i, k) = chunk[j];
            let name = &names[chunk_start + j];
            crate::util::atomic_write(&args.out.join(format!("{name}.png")), png)?;
            let side = Sidecar {
                prompt: &prompts[i],
                prompt_index: i,
                candidate: k,
                seed: seeds[j],
                model: model_dir.display().to_string(),
                vq: &vq_s,
                tokenizer: tok_path.display().to_string(),
                sampler: &sampler,
                device: &device_s,
                dtype: &dtype_s,
            };
            crate::util::atomic_write(
                &args.out.join(format!("{name}.json")),
                serde_json::to_string_pretty(&side)?.as_bytes(),
            )?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    println!("wrote {} images to {}", rows.len(), args.out.display());
    Ok(())
}

/// Used by tests: whether a folder holds `n` PNGs.
pub fn count_pngs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
                .count()
        })
        .unwrap_or(0)
}

/// `sample --verify`: one image per prompt, the best of `--n` candidates, plus the judgments of
/// every candidate (`<name>.trajectory.json`) and the cost counters.
#[allow(clippy::too_many_arguments)]
fn run_verified(
    args: &SampleArgs,
    which: &str,
    recipe: &Recipe,
    model: &Showo,
    layout: &Layout,
    tok: &TextTokenizer,
    vq: &dyn ImageTokenizer,
    prompts: &[String],
    sampler: &SamplerConfig,
    device: tch::Device,
) -> Result<()> {
    let judges =
        crate::commands::iterate::VerifyJudges::load(which, args.judge.as_deref(), recipe, device)?;
    let verifier = judges.verifier(args.n);
    let mut total = crate::verify::VerifyStats::default();
    for (i, p) in prompts.iter().enumerate() {
        let text = layout.text_batch(tok, std::slice::from_ref(p), device)?;
        let seeds: Vec<u64> = (0..args.n)
            .map(|k| derive_seed(args.seed, i as u64, k as u64))
            .collect();
        let row_prompts = vec![p.clone(); args.n];
        let sel = verifier.select(
            model,
            layout,
            vq,
            &text,
            &vec![0; args.n],
            &row_prompts,
            &seeds,
            sampler,
        )?;
        let images = vq.decode(&sel.codes.to_device(device))?;
        let name = format!("{i:05}");
        crate::util::atomic_write(
            &args.out.join(format!("{name}.png")),
            &crate::world::to_pngs(&images)?[0],
        )?;
        let trace = serde_json::json!({
            "prompt": p, "verifier": verifier.name(), "chosen": sel.chosen[0], "seeds": seeds,
            "paths": sel.paths, "stats": sel.stats, "sampler": sampler,
        });
        crate::util::atomic_write(
            &args.out.join(format!("{name}.trajectory.json")),
            serde_json::to_string_pretty(&trace)?.as_bytes(),
        )?;
        total.add(&sel.stats);
    }
    println!(
        "{}: {} prompts; sampler steps {} of {} ({:.0}% saved by pruning); judge calls: clarity {}, potential {}, outcome {}",
        verifier.name(),
        prompts.len(),
        total.row_steps,
        total.row_steps_full,
        100.0 * (1.0 - total.row_steps as f64 / total.row_steps_full.max(1) as f64),
        total.clarity_calls,
        total.potential_calls,
        total.outcome_calls
    );
    Ok(())
}
