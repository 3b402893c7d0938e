//! `imgcot-train eval`: generate an evaluation set in GenEval's folder layout with a checkpoint,
//! score every image with a detector and GenEval's exact rules, write `results.jsonl` and
//! `summary.json`, print the table and log it to TensorBoard. With no arguments: the glyph world.
use crate::eval::geneval::{
    self, detectors::Detector, layout, rules::RuleOptions, summary::Summary, Detection, Metadata,
};
use crate::generate::{derive_seed, SamplerConfig};
use crate::glyphs;
use crate::models::showo::{Layout, Showo, TextTokenizer};
use crate::models::ImageTokenizer;
use crate::recipe::Recipe;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub sub: Option<EvalSub>,
    /// Recipe YAML (default: the embedded glyph-world recipe).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Generator checkpoint (default: the recipe's `paths.model`).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Output folder (default: runs/eval-<checkpoint folder>-<checkpoint name>). A folder that
    /// holds images of other settings (checkpoint, its weights, sampler, seed, …) is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub images_per_prompt: Option<usize>,
    /// Only score the images already in --out.
    #[arg(long)]
    pub score_only: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum EvalSub {
    /// Score a GenEval image folder (official GenEval prompts or any metadata) with a detector backend.
    Geneval(crate::commands::geneval::ScoreArgs),
}

/// Settings recorded in the output folder.
#[derive(Serialize)]
struct Settings<'a> {
    checkpoint: String,
    /// Name, size and modification time of each weights file: a checkpoint saved again under
    /// the same path is another model.
    weights: Vec<String>,
    dtype: String,
    metadata: String,
    images_per_prompt: usize,
    seed: u64,
    sampler: &'a SamplerConfig,
    verifier: Option<String>,
}

/// Name, size and modification time (ns since the epoch) of each `*.safetensors` file of a
/// checkpoint folder (or of the file itself), sorted.
pub fn weights_fingerprint(ckpt: &Path) -> Result<Vec<String>> {
    let files: Vec<PathBuf> = if ckpt.is_dir() {
        std::fs::read_dir(ckpt)
            .with_context(|| format!("listing {}", ckpt.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect()
    } else {
        vec![ckpt.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let m = std::fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?;
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        out.push(format!(
            "{} {} bytes {t}",
            name.unwrap_or_default(),
            m.len()
        ));
    }
    out.sort();
    Ok(out)
}

/// Writes `settings` to `path` unless the file there records other settings: generation skips
/// complete prompt folders, so images of another checkpoint or sampler would be scored as if
/// they were this one's. Keys only one side has (files from older builds) are not compared.
pub fn record_settings(path: &Path, settings: &serde_json::Value) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Some((k, o, v)) = recorded_conflict(path, &text, settings, &[])? {
            anyhow::bail!(
                "{} holds images made with other settings ({k}: {o} there, {v} now); \
                 pass another --out (or --images) or remove that folder",
                path.parent().unwrap_or(path).display()
            );
        }
    }
    crate::util::atomic_write(path, serde_json::to_string_pretty(settings)?.as_bytes())
}

/// The first key of `settings` (outside `skip`) that the settings record `text`, read from
/// `path`, holds with another value: (key, recorded, now). Keys only one side has (files from
/// older builds) are not compared.
pub(crate) fn recorded_conflict(
    path: &Path,
    text: &str,
    settings: &serde_json::Value,
    skip: &[&str],
) -> Result<Option<(String, serde_json::Value, serde_json::Value)>> {
    let old: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("parsing {}", path.display()))?;
    let (Some(old), Some(new)) = (old.as_object(), settings.as_object()) else {
        return Ok(None);
    };
    Ok(new
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .find_map(|(k, v)| {
            old.get(k)
                .filter(|o| !crate::util::same_setting(o, v))
                .map(|o| (k.clone(), o.clone(), v.clone()))
        }))
}

/// The default output folder of `eval`: `runs/eval-<parent>-<name>` of the checkpoint path, so
/// `ckpts/a/final` and `ckpts/b/final` do not share one.
fn default_out(runs: &Path, ckpt: &Path) -> PathBuf {
    let part = |p: Option<&Path>| {
        p.and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    };
    let name = part(Some(ckpt)).unwrap_or_else(|| "model".into());
    let stem = match part(ckpt.parent()) {
        Some(parent) => format!("eval-{parent}-{name}"),
        None => format!("eval-{name}"),
    };
    runs.join(stem)
}

/// A best-of-N eval folder's counts file ([`StatsRecord`]).
pub const VERIFY_STATS_FILE: &str = "verify_stats.json";

