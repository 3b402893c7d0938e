//! `imgcot-train dpo --iter K --guide parm|orm|oracle|none`: the paper's verify-and-reinforce loop.
//!
//! Round r samples with the round-r policy, builds pairs with the guide judge (or the recipe's
//! labeller for `--guide none`), trains DPO (reference = the policy at the start of the round, or
//! the base model with `reference_base`), checkpoints `ckpts/<run>/iter-r/`, evaluates, and appends
//! a row to `runs/<run>/summary.json`. Every stage checks for its finished output first, so the
//! same command resumes an interrupted run at the right round and step.
use crate::commands::eval::{evaluate_many, evaluate_with, shareable, LayoutOut};
use crate::commands::{dpo::make_pairs, pretrain};
use crate::dpo::trainer::{train_round, RoundSpec};
use crate::eval::geneval::summary::Summary;
use crate::judge::{JudgeProbs, OutcomeJudge, StepJudge};
use crate::models::llava_ov::judge::LlavaJudge;
use crate::preference::build::ImageScorer;
use crate::recipe::Recipe;
use crate::verify::{OracleJudge, ParmConfig, Verifier};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One row of `runs/<run>/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub stage: String,
    pub single_object: Option<f64>,
    pub two_object: Option<f64>,
    pub counting: Option<f64>,
    pub colors: Option<f64>,
    pub position: Option<f64>,
    pub color_attr: Option<f64>,
    pub overall: f64,
    pub strict: Option<f64>,
    pub glyphs_per_image: Option<f64>,
    pub eval_dir: String,
    /// The generator the stage evaluated: a row recorded for another checkpoint (the final row
    /// of a shorter `--iter` run of the same name) is evaluated again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

impl Row {
    pub fn from_summary(stage: &str, s: &Summary, dir: &Path, ckpt: &Path) -> Self {
        let t = |n: &str| s.tag(n).map(|x| x.accuracy());
        Row {
            stage: stage.into(),
            single_object: t("single_object"),
            two_object: t("two_object"),
            counting: t("counting"),
            colors: t("colors"),
            position: t("position"),
            color_attr: t("color_attr"),
            overall: s.overall(),
            strict: s.strict,
            glyphs_per_image: s.glyphs_per_image,
            eval_dir: dir.display().to_string(),
            checkpoint: Some(ckpt.display().to_string()),
        }
    }

    /// The checkpoint the row was measured on: its own field, or for rows of older builds the
    /// `checkpoint` of the eval folder's `settings.json` (None when neither says).
    pub fn recorded_checkpoint(&self) -> Option<String> {
        self.checkpoint.clone().or_else(|| {
            let text =
                std::fs::read_to_string(Path::new(&self.eval_dir).join("settings.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v.get("checkpoint")?.as_str().map(str::to_string)
        })
    }
}

/// Prints rows like the paper's tables.
pub fn table(rows: &[Row]) -> String {
    let f = |x: Option<f64>| {
        x.map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "  - ".into())
    };
    let mut s = format!(
        "{:<22} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>7}\n",
        "stage", "single", "two", "count", "colors", "pos", "attr", "overall", "strict", "glyphs"
    );
    for r in rows {
        s += &format!(
            "{:<22} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8.3} {:>7} {:>7}\n",
            r.stage,
            f(r.single_object),
            f(r.two_object),
            f(r.counting),
            f(r.colors),
            f(r.position),
            f(r.color_attr),
            r.overall,
            f(r.strict),
            r.glyphs_per_image
                .map(|v| format!("{v:.1}"))
                .unwrap_or_default()
        );
    }
    s
}

#[derive(Debug, clap::Args)]
pub struct IterArgs {
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Rounds of sample → judge → pairs → DPO → eval.
    #[arg(long)]
    pub iter: usize,
    /// Judge for pairs and the online guidance term: parm, orm, oracle (the glyph world's exact
    /// evaluator), or none (pairs from `iterate.labeller`, no guidance term).
    #[arg(long, default_value = "parm")]
    pub guide: String,
    #[arg(long, default_value = "iter")]
    pub run: String,
    /// Reference = the base model in every round (default: the policy at the start of the round).
    #[arg(long)]
    pub reference_base: bool,
    /// Judge that labels the pairs (orm, parm, oracle); default: --guide, or `iterate.labeller`
    /// with `--guide none`.
    #[arg(long)]
    pub labeller: Option<String>,
}

/// Settings of the loop (recipe section `iterate:`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IterateConfig {
    /// Images per prompt for the evaluation rows (8 in the targets).
    #[serde(default = "d_ipp")]
    pub eval_images_per_prompt: usize,
    /// Candidates per image for the best-of-N rows.
    #[serde(default = "d_n")]
    pub verify_n: usize,
    /// Images per prompt for the best-of-N rows (each the pick of `verify_n`).
    #[serde(default = "d_vipp")]
    pub verify_images_per_prompt: usize,
    /// Labeller for `--guide none`.
    #[serde(default = "d_lab")]
    pub labeller: String,
    #[serde(default)]
    pub parm: ParmConfig,
    /// The checkpoint that answers the outcome question in PARM's best-of-N′ among survivors.
    #[serde(default)]
    pub parm_outcome: ParmOutcome,
    /// How the judges read P(yes): `seed` (the paper's code, top-k/top-p truncated, saturating
    /// to exactly 0 or 1) or `exact` (the softmax). Left out of saved settings at its default, so
    /// run folders made before it existed still resume.
    #[serde(default, skip_serializing_if = "JudgeProbs::is_seed")]
    pub judge_probs: JudgeProbs,
    /// ORM and PARM checkpoints (trained by `reward-ft` when missing).
    pub orm: PathBuf,
    pub parm_model: PathBuf,
    /// Also generate and score a GenEval-format set after every round (e.g. the official 553
    /// prompts with `score: official`).
    #[serde(default)]
    pub geneval_each_round: Option<GenevalRound>,
}

/// Who scores PARM's survivors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParmOutcome {
    /// The PARM checkpoint itself, asked the ORM question (the paper).
    #[default]
    Parm,
    /// The ORM checkpoint (`iterate.orm`).
    Orm,
}

/// `iterate.geneval_each_round`: what `eval geneval` runs at the end of each round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenevalRound {
    pub metadata: PathBuf,
    #[serde(default = "d_four")]
    pub images_per_prompt: usize,
    /// official, detections or glyph.
    pub score: String,
    #[serde(default)]
    pub official_cmd: Option<String>,
    #[serde(default)]
    pub model_path: Option<PathBuf>,
}

fn d_four() -> usize {
    4
}

/// Best-of-N settings of a GenEval-scored stage: verifier name (`orm`/`parm`), N, judge checkpoint.
pub struct GenevalVerify<'a> {
    pub name: &'a str,
    pub n: usize,
    pub judge: &'a Path,
}

/// Generates `images` with `ckpt` (optionally best-of-N) and scores them with `g`'s backend.
fn geneval_round(
    recipe_path: Option<&Path>,
    g: &GenevalRound,
    ckpt: &Path,
    images: &Path,
    verify: Option<GenevalVerify<'_>>,
) -> Result<Summary> {
    use crate::commands::geneval::{run_score, GenevalArgs, ScoreBackend};
    let score = match g.score.as_str() {
        "official" => ScoreBackend::Official,
        "detections" => ScoreBackend::Detections,
        "glyph" => ScoreBackend::Glyph,
        other => bail!("iterate.geneval_each_round.score: unknown backend '{other}'"),
    };
    run_score(GenevalArgs {
        score: Some(score),
        ckpt: Some(ckpt.to_path_buf()),
        recipe: recipe_path.map(Path::to_path_buf),
        metadata: g.metadata.clone(),
        images_per_prompt: g.images_per_prompt,
        shard: None,
        seed: 0,
        verify: verify.as_ref().map(|v| v.name.to_string()),
        n: verify.as_ref().map(|v| v.n).unwrap_or(1),
        judge: verify.as_ref().map(|v| v.judge.to_path_buf()),
        images: images.to_path_buf(),
        detections: None,
        out: None,
        official_cmd: g.official_cmd.clone(),
        model_path: g.model_path.clone(),
        threshold: 0.3,
        counting_threshold: 0.9,
        max_objects: 16,
        max_overlap: 1.0,
        position_threshold: 0.1,
    })?
    .context("the GenEval backend returned no summary")
}

fn d_ipp() -> usize {
    8
}
fn d_n() -> usize {
    8
}
fn d_vipp() -> usize {
    2
}
fn d_lab() -> String {
    "orm".into()
}

/// Judges the loop may need, loaded once.
pub struct Judges {
    pub orm: Option<Box<dyn OutcomeJudge>>,
    pub parm: Option<Box<dyn ParmJudge>>,
}

/// A PARM model: both a step judge and an outcome judge.
pub trait ParmJudge: StepJudge + OutcomeJudge {}
impl<T: StepJudge + OutcomeJudge> ParmJudge for T {}

/// An outcome judge used as a pair labeller / guidance scorer.
pub struct JudgeScorer<'a> {
    pub name: String,
    pub judge: &'a dyn OutcomeJudge,
}

impl ImageScorer for JudgeScorer<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn score(
        &mut self,
        metas: &[&crate::eval::geneval::Metadata],
        images: &tch::Tensor,
        _codes: &tch::Tensor,
    ) -> Result<Vec<f64>> {
        let prompts: Vec<String> = metas.iter().map(|m| m.prompt.clone()).collect();
        self.judge.p_yes(&prompts, images)
    }
}

/// A run folder holds one run: its pairs, round checkpoints and rows are reused by name when it
/// resumes, so resuming it under another recipe, guide, labeller or reference would mix two runs
/// (the round count is left out: `--iter 5` continues a finished `--iter 3`, and so are settings
/// that change no result: batch sizes of sampling passes, log and save intervals). The settings
/// are kept in `loop.json` and compared on every later start. Returns the settings to write
/// when the folder has none yet: the caller writes them once the run's own checks have passed,
/// so a start refused for another reason does not pin its settings. (A field added to the
/// recipe later should skip serializing its default, or older folders stop resuming.)
fn check_run_settings(
    run_dir: &Path,
    recipe: &Recipe,
    guide: &str,
    labeller: &str,
    reference_base: bool,
) -> Result<Option<serde_json::Value>> {
    let path = run_dir.join("loop.json");
    let mut now = serde_json::json!({
        "recipe": serde_json::to_value(recipe)?,
        "guide": guide,
        "labeller": labeller,
        "reference_base": reference_base,
    });
    const NO_EFFECT: [&str; 7] = [
        "recipe.eval.batch_size",
        "recipe.pairs.batch_size",
        "recipe.pretrain.log_every",
        "recipe.pretrain.ckpt_every",
        "recipe.dpo.eval_every",
        "recipe.dpo.ckpt_every",
        "recipe.dpo.eval_n_mc",
    ];
    crate::util::drop_keys(&mut now, &NO_EFFECT);
    if !path.exists() {
        return Ok(Some(now));
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let was: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let diff = crate::util::settings_diff(&was, &now, &NO_EFFECT);
    if !diff.is_empty() {
        bail!(
            "run folder {} was started with other settings ({}); resume it with those, or give this run another name (--run). Delete {} only if the difference cannot change a result",
            run_dir.display(),
            diff.join(", "),
            path.display()
        );
    }
    Ok(None)
}

fn load_rows(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("reading {}", path.display()))
}

/// Non-blank lines of a pairs file (0 when it is missing).
fn count_pairs(file: &Path) -> Result<usize> {
    if !file.exists() {
        return Ok(0);
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Copies the model files of `from` into `to` as a finished round checkpoint, staged and
/// published by the trainer's own checkpoint writer, so an interrupted copy is never taken for one.
fn carry_over(from: &Path, to: &Path) -> Result<()> {
    let w = crate::train::ckpt::CheckpointWriter::begin(to)?;
    for name in ["config.json", "pytorch_model.safetensors"] {
        std::fs::copy(from.join(name), w.path().join(name)).with_context(|| {
            format!(
                "copying {} into {}",
                from.join(name).display(),
                w.path().display()
            )
        })?;
    }
    w.commit(&crate::train::ckpt::TrainerState {
        extra: serde_json::json!({ "carried_over_from": from.display().to_string() }),
        ..Default::default()
    })?;
    Ok(())
}

fn is_model_dir(p: &Path) -> bool {
    p.join("config.json").exists() && p.join("pytorch_model.safetensors").exists()
}

/// Loads (training first when missing) the judges `names` needs.
pub type JudgeLoader<'a> = dyn Fn(&Recipe, &IterateConfig, bool, bool) -> Result<Judges> + 'a;

pub fn run(args: IterArgs, load_judges: &JudgeLoader) -> Result<()> {
    let recipe = Recipe::load(args.recipe.as_deref())?;
    let it = recipe
        .iterate
        .clone()
        .context("the recipe has no `iterate:` section")?;
    let t0 = std::time::Instant::now();
    let run_dir = recipe.paths.runs.join(&args.run);
    std::fs::create_dir_all(&run_dir)?;
    let summary_path = run_dir.join("summary.json");
    let mut rows = load_rows(&summary_path)?;
    let guide = args.guide.as_str();
    if !["parm", "orm", "oracle", "none"].contains(&guide) {
        bail!("unknown --guide '{guide}' (parm, orm, oracle, none)");
    }
    let labeller = match (&args.labeller, guide) {
        (Some(l), _) => l.as_str(),
        (None, "none") => it.labeller.as_str(),
        (None, g) => g,
    };
    if !["parm", "orm", "oracle"].contains(&labeller) {
        bail!("unknown labeller '{labeller}' (parm, orm, oracle)");
    }
    let new_settings = check_run_settings(&run_dir, &recipe, guide, labeller, args.reference_base)?;
    let dpo_cfg = recipe
        .dpo
        .clone()
        .context("the recipe has no `dpo:` section")?;
    // Real-image recipes have no exact evaluator: their stages go through the GenEval backend of
    // `iterate.geneval_each_round` (generation with the same seeds, best-of-N by judge checkpoint).
    if !recipe.is_glyph() && it.geneval_each_round.is_none() {
        bail!("recipe '{}' is not a glyph recipe: its eval stages need `iterate.geneval_each_round` (a GenEval scoring backend)", recipe.name);
    }

    // The base generator, trained first when missing.
    let base = recipe.paths.model.clone();
    if is_model_dir(&base) {
        pretrain::check_base_matches(&recipe, &base)?;
    } else {
        let pt = recipe.pretrain.clone().with_context(|| {
            format!(
                "{} is missing and the recipe has no pretrain section",
                base.display()
            )
        })?;
        println!(
            "[iter] base generator {} missing: pretraining",
            base.display()
        );
        pretrain::pretrain(
            &recipe,
            &pt,
            &base,
            &format!("pretrain-{}", recipe.name),
            true,
            None,
        )?;
    }
    let need_orm = true; // the ORM best-of-N row
    let need_parm = true; // the PARM rows
    let judges = load_judges(&recipe, &it, need_orm, need_parm || labeller == "parm")?;
    let oracle = OracleJudge;
    let outcome_for = |name: &str| -> Result<&dyn OutcomeJudge> {
        Ok(match name {
            "oracle" => &oracle,
            "orm" => judges.orm.as_deref().context("no ORM judge")?,
            "parm" => judges
                .parm
                .as_deref()
                .map(|p| p as &dyn OutcomeJudge)
                .context("no PARM judge")?,
            other => bail!("unknown judge '{other}'"),
        })
    };

    // The run's checks have passed (base, judges): from here on it writes into the folder.
    if let Some(v) = new_settings {
        crate::util::atomic_write(
            &run_dir.join("loop.json"),
            serde_json::to_string_pretty(&v)?.as_bytes(),
        )?;
    }
    // Whether a stage still needs its evaluation: a recorded row of another generator is
    // dropped (its folder too: the loop owns it) and evaluated again.
    let pending = |rows: &mut Vec<Row>, name: &str, ckpt: &Path| -> Result<bool> {
        let dir = run_dir.join(format!("eval-{name}"));
        if let Some(i) = rows.iter().position(|r| r.stage == name) {
            let now = ckpt.display().to_string();
            match rows[i].recorded_checkpoint() {
                Some(was) if was != now => {
                    println!("[iter] {name}: the recorded row is of {was}, the stage's generator is now {now}: evaluating again");
                    rows.remove(i);
                    // The loop's own folder, holding the other generator's images.
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir)
                            .with_context(|| format!("removing {}", dir.display()))?;
                    }
                }
                _ => return Ok(false),
            }
        }
        Ok(true)
    };
    let push = |rows: &mut Vec<Row>, name: &str, s: &Summary, ckpt: &Path| -> Result<()> {
        let dir = run_dir.join(format!("eval-{name}"));
        rows.push(Row::from_summary(name, s, &dir, ckpt));
        crate::util::atomic_write(
            &summary_path,
            serde_json::to_string_pretty(rows)?.as_bytes(),
        )?;
        Ok(())
    };
    let stage = |rows: &mut Vec<Row>,
                 name: &str,
                 ckpt: &Path,
                 ipp: usize,
                 verifier: Option<&Verifier>|
     -> Result<()> {
        if !pending(rows, name, ckpt)? {
            return Ok(());
        }
        let dir = run_dir.join(format!("eval-{name}"));
        println!("[iter] eval {name} ({} s so far)", t0.elapsed().as_secs());
        let s = match &it.geneval_each_round {
            Some(g) if !recipe.is_glyph() => {
                let verify = verifier.map(|v| {
                    let (name, judge) = if matches!(v, Verifier::Parm { .. }) {
                        ("parm", it.parm_model.as_path())
                    } else {
                        ("orm", it.orm.as_path())
                    };
                    GenevalVerify {
                        name,
                        n: it.verify_n,
                        judge,
                    }
                });
                let g = GenevalRound {
                    images_per_prompt: ipp,
                    ..g.clone()
                };
                geneval_round(args.recipe.as_deref(), &g, ckpt, &dir, verify)?
            }
            _ => evaluate_with(&recipe, ckpt, &dir, ipp, false, verifier)?,
        };
        push(rows, name, &s, ckpt)
    };
    // Stages of one generator evaluated together from one sampling pass where the glyph eval
    // runs them (the same candidates: the plain images are the first of each best-of-N group),
    // else one by one. Rows are appended in the list's order.
    let stages = |rows: &mut Vec<Row>,
                  ckpt: &Path,
                  list: &[(String, usize, Option<&Verifier>)]|
     -> Result<()> {
        let mut todo = Vec::new();
        for (name, ipp, v) in list {
            if pending(rows, name, ckpt)? {
                todo.push((name, *ipp, *v));
            }
        }
        let dirs: Vec<PathBuf> = todo
            .iter()
            .map(|(name, ..)| run_dir.join(format!("eval-{name}")))
            .collect();
        let outs: Vec<LayoutOut> = todo
            .iter()
            .zip(&dirs)
            .map(|(&(_, ipp, verifier), dir)| LayoutOut {
                dir,
                images_per_prompt: ipp,
                verifier,
            })
            .collect();
        // Real-image recipes score through their GenEval backend, one stage at a time.
        if todo.len() < 2 || !recipe.is_glyph() || !shareable(&outs) {
            for (name, ipp, v) in &todo {
                stage(rows, name, ckpt, *ipp, *v)?;
            }
            return Ok(());
        }
        let names: Vec<&str> = todo.iter().map(|(n, ..)| n.as_str()).collect();
        println!(
            "[iter] eval {} in one sampling pass ({} s so far)",
            names.join(", "),
            t0.elapsed().as_secs()
        );
        let summaries = evaluate_many(&recipe, ckpt, &outs, false)?;
        for (name, s) in names.iter().zip(&summaries) {
            push(rows, name, s, ckpt)?;
        }
        Ok(())
    };

    let orm_verifier = judges.orm.as_deref().map(|orm| Verifier::Orm {
        judge: orm,
        n: it.verify_n,
    });
    // PARM best-of-N, used for the base and the final policy.
    let parm_verifier = match judges.parm.as_deref() {
        Some(parm) => Some(Verifier::parm(
            parm,
            parm,
            match it.parm_outcome {
                ParmOutcome::Parm => None,
                ParmOutcome::Orm => Some(outcome_for("orm")?),
            },
            it.verify_n,
            it.parm,
        )),
        None => None,
    };
    let mut base_stages = vec![("base".to_string(), it.eval_images_per_prompt, None)];
    if let Some(v) = &orm_verifier {
        base_stages.push((
            format!("base+orm@{}", it.verify_n),
            it.verify_images_per_prompt,
            Some(v),
        ));
    }
    if let Some(v) = &parm_verifier {
        base_stages.push((
            format!("base+parm@{}", it.verify_n),
            it.verify_images_per_prompt,
            Some(v),
        ));
    }
    stages(&mut rows, &base, &base_stages)?;

    let mut policy = base.clone();
    for r in 1..=args.iter {
        let round_dir = run_dir.join(format!("iter-{r}"));
        let pairs_dir = round_dir.join("pairs");
        if !pairs_dir.join("stats.json").exists() {
            println!(
                "[iter] round {r}: sampling and judging with {labeller} ({} s so far)",
                t0.elapsed().as_secs()
            );
            let mut scorer = JudgeScorer {
                name: labeller.to_string(),
                judge: outcome_for(labeller)?,
            };
            let st = make_pairs(
                &recipe,
                &policy,
                &mut scorer,
                &pairs_dir,
                r as u64,
                None,
                None,
            )?;
            println!(
                "[iter] round {r}: {} pairs, yes-rate {:.3}",
                st.pairs, st.yes_rate
            );
        }
        let ckpt_dir = recipe.paths.ckpts.join(&args.run).join(format!("iter-{r}"));
        let final_dir = ckpt_dir.join("final");
        let pairs_file = pairs_dir.join("pairs.jsonl");
        if !is_model_dir(&final_dir) && count_pairs(&pairs_file)? == 0 {
            // Every prompt's images got the same verdict: there is nothing to prefer, so the
            // round keeps its policy (the run goes on instead of failing in the trainer).
            println!(
                "[iter] round {r}: no pairs (the judge gave each prompt's images one verdict): no DPO this round, the policy carries over"
            );
            carry_over(&policy, &final_dir)?;
        }
        if !is_model_dir(&final_dir) {
            println!(
                "[iter] round {r}: DPO ({} s so far)",
                t0.elapsed().as_secs()
            );
            let reference = if args.reference_base {
                base.clone()
            } else {
                policy.clone()
            };
            let spec = RoundSpec {
                pairs: &pairs_file,
                init: &policy,
                reference: Some(&reference),
                ckpt_dir: ckpt_dir.clone(),
                run_dir: round_dir.join("train"),
                resume: true,
                max_steps: None,
                skip_bad_rows: false,
            };
            let mut guide_scorer = if guide == "none" {
                None
            } else {
                Some(JudgeScorer {
                    name: guide.into(),
                    judge: outcome_for(guide)?,
                })
            };
            let res = train_round(
                &recipe,
                &dpo_cfg,
                &spec,
                guide_scorer.as_mut().map(|g| g as &mut dyn ImageScorer),
            )?;
            let acc = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{a:.3}"));
            // With the round's start as the reference every starting margin is 0, which counts as wrong.
            println!(
                "[iter] round {r}: held-out implicit-reward accuracy {} → {}",
                acc(res.eval_accuracy_start),
                acc(res.eval_accuracy_end)
            );
        }
        policy = final_dir;
        let mut evals = vec![(format!("dpo-{r}"), it.eval_images_per_prompt, None)];
        if r == args.iter {
            // The last round's policy is the final one: its PARM row shares the pass.
            if let Some(v) = &parm_verifier {
                evals.push((
                    format!("final+parm@{}", it.verify_n),
                    it.verify_images_per_prompt,
                    Some(v),
                ));
            }
        }
        stages(&mut rows, &policy, &evals)?;
        if let Some(g) = it.geneval_each_round.as_ref().filter(|_| recipe.is_glyph()) {
            let dir = round_dir.join("geneval");
            if !dir.join("scores-done").exists() {
                geneval_round(args.recipe.as_deref(), g, &policy, &dir, None)?;
                crate::util::atomic_write(&dir.join("scores-done"), b"")?;
            }
        }
    }
    if let Some(v) = &parm_verifier {
        stage(
            &mut rows,
            &format!("final+parm@{}", it.verify_n),
            &policy,
            it.verify_images_per_prompt,
            Some(v),
        )?;
    }
    println!("\n{}", table(&rows));
    println!(
        "[iter] done in {} s; summary {}",
        t0.elapsed().as_secs(),
        summary_path.display()
    );
    Ok(())
}

/// Output and init folders for one judges-recipe stage trained by the loop: the ORM and PARM go
/// where `iterate` will load them from, and a PARM that the recipe starts from its ORM starts from
/// the ORM the loop just wrote (not the recipe's `orm.out`, which `iterate.orm` may override).
fn judge_stage_paths(
    judges: &crate::judge::recipe::JudgesRecipe,
    it: &IterateConfig,
    stage: &str,
) -> (Option<PathBuf>, Option<PathBuf>) {
    match stage {
        "orm" => (Some(it.orm.clone()), None),
        "parm" => {
            let from_orm = judges.parm.init.as_deref() == Some(judges.orm.out.as_path());
            (
                Some(it.parm_model.clone()),
                from_orm.then(|| it.orm.clone()),
            )
        }
        _ => (None, None),
    }
}

/// The judges-recipe stages, in order, that must run for the loop to have its ORM (`orm`) and
/// PARM (`parm`): each missing judge's stage, and back along `init` every stage whose output is
/// missing too. Stages whose checkpoint exists are kept as they are.
fn judge_plan(
    judges: &crate::judge::recipe::JudgesRecipe,
    it: &IterateConfig,
    orm: bool,
    parm: bool,
) -> Result<Vec<String>> {
    let mut needed: Vec<PathBuf> = Vec::new();
    if orm {
        needed.push(it.orm.clone());
    }
    if parm {
        needed.push(it.parm_model.clone());
    }
    let mut run = Vec::new();
    for stage in judges.stage_names().into_iter().rev() {
        let cfg = judges.stage(&stage)?;
        let (out, init) = judge_stage_paths(judges, it, &stage);
        let out = out.unwrap_or_else(|| cfg.out.clone());
        if needed.contains(&out) && !out.join("config.json").exists() {
            if let Some(init) = init.or_else(|| cfg.init.clone()) {
                needed.push(init);
            }
            run.push(stage);
        }
    }
    run.reverse();
    Ok(run)
}

/// The separate outcome judge of PARM's best-of-N′ when the recipe asks for the ORM
/// (`iterate.parm_outcome: orm`); None: the PARM checkpoint answers.
pub fn parm_outcome_judge(recipe: &Recipe, device: tch::Device) -> Result<Option<LlavaJudge>> {
    match &recipe.iterate {
        Some(it) if it.parm_outcome == ParmOutcome::Orm => {
            load_judge(&it.orm, device, it.judge_probs)
                .with_context(|| format!("iterate.parm_outcome: orm: loading {}", it.orm.display()))
                .map(Some)
        }
        _ => Ok(None),
    }
}

/// A trained LLaVA-OneVision judge in fp32 reading P(yes) as `probs` says; a missing checkpoint
/// says how to train one.
fn load_judge(dir: &Path, device: tch::Device, probs: JudgeProbs) -> Result<LlavaJudge> {
    if !dir.join("config.json").exists() {
        bail!("judge checkpoint {} is missing: train it with `imgcot-train judge-data` and `imgcot-train reward-ft`", dir.display());
    }
    let mut judge = LlavaJudge::load(dir, device, tch::Kind::Float)?;
    judge.mode = probs.score_mode();
    Ok(judge)
}

/// The judges a `--verify orm|parm|oracle` flag needs (`sample`, `eval geneval`), loaded once;
/// [`VerifyJudges::verifier`] borrows them. `orm` and `parm` load `--judge DIR`, else the
/// recipe's `iterate.orm` / `iterate.parm_model`; `parm` also loads the separate ORM of
/// best-of-N′ when the recipe asks for it (`iterate.parm_outcome: orm`).
pub enum VerifyJudges {
    Oracle(OracleJudge),
    Orm(LlavaJudge),
    Parm {
        judge: LlavaJudge,
        // Boxed: a judge is large and most PARM runs have no separate outcome judge.
        outcome: Option<Box<LlavaJudge>>,
        cfg: ParmConfig,
    },
}

impl VerifyJudges {
    pub fn load(
        which: &str,
        judge: Option<&Path>,
        recipe: &Recipe,
        device: tch::Device,
    ) -> Result<Self> {
        let it = recipe.iterate.as_ref();
        let load = |default: Option<&PathBuf>| -> Result<LlavaJudge> {
            let dir = judge
                .or(default.map(PathBuf::as_path))
                .context("give --judge DIR (the recipe names no judge)")?;
            load_judge(dir, device, it.map(|i| i.judge_probs).unwrap_or_default())
                .with_context(|| format!("loading the judge {}", dir.display()))
        };
        Ok(match which {
            "oracle" => VerifyJudges::Oracle(OracleJudge),
            "orm" => VerifyJudges::Orm(load(it.map(|i| &i.orm))?),
            "parm" => VerifyJudges::Parm {
                judge: load(it.map(|i| &i.parm_model))?,
                outcome: parm_outcome_judge(recipe, device)?.map(Box::new),
                cfg: it.map(|i| i.parm).unwrap_or_default(),
            },
            _ => bail!("unknown --verify '{which}' (orm, parm, oracle)"),
        })
    }

    /// Best-of-`n` with the loaded judges: the oracle or the ORM by P(yes), or PARM with the
    /// recipe's settings.
    pub fn verifier(&self, n: usize) -> Verifier<'_> {
        match self {
            VerifyJudges::Oracle(j) => Verifier::Orm { judge: j, n },
            VerifyJudges::Orm(j) => Verifier::Orm { judge: j, n },
            VerifyJudges::Parm {
                judge,
                outcome,
                cfg,
            } => Verifier::parm(
                judge,
                judge,
                outcome.as_deref().map(|o| o as &dyn OutcomeJudge),
                n,
                *cfg,
            ),
        }
    }
}

/// Loads the LLaVA-OneVision ORM and PARM judges named by the recipe.
pub fn load_llava_judges(
    recipe: &Recipe,
    it: &IterateConfig,
    orm: bool,
    parm: bool,
) -> Result<Judges> {
    let device = recipe.device()?;
    // Missing judges are trained first with the embedded judges recipe, exactly as the CLI
    // commands do: only the stages that lead to a missing judge, `judge-data` only when its
    // output is not already there for this generator, and each stage resumes where it stopped.
    let missing = (orm && !it.orm.join("config.json").exists())
        || (parm && !it.parm_model.join("config.json").exists());
    if missing {
        use crate::judge::cli::{run_judge_data, run_reward_ft, JudgeDataArgs, RewardFtArgs};
        let judges = crate::judge::recipe::JudgesRecipe::load(None)?;
        let stages = judge_plan(&judges, it, orm, parm)?;
        let mut data_cfg = judges.data.clone();
        data_cfg.model = Some(recipe.paths.model.clone());
        let data_ready = crate::judge::data::is_current(&data_cfg)?;
        println!(
            "[iter] judges missing: {}reward-ft ({})",
            if data_ready { "" } else { "judge-data + " },
            stages.join(", ")
        );
        if data_ready {
            println!(
                "[iter] judge data in {} is current for {}: reused",
                data_cfg.out.display(),
                recipe.paths.model.display()
            );
        } else {
            run_judge_data(JudgeDataArgs {
                recipe: None,
                model: Some(recipe.paths.model.clone()),
                out: None,
                num_prompts: None,
                n: None,
                seed: None,
                device: None,
            })?;
        }
        for stage in stages {
            let (out, init) = judge_stage_paths(&judges, it, &stage);
            run_reward_ft(RewardFtArgs {
                out,
                init,
                ..RewardFtArgs::for_stage(&stage)
            })?;
        }
    }
    let load = |dir: &Path| load_judge(dir, device, it.judge_probs);
    Ok(Judges {
        orm: if orm {
            Some(Box::new(load(&it.orm)?))
        } else {
            None
        },
        parm: if parm {
            Some(Box::new(load(&it.parm_model)?))
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it_config(orm: &str, parm: &str) -> IterateConfig {
        serde_norway::from_str(&format!("orm: {orm}\nparm_model: {parm}\n")).unwrap()
    }

    #[test]
    fn a_run_folder_resumes_only_under_its_own_settings() {
        let dir = std::env::temp_dir().join(format!("imgcot-loop-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let recipe = Recipe::load(None).unwrap();
        let v = check_run_settings(&dir, &recipe, "parm", "parm", false)
            .unwrap()
            .expect("a new folder's settings to write");
        crate::util::atomic_write(&dir.join("loop.json"), v.to_string().as_bytes()).unwrap();
        // The same settings, read back from the file: accepted, nothing to write.
        assert!(check_run_settings(&dir, &recipe, "parm", "parm", false)
            .unwrap()
            .is_none());
        // Settings that change no result: accepted.
        let mut other = recipe.clone();
        other.eval.batch_size = 7;
        other.dpo.as_mut().unwrap().ckpt_every = 7;
        assert!(check_run_settings(&dir, &other, "parm", "parm", false)
            .unwrap()
            .is_none());
        let mut other = recipe.clone();
        other.dpo.as_mut().unwrap().lr *= 2.0;
        let e = check_run_settings(&dir, &other, "parm", "parm", false).unwrap_err();
        assert!(
            format!("{e:#}").contains("recipe.dpo.lr: 0.00003 → 0.00006"),
            "{e:#}"
        );
        for (g, l, rb, what) in [
            ("orm", "parm", false, "guide"),
            ("parm", "orm", false, "labeller"),
            ("parm", "parm", true, "reference_base"),
        ] {
            let e = check_run_settings(&dir, &recipe, g, l, rb).unwrap_err();
            assert!(format!("{e:#}").contains(what), "{e:#}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parm_settings_default_to_the_paper_and_parse() {
        let it = it_config("o", "p");
        assert_eq!(it.parm_outcome, ParmOutcome::Parm);
        assert_eq!(it.parm.clarity, crate::verify::ClaritySource::Judge);
        assert_eq!(it.judge_probs, JudgeProbs::Seed);
        // The default stays out of saved settings (run folders from before it still resume).
        let saved = serde_json::to_value(&it).unwrap();
        assert!(saved.get("judge_probs").is_none(), "{saved}");
        let it: IterateConfig = serde_norway::from_str(
            "orm: o\nparm_model: p\nparm_outcome: orm\nparm:\n  clarity: rule\njudge_probs: exact\n",
        )
        .unwrap();
        assert_eq!(it.parm_outcome, ParmOutcome::Orm);
        assert_eq!(it.parm.clarity, crate::verify::ClaritySource::Rule);
        assert_eq!(it.judge_probs, JudgeProbs::Exact);
        assert_eq!(serde_json::to_value(&it).unwrap()["judge_probs"], "exact");
        let bad = serde_norway::from_str::<IterateConfig>(
            "orm: o\nparm_model: p\nparm:\n  clarity: sometimes\n",
        );
        assert!(bad.is_err());
    }

    #[test]
    fn loop_trained_parm_starts_from_the_loops_orm() {
        let judges = crate::judge::recipe::JudgesRecipe::load(None).unwrap();
        // The embedded recipe starts its PARM from its ORM, and its ORM from the last pretrain stage.
        assert_eq!(judges.parm.init.as_deref(), Some(judges.orm.out.as_path()));
        assert_eq!(
            judges.orm.init.as_deref(),
            judges.pretrain.last().map(|p| p.out.as_path())
        );
        let it = it_config("elsewhere/orm", "elsewhere/parm");
        assert_eq!(
            judge_stage_paths(&judges, &it, "orm"),
            (Some(PathBuf::from("elsewhere/orm")), None)
        );
        assert_eq!(
            judge_stage_paths(&judges, &it, "parm"),
            (
                Some(PathBuf::from("elsewhere/parm")),
                Some(PathBuf::from("elsewhere/orm"))
            )
        );
        assert_eq!(judge_stage_paths(&judges, &it, "pretrain-1"), (None, None));
        // A PARM the recipe starts elsewhere keeps the recipe's init.
        let mut other = judges.clone();
        other.parm.init = Some(PathBuf::from("some/pretrained"));
        assert_eq!(judge_stage_paths(&other, &it, "parm").1, None);
    }

    #[test]
    fn the_loop_trains_only_the_stages_that_lead_to_a_missing_judge() {
        let dir = std::env::temp_dir().join(format!("imgcot-judge-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // pretrain-1 → orm → parm, each from the one before, all in the temp folder.
        let mut judges = crate::judge::recipe::JudgesRecipe::load(None).unwrap();
        assert_eq!(judges.stage_names(), ["pretrain-1", "orm", "parm"]);
        judges.pretrain[0].out = dir.join("base");
        judges.orm.init = Some(dir.join("base"));
        judges.orm.out = dir.join("recipe-orm");
        judges.parm.init = Some(dir.join("recipe-orm"));
        let it = it_config(
            dir.join("orm").to_str().unwrap(),
            dir.join("parm").to_str().unwrap(),
        );
        let plan = |orm: bool, parm: bool| judge_plan(&judges, &it, orm, parm).unwrap();
        let done = |name: &str| {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("config.json"), "{}").unwrap();
        };
        assert_eq!(plan(true, true), ["pretrain-1", "orm", "parm"]);
        assert_eq!(plan(true, false), ["pretrain-1", "orm"]);
        assert!(plan(false, false).is_empty());
        done("base");
        assert_eq!(plan(true, true), ["orm", "parm"]);
        assert_eq!(plan(false, true), ["orm", "parm"]);
        done("orm");
        assert_eq!(plan(true, true), ["parm"]);
        assert!(plan(true, false).is_empty());
        // Only what is missing: an existing PARM is kept when the ORM is retrained.
        done("parm");
        std::fs::remove_dir_all(dir.join("orm")).unwrap();
        assert_eq!(plan(true, true), ["orm"]);
        assert!(plan(false, true).is_empty());
        // A missing base is retrained only when a stage to run starts from it.
        std::fs::remove_dir_all(dir.join("base")).unwrap();
        assert_eq!(plan(true, true), ["pretrain-1", "orm"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
