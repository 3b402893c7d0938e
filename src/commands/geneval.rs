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
    /// Backend that decides correctness.
    #[arg(long, value_enum)]
    pub score: ScoreBackend,
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
        self.out
            .clone()
            .unwrap_or_else(|| self.images.join(format!("scores-{}", self.score.name())))
    }
}

/// The score-only path's arguments (same struct).
pub type ScoreArgs = GenevalArgs;

/// `imgcot-train eval geneval`: currently the score-only path, [`run_score`].
pub fn run(args: GenevalArgs) -> Result<()> {
    run_score(args)
}

/// Scores `--images` with the chosen backend, writes results.jsonl + summary.json and prints
/// the summary in summary_scores.py's format.
pub fn run_score(args: GenevalArgs) -> Result<()> {
    let opts = args.rule_options();
    let out = args.out_dir();
    let summary = match args.score {
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