/// One output folder of a generation pass.
pub struct LayoutOut<'a> {
    pub dir: &'a Path,
    pub images_per_prompt: usize,
    /// Best-of-N: image k of a prompt is the pick among its candidates k·n … k·n + n − 1.
    pub verifier: Option<&'a crate::verify::Verifier<'a>>,
}

/// The counts file of a best-of-N folder (`verify_stats.json`, or a shard's): what its verifier
/// cost and decided, summed over `counted_prompts`. [`generate_layouts`] updates it after each
/// batch's images are written, so a pass resumed after an interruption goes on counting where
/// it stopped. A prompt whose images were written but not counted (a kill between the two
/// writes) stays out of `counted_prompts`, so the file then says that it counts fewer than
/// `prompts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsRecord {
    #[serde(flatten)]
    pub stats: crate::verify::VerifyStats,
    /// Prompts of the pass.
    #[serde(default)]
    pub prompts: usize,
    /// Indices of the prompts counted, ascending.
    #[serde(default)]
    pub counted_prompts: Vec<usize>,
}

impl StatsRecord {
    /// The record at `path`, or an empty one (none yet, or one written before records listed
    /// their prompts, whose counts cannot be continued).
    fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let r: StatsRecord = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                Ok(if r.counted_prompts.is_empty() {
                    StatsRecord::default()
                } else {
                    r
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StatsRecord::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Generates `images_per_prompt` images for each prompt index in `indices` into `out` (GenEval
/// layout), skipping prompt folders that are already complete. Image k of prompt i uses
/// `derive_seed(seed, i, k)`, so two checkpoints are compared on the same noise.
#[allow(clippy::too_many_arguments)]
pub fn generate_layout(
    model: &Showo,
    layout_ids: &Layout,
    tok: &TextTokenizer,
    vq: &dyn ImageTokenizer,
    metas: &[Metadata],
    indices: &[usize],
    images_per_prompt: usize,
    seed: u64,
    sampler: &SamplerConfig,
    batch_rows: usize,
    out: &Path,
    verifier: Option<&crate::verify::Verifier>,
    stats_name: &str,
) -> Result<(usize, crate::verify::VerifyStats)> {
    let (done, mut stats) = generate_layouts(
        model,
        layout_ids,
        tok,
        vq,
        metas,
        indices,
        seed,
        sampler,
        batch_rows,
        &[LayoutOut {
            dir: out,
            images_per_prompt,
            verifier,
        }],
        stats_name,
    )?;
    Ok((done, stats.remove(0)))
}

/// Whether [`generate_layouts`] can fill these folders from one sampling pass.
pub fn shareable(outs: &[LayoutOut]) -> bool {
    let verified: Vec<(usize, &crate::verify::Verifier)> = outs
        .iter()
        .filter_map(|o| o.verifier.map(|v| (o.images_per_prompt, v)))
        .collect();
    let parms = verified
        .iter()
        .filter(|(_, v)| matches!(v, crate::verify::Verifier::Parm { .. }))
        .count();
    match verified.first() {
        None => true,
        Some(&(ipp, v)) => {
            parms <= 1
                && verified.iter().all(|&(i, w)| i == ipp && w.n() == v.n())
                && outs.iter().all(|o| o.images_per_prompt <= ipp * v.n())
        }
    }
}

/// Several output folders from one sampling pass over the same candidates: candidate k of
/// prompt i has seed `derive_seed(seed, i, k)` whichever folder uses it, so a plain folder of m
/// images per prompt holds candidates 0 … m − 1, the images a best-of-N folder's first picks
/// are chosen among. Best-of-N folders must share images per prompt and N (one PARM at most;
/// it prunes for real only when it is the pass's one folder, see
/// [`crate::verify::shared_pass`]). Prompts complete in every folder are skipped. Returns the
/// prompts generated and each folder's verification counts.
#[allow(clippy::too_many_arguments)]
pub fn generate_layouts(
    model: &Showo,
    layout_ids: &Layout,
    tok: &TextTokenizer,
    vq: &dyn ImageTokenizer,
    metas: &[Metadata],
    indices: &[usize],
    seed: u64,
    sampler: &SamplerConfig,
    batch_rows: usize,
    outs: &[LayoutOut],
    stats_name: &str,
) -> Result<(usize, Vec<crate::verify::VerifyStats>)> {
    let verified: Vec<(usize, &crate::verify::Verifier)> = outs
        .iter()
        .enumerate()
        .filter_map(|(o, out)| out.verifier.map(|v| (o, v)))
        .collect();
    anyhow::ensure!(
        shareable(outs),
        "one pass fills best-of-N folders of one N and one number of images per prompt (one \
         PARM at most), and plain folders of at most that many candidates per prompt"
    );
    // Candidates per prompt; best-of-N folders' picks come in groups of n.
    let cands = match verified.first() {
        Some(&(o, v)) => outs[o].images_per_prompt * v.n(),
        None => outs.iter().map(|o| o.images_per_prompt).max().unwrap_or(0),
    };
    let todo: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| {
            !outs.iter().all(|o| {
                layout::prompt_folder_complete(o.dir, i, &metas[i], o.images_per_prompt)
                    .unwrap_or(false)
            })
        })
        .collect();
    // Each best-of-N folder's counts so far ([`StatsRecord`]).
    let mut records = outs
        .iter()
        .map(|o| match o.verifier {
            Some(_) => StatsRecord::load(&o.dir.join(stats_name)).map(Some),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let totals = |records: &[Option<StatsRecord>]| {
        records
            .iter()
            .map(|r| r.as_ref().map(|r| r.stats.clone()).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    if cands == 0 || todo.is_empty() {
        return Ok((0, totals(&records)));
    }
    let pb = crate::train::logging::progress_bar(todo.len() as u64, true);
    pb.set_message("generating");
    let per_batch = (batch_rows / cands).max(1);
    // Prompts some folder has counted already (complete there, not in another folder) are
    // batched apart from the rest: a batch holding one is not counted again (below), and
    // should not take uncounted prompts with it.
    let (recount, fresh): (Vec<usize>, Vec<usize>) = todo.iter().partition(|i| {
        records
            .iter()
            .flatten()
            .any(|r| r.counted_prompts.binary_search(i).is_ok())
    });
    for chunk in fresh.chunks(per_batch).chain(recount.chunks(per_batch)) {
        let prompts: Vec<String> = chunk.iter().map(|&i| metas[i].prompt.clone()).collect();
        let text = layout_ids.text_batch(tok, &prompts, model.device())?;
        let mut prompt_of = Vec::new();
        let mut seeds = Vec::new();
        let mut row_prompts = Vec::new();
        for (j, &i) in chunk.iter().enumerate() {
            for k in 0..cands {
                prompt_of.push(j);
                seeds.push(derive_seed(seed, i as u64, k as u64));
                row_prompts.push(prompts[j].clone());
            }
        }
        // Every candidate's codes (final ones wherever a plain folder needs them: a lone PARM
        // folder prunes for real), and the picks of each best-of-N folder.
        let vs: Vec<&crate::verify::Verifier> = verified.iter().map(|&(_, v)| v).collect();
        let (all, sels) = crate::verify::shared_pass(
            model,
            layout_ids,
            vq,
            &text,
            &prompt_of,
            &row_prompts,
            &seeds,
            sampler,
            &vs,
            outs.len() > 1,
        )?;
        let batch_stats: Vec<(usize, crate::verify::VerifyStats)> = verified
            .iter()
            .zip(&sels)
            .map(|(&(o, _), sel)| (o, sel.stats.clone()))
            .collect();
        let picks = sels.into_iter().map(|s| s.codes);
        let mut next_pick = picks;
        for out in outs {
            let ipp = out.images_per_prompt;
            let codes = match out.verifier {
                Some(_) => next_pick
                    .next()
                    .context("a best-of-N folder without picks")?,
                None => {
                    // Candidates 0 … ipp − 1 of each prompt.
                    let rows: Vec<i64> = (0..chunk.len())
                        .flat_map(|j| (0..ipp).map(move |k| (j * cands + k) as i64))
                        .collect();
                    all.index_select(0, &Tensor::from_slice(&rows))
                }
            };
            let images = vq.decode(&codes.to_device(model.device()))?;
            let pngs = crate::world::to_pngs(&images)?;
            for (j, &i) in chunk.iter().enumerate() {
                layout::write_metadata(out.dir, i, &metas[i])?;
                for k in 0..ipp {
                    layout::write_sample(out.dir, i, k, &pngs[j * ipp + k])?;
                }
            }
        }
        // Counted once the images are on disk. A batch holding a prompt already counted (its
        // folder was removed, or it was complete here and not in another folder of the pass)
        // is left uncounted rather than counted twice.
        for (o, batch) in batch_stats {
            let Some(r) = records[o].as_mut() else {
                continue;
            };
            if chunk
                .iter()
                .any(|i| r.counted_prompts.binary_search(i).is_ok())
            {
                continue;
            }
            r.stats.add(&batch);
            r.counted_prompts.extend_from_slice(chunk);
            r.counted_prompts.sort_unstable();
            r.prompts = indices.len();
            crate::util::atomic_write(
                &outs[o].dir.join(stats_name),
                serde_json::to_string_pretty(r)?.as_bytes(),
            )?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    for (r, out) in records.iter().zip(outs) {
        if let Some(r) = r.as_ref().filter(|r| r.counted_prompts.len() < r.prompts) {
            println!(
                "note: {} counts the verifier's work for {} of {} prompts (the rest were \
                 written before an interruption left them uncounted)",
                out.dir.join(stats_name).display(),
                r.counted_prompts.len(),
                r.prompts
            );
        }
    }
    Ok((todo.len(), totals(&records)))
}

/// The glyph world's detector: a PNG → nearest-patch codes → one detection per glyph.
pub struct GlyphDetector;

impl Detector for GlyphDetector {
    fn name(&self) -> &str {
        "glyph"
    }
    fn detect(&mut self, sample: &layout::Sample, _meta: &Metadata) -> Result<Vec<Detection>> {
        let (w, h, rgb) = glyphs::png::read_rgb(&sample.path)?;
        anyhow::ensure!(
            w as usize == glyphs::world::IMAGE_SIZE && h as usize == glyphs::world::IMAGE_SIZE,
            "{}: glyph images are {}×{}, found {w}×{h}",
            sample.rel,
            glyphs::world::IMAGE_SIZE,
            glyphs::world::IMAGE_SIZE
        );
        Ok(glyphs::detect::detect(&glyphs::world::encode(&rgb)?))
    }
}

/// Scores a glyph-world folder: GenEval's rules plus the glyph world's `strict` and `glyphs_per_image`.
pub fn score_glyph_folder(images: &Path, out: &Path) -> Result<Summary> {
    let folders = layout::list_images(images)?;
    let detections = GlyphDetector.detect_all(&folders)?;
    let opts = RuleOptions::default();
    let records = geneval::score::judge_folders(images, &folders, &detections, &opts)?;
    let mut strict = Vec::new();
    let mut glyphs = 0usize;
    for (f, dets) in folders.iter().zip(&detections) {
        for d in dets {
            strict.push((
                f.metadata.tag.as_str(),
                glyphs::detect::strict(&f.metadata, d, &opts),
            ));
            glyphs += d.len();
        }
    }
    let mut summary = Summary::from_records(&records)?;
    summary.strict = geneval::summary::macro_average(strict.iter().map(|(t, s)| (*t, *s)));
    summary.glyphs_per_image = Some(glyphs as f64 / strict.len().max(1) as f64);
    crate::util::atomic_write(
        &out.join("results.jsonl"),
        geneval::score::records_jsonl(&records)?.as_bytes(),
    )?;
    let json = serde_json::to_string_pretty(&summary.to_json())?;
    crate::util::atomic_write(&out.join("summary.json"), format!("{json}\n").as_bytes())?;
    Ok(summary)
}

pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(EvalSub::Geneval(g)) = args.sub {
        return crate::commands::geneval::run_score(g).map(|_| ());
    }
    let recipe = Recipe::load(args.recipe.as_deref())?;
    let ckpt = args
        .ckpt
        .clone()
        .unwrap_or_else(|| recipe.paths.model.clone());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&recipe.paths.runs, &ckpt));
    let ipp = args
        .images_per_prompt
        .unwrap_or(recipe.eval.images_per_prompt);
    let summary = evaluate(&recipe, &ckpt, &out, ipp, args.score_only)?;
    println!("{}", summary.table());
    Ok(())
}

/// Generates (unless `score_only`) and scores the recipe's evaluation set; logs to TensorBoard.
pub fn evaluate(
    recipe: &Recipe,
    ckpt: &Path,
    out: &Path,
    ipp: usize,
    score_only: bool,
) -> Result<Summary> {
    evaluate_with(recipe, ckpt, out, ipp, score_only, None)
}

/// [`evaluate`] with an optional test-time verifier (best-of-N per image).
pub fn evaluate_with(
    recipe: &Recipe,
    ckpt: &Path,
    out: &Path,
    ipp: usize,
    score_only: bool,
    verifier: Option<&crate::verify::Verifier>,
) -> Result<Summary> {
    let out = LayoutOut {
        dir: out,
        images_per_prompt: ipp,
        verifier,
    };
    Ok(evaluate_many(recipe, ckpt, &[out], score_only)?.remove(0))
}

/// Several evaluations of one checkpoint from one sampling pass ([`generate_layouts`]: the same
/// candidates, e.g. the plain images and the ORM's and PARM's best-of-N picks among them), each
/// folder with its own settings, scores and TensorBoard log.
pub fn evaluate_many(
    recipe: &Recipe,
    ckpt: &Path,
    outs: &[LayoutOut],
    score_only: bool,
) -> Result<Vec<Summary>> {
    let t0 = std::time::Instant::now();
    if !score_only {
        let device = recipe.device()?;
        let model = Showo::load(ckpt, device, recipe.kind()?)
            .with_context(|| format!("loading {}", ckpt.display()))?;
        let tok = TextTokenizer::from_file(&recipe.paths.tokenizer)?;
        let ids = Layout::new(&model.cfg, &tok);
        let vq = crate::world::image_tokenizer(&recipe.paths.vq, device)?;
        let metas = layout::load_metadata_jsonl(&recipe.eval.metadata)?;
        let indices: Vec<usize> = (0..metas.len()).collect();
        for out in outs {
            std::fs::create_dir_all(out.dir)?;
            let settings = Settings {
                checkpoint: ckpt.display().to_string(),
                weights: weights_fingerprint(ckpt)?,
                dtype: format!("{:?}", recipe.kind()?),
                metadata: recipe.eval.metadata.display().to_string(),
                images_per_prompt: out.images_per_prompt,
                seed: recipe.eval.seed,
                sampler: &recipe.sampler,
                verifier: out.verifier.map(|v| v.name()),
            };
            record_settings(
                &out.dir.join("settings.json"),
                &serde_json::to_value(&settings)?,
            )?;
        }
        generate_layouts(
            &model,
            &ids,
            &tok,
            vq.as_ref(),
            &metas,
            &indices,
            recipe.eval.seed,
            &recipe.sampler,
            recipe.eval.batch_size,
            outs,
            VERIFY_STATS_FILE,
        )?;
    }
    let mut summaries = Vec::with_capacity(outs.len());
    for out in outs {
        let summary = if recipe.is_glyph() {
            score_glyph_folder(out.dir, out.dir)?
        } else {
            anyhow::bail!("scoring real images needs a detector backend: use `imgcot-train eval geneval --score …`")
        };
        let mut tb = crate::train::logging::Logger::new(
            out.dir,
            0,
            crate::train::logging::LoggerOptions::default(),
        )?
        .since(t0);
        for t in &summary.tags {
            tb.scalar(&format!("eval/{}", t.tag), t.accuracy(), 0);
        }
        tb.scalar("eval/overall", summary.overall(), 0);
        tb.info(format!(
            "eval of {} in {:.1}s",
            ckpt.display(),
            t0.elapsed().as_secs_f64()
        ));
        tb.finish();
        summaries.push(summary);
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_out_names_the_checkpoint_folder_too() {
        let runs = Path::new("runs");
        assert_eq!(
            default_out(runs, Path::new("ckpts/a/final")),
            Path::new("runs/eval-a-final")
        );
        assert_ne!(
            default_out(runs, Path::new("ckpts/a/final")),
            default_out(runs, Path::new("ckpts/b/final"))
        );
        assert_eq!(
            default_out(runs, Path::new("base")),
            Path::new("runs/eval-base")
        );
    }

    #[test]
    fn settings_of_another_model_are_refused_and_the_same_ones_resume() {
        let dir = std::env::temp_dir().join(format!("imgcot-eval-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("settings.json");
        let _ = std::fs::remove_file(&path);
        let a = serde_json::json!({"checkpoint": "ckpts/a/final", "seed": 1});
        record_settings(&path, &a).unwrap();
        record_settings(&path, &a).unwrap();
        let b = serde_json::json!({"checkpoint": "ckpts/b/final", "seed": 1});
        let e = record_settings(&path, &b).unwrap_err().to_string();
        assert!(
            e.contains("checkpoint") && e.contains("ckpts/a/final"),
            "{e}"
        );
        // The refused settings did not replace the recorded ones.
        record_settings(&path, &a).unwrap();
        // A key the older file lacks is not a difference.
        let newer = serde_json::json!({"checkpoint": "ckpts/a/final", "seed": 1, "dtype": "Float"});
        record_settings(&path, &newer).unwrap();
        let other_dtype =
            serde_json::json!({"checkpoint": "ckpts/a/final", "seed": 1, "dtype": "BFloat16"});
        assert!(record_settings(&path, &other_dtype).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn weights_fingerprint_changes_when_the_weights_are_saved_again() {
        let dir = std::env::temp_dir().join(format!("imgcot-eval-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = dir.join("model.safetensors");
        std::fs::write(&w, b"abc").unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let a = weights_fingerprint(&dir).unwrap();
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].starts_with("model.safetensors 3 bytes"), "{a:?}");
        std::fs::write(&w, b"abcd").unwrap();
        assert_ne!(weights_fingerprint(&dir).unwrap(), a);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
