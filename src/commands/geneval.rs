//! `imgcot-train eval geneval`: score GenEval-layout folders with a detector backend
//! (`--score official|detections|glyph`), or summarise an existing results.jsonl.
use crate::eval::geneval::{
    score_folder, Backend, DetectionsFile, OfficialScorer, RuleOptions, Summary,
};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Which backend decides correctness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScoreBackend {
    /// Run upstream evaluate_images.py through `--official-cmd` and keep its verdicts.
    Official,
    /// Precomputed detections (`--detections FILE`) judged by this crate's GenEval rules.
    Detections,
    /// The glyph world's exact detector.
    Glyph,
}

impl ScoreBackend {
    fn name(self) -> &'static str {
        match self {
            Self::Official => "official",
            Self::Detections => "detections",
            Self::Glyph => "glyph",
        }
    }
}

/// Score-only GenEval evaluation of an existing image folder. The rule flags (`--threshold` ...)
/// apply to `--score detections`; `official` applies upstream's own options and `glyph` the
/// defaults.
#[derive(Debug, Clone, Args)]
pub struct GenevalArgs {
    /// Backend that decides correctness (omit to only generate).
    #[arg(long, value_enum)]
    pub score: Option<ScoreBackend>,
    /// Generate the images first with this generator checkpoint (Show-o layout).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Recipe for generation (tokenizer, image tokenizer, sampler, device).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// GenEval metadata to generate for.
    #[arg(long, default_value = "data/geneval/evaluation_metadata.jsonl")]
    pub metadata: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub images_per_prompt: usize,
    /// Generate only shard i of n (prompt i goes to shard i mod n), e.g. `0/2`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Base seed: image k of prompt i uses derive_seed(seed, i, k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Test-time verification per image: orm, parm or oracle (best of --n).
    #[arg(long)]
    pub verify: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Judge checkpoint for --verify orm|parm (default: the recipe's `iterate.orm` / `parm_model`).
    #[arg(long)]
    pub judge: Option<PathBuf>,
    /// GenEval image folder (`<digits>/metadata.jsonl`, `<digits>/samples/<digits>.png`).
    #[arg(long)]
    pub images: PathBuf,
    /// JSONL of detections per image (required for `--score detections`).
    #[arg(long)]
    pub detections: Option<PathBuf>,
    /// Output folder for results.jsonl and summary.json [default: <images>/scores-<backend>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Command template for `--score official`, run with `sh -c`; placeholders {images},
    /// {outfile}, {model_path}. E.g. "python evaluate_images.py {images} --outfile {outfile}
    /// --model-path {model_path}".
    #[arg(long)]
    pub official_cmd: Option<String>,
    /// Detector checkpoint folder substituted for {model_path}.
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Score threshold for non-counting prompts (strict >).
    #[arg(long, default_value_t = 0.3)]
    pub threshold: f64,
    /// Score threshold for every class of counting prompts (strict >).
    #[arg(long, default_value_t = 0.9)]
    pub counting_threshold: f64,
    /// Detections kept per class.
    #[arg(long, default_value_t = 16)]
    pub max_objects: usize,
    /// Same-class NMS IoU threshold; 1 disables NMS.
    #[arg(long, default_value_t = 1.0)]
    pub max_overlap: f64,
    /// Shrink factor of the position rule.
    #[arg(long, default_value_t = 0.1)]
    pub position_threshold: f64,
}

impl GenevalArgs {
    /// The rule options these flags select (float32 comparisons as upstream).
    pub fn rule_options(&self) -> RuleOptions {
        RuleOptions {
            threshold: self.threshold,
            counting_threshold: self.counting_threshold,
            max_objects: self.max_objects,
            max_overlap: self.max_overlap,
            position_threshold: self.position_threshold,
            ..RuleOptions::default()
        }
    }

    /// `--out`, or `<images>/scores-<backend>` (not a digit folder, so never listed as a prompt).
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            self.images.join(format!(
                "scores-{}",
                self.score.map(|s| s.name()).unwrap_or("none")
            ))
        })
    }
}

/// The score-only path's arguments (same struct).
pub type ScoreArgs = GenevalArgs;

/// `imgcot-train eval geneval`: currently the score-only path, [`run_score`].
pub fn run(args: GenevalArgs) -> Result<()> {
    run_score(args).map(|_| ())
}

/// Scores `--images` with the chosen backend, writes results.jsonl + summary.json and prints
/// the summary in summary_scores.py's format.
pub fn run_score(args: GenevalArgs) -> Result<Option<Summary>> {
    if let Some(ckpt) = &args.ckpt {
        generate(&args, ckpt)?;
    }
    let Some(score) = args.score else {
        if args.ckpt.is_none() {
            bail!("give --score BACKEND, --ckpt DIR (generate), or both");
        }
        return Ok(None);
    };
    let opts = args.rule_options();
    let out = args.out_dir();
    let summary = match score {
        ScoreBackend::Detections => {
            let Some(path) = &args.detections else {
                bail!("--score detections needs --detections FILE");
            };
            let mut det = DetectionsFile::load(path)?;
            score_folder(&args.images, Backend::Detector(&mut det), &opts, &out)?
        }
        ScoreBackend::Official => {
            let Some(template) = &args.official_cmd else {
                bail!("--score official needs --official-cmd TEMPLATE (placeholders {{images}}, {{outfile}}, {{model_path}})");
            };
            let scorer = OfficialScorer {
                template: template.clone(),
                model_path: args.model_path.clone(),
            };
            score_folder(&args.images, Backend::Official(&scorer), &opts, &out)?
        }
        // The glyph world's exact detector, with the default GenEval rule options.
        ScoreBackend::Glyph => crate::commands::eval::score_glyph_folder(&args.images, &out)?,
    };
    print!("{}", summary.table());
    println!(
        "wrote {} and {}",
        out.join("results.jsonl").display(),
        out.join("summary.json").display()
    );
    log_summary(&summary, &out, 0)?;
    Ok(Some(summary))
}

/// Logs a summary's per-tag accuracies and overall score to TensorBoard under `<dir>/tb`.
pub fn log_summary(summary: &Summary, dir: &std::path::Path, step: u64) -> Result<()> {
    let mut tb = crate::train::logging::Logger::new(
        dir,
        0,
        crate::train::logging::LoggerOptions {
            progress_bar: Some(false),
            ..Default::default()
        },
    )?;
    for t in &summary.tags {
        tb.scalar(&format!("geneval/{}", t.tag), t.accuracy(), step);
    }
    tb.scalar("geneval/overall", summary.overall(), step);
    tb.finish();
    Ok(())
}

/// Summarise an existing results.jsonl (upstream's or this crate's).
#[derive(Debug, Clone, Args)]
pub struct SummaryArgs {
    /// results.jsonl to summarise.
    #[arg(long)]
    pub results: PathBuf,
    /// Also write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Prints summary_scores.py's table for `--results` (and writes `--json` when given).
pub fn run_summary(args: SummaryArgs) -> Result<()> {
    let summary = Summary::from_results_file(&args.results)?;
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        let json =
            serde_json::to_string_pretty(&summary.to_json()).context("serialising the summary")?;
        crate::util::atomic_write(path, format!("{json}\n").as_bytes())?;
    }
    Ok(())
}

/// Refuses `settings` when another shard's settings file in `dir` (any split: `0/2`, `1/3`, …)
/// records other settings apart from the shard itself. Prompt folders are named by prompt
/// index, so a run under another split reuses the finished folders of every earlier one.
fn check_other_shards(
    dir: &std::path::Path,
    own: &str,
    settings: &serde_json::Value,
) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("settings-shard") && n.ends_with(".json") && n != own)
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let conflict =
            crate::commands::eval::recorded_conflict(&path, &text, settings, &["shard"])?;
        if let Some((k, o, v)) = conflict {
            bail!(
                "{} holds images made with other settings ({k}: {o} in {name}, {v} now); \
                 pass another --images or remove that folder",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Generates `--images-per-prompt` images per prompt of `--metadata` (this shard's prompts) into
/// `--images` in GenEval's layout, skipping complete prompt folders, and records the settings.
pub fn generate(args: &GenevalArgs, ckpt: &std::path::Path) -> Result<()> {
    use crate::eval::geneval::layout::{load_metadata_jsonl, Shard};
    use crate::models::showo::{Layout, Showo, TextTokenizer};
    if !args.metadata.exists() {
        bail!(
            "GenEval metadata {} not found: get evaluation_metadata.jsonl from the GenEval repository \
             (djghosh13/geneval, prompts/evaluation_metadata.jsonl; MIT) and pass --metadata FILE",
            args.metadata.display()
        );
    }
    let recipe = crate::recipe::Recipe::load(args.recipe.as_deref())?;
    let metas = load_metadata_jsonl(&args.metadata)?;
    let shard: Shard = match &args.shard {
        Some(s) => s.parse()?,
        None => Shard::default(),
    };
    let indices = shard.prompt_indices(metas.len());
    let device = recipe.device()?;
    let model = Showo::load(ckpt, device, recipe.kind()?)?;
    let tok = TextTokenizer::from_file(&recipe.paths.tokenizer)?;
    let layout = Layout::new(&model.cfg, &tok);
    let vq = crate::world::image_tokenizer(&recipe.paths.vq, device)?;
    let judges = match args.verify.as_deref() {
        None => None,
        Some(v) => Some(crate::commands::iterate::VerifyJudges::load(
            v,
            args.judge.as_deref(),
            &recipe,
            device,
        )?),
    };
    let verifier = judges.as_ref().map(|j| j.verifier(args.n));
    std::fs::create_dir_all(&args.images)?;
    let settings = serde_json::json!({
        "checkpoint": ckpt.display().to_string(),
        "weights": crate::commands::eval::weights_fingerprint(ckpt)?,
        "dtype": format!("{:?}", recipe.kind()?), "judge": args.judge,
        "metadata": args.metadata.display().to_string(),
        "images_per_prompt": args.images_per_prompt, "seed": args.seed, "shard": shard.to_string(),
        "sampler": recipe.sampler, "verifier": verifier.as_ref().map(|v| v.name()),
    });
    // Per-shard file names, so shards run in parallel do not overwrite each other.
    let shard_name =
        |stem: &str| format!("{stem}-shard{}.json", shard.to_string().replace('/', "of"));
    let shard_file = |stem: &str| args.images.join(shard_name(stem));
    check_other_shards(&args.images, &shard_name("settings"), &settings)?;
    crate::commands::eval::record_settings(&shard_file("settings"), &settings)?;
    let (done, _) = crate::commands::eval::generate_layout(
        &model,
        &layout,
        &tok,
        vq.as_ref(),
        &metas,
        &indices,
        args.images_per_prompt,
        args.seed,
        &recipe.sampler,
        recipe.eval.batch_size,
        &args.images,
        verifier.as_ref(),
        // What the verifier cost and decided (pruned paths, judge calls), per shard.
        &shard_name("verify_stats"),
    )?;
    println!(
        "generated {done} prompt folders (shard {shard}, {} prompts) into {}",
        indices.len(),
        args.images.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn another_split_of_the_same_folder_must_match_the_recorded_settings() {
        let dir = std::env::temp_dir().join(format!("imgcot-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let two = json!({"seed": 1, "checkpoint": "ckpts/a", "shard": "0/2"});
        std::fs::write(dir.join("settings-shard0of2.json"), two.to_string()).unwrap();
        // Same settings under another split: the folders are the same images, reused.
        let three = json!({"seed": 1, "checkpoint": "ckpts/a", "shard": "1/3"});
        check_other_shards(&dir, "settings-shard1of3.json", &three).unwrap();
        // Another checkpoint under another split: refused, naming the key and the file.
        let other = json!({"seed": 1, "checkpoint": "ckpts/b", "shard": "1/3"});
        let e = check_other_shards(&dir, "settings-shard1of3.json", &other)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checkpoint") && e.contains("settings-shard0of2.json"),
            "{e}"
        );
        // A shard's own file is `record_settings`' business, not this check's.
        let own = json!({"seed": 2, "checkpoint": "ckpts/a", "shard": "0/2"});
        check_other_shards(&dir, "settings-shard0of2.json", &own).unwrap();
        // Keys an older file lacks are not compared.
        let newer = json!({"seed": 1, "checkpoint": "ckpts/a", "shard": "0/1", "dtype": "Float"});
        check_other_shards(&dir, "settings-shard0of1.json", &newer).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
