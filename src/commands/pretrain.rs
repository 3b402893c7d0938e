//! `imgcot-train pretrain`: trains the glyph world's small Show-o from scratch with Show-o's own
//! masked-token objective (spec-showo.md §5): cosine mask ratio, exactly k masked positions, labels
//! on soi / masked codes / eoi, 10% prompt dropout; AdamW, warmup + cosine LR, atomic checkpoints
//! with `--resume`, TensorBoard scalars and a sample grid.
use crate::generate::{self, derive_seed, NoHook};
use crate::glyphs;
use crate::models::glyph_vq::{codes_to_tensor, GlyphTokenizer};
use crate::models::showo::{omni_attention_mask, Config, Layout, Showo, TextTokenizer};
use crate::models::ImageTokenizer;
use crate::recipe::{Pretrain, Recipe};
use crate::train::{ckpt, grad, logging, optim, rng, schedule::LrSchedule};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct PretrainArgs {
    /// Recipe YAML (default: the embedded glyph-world recipe).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Continue from the latest checkpoint of this run.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps (default: the recipe's).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Where the final model goes (default: the recipe's `paths.model`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run name for runs/ and ckpts/ (default: pretrain-<recipe name>).
    #[arg(long)]
    pub run: Option<String>,
}

/// The small Show-o config of a glyph recipe: the recipe's Phi overrides plus the vocabulary
/// sizes implied by the prompt tokenizer and the 37-code image tokenizer.
pub fn glyph_model_config(recipe: &Recipe, tok: &TextTokenizer) -> Result<Config> {
    let llm = tok
        .inner()
        .token_to_id("[PAD]")
        .context("tokenizer has no [PAD]")? as i64;
    let vq = GlyphTokenizer::new();
    let mut map = recipe.model.clone();
    let codebook = vq.codebook_size();
    let n = vq.grid_size(glyphs::world::IMAGE_SIZE as i64).pow(2);
    map.insert("llm_vocab_size".into(), llm.into());
    map.insert("codebook_size".into(), codebook.into());
    map.insert("num_vq_tokens".into(), n.into());
    map.insert("vocab_size".into(), (llm + 10 + codebook + 1).into());
    Config::from_json(&serde_json::Value::Object(map).to_string()).context("recipe model config")
}

/// One training batch: token ids, labels and the (prompt, codes) it came from, drawn from a
/// per-step stream so that a resumed run sees exactly the same data.
struct Batch {
    ids: Tensor,
    labels: Tensor,
}

fn make_batch(
    by_tag: &[Vec<crate::eval::geneval::Metadata>],
    layout: &Layout,
    tok: &TextTokenizer,
    pt: &Pretrain,
    step: u64,
    device: Device,
) -> Result<Batch> {
    let mut data = rng::DataRng::with_stream(pt.seed, step);
    let b = pt.batch_size as usize;
    let mut codes = Vec::with_capacity(b);
    let mut text = Vec::with_capacity(b * layout.text_len as usize);
    for _ in 0..b {
        let tag = &by_tag[data.below(by_tag.len() as u64) as usize];
        let meta = &tag[data.below(tag.len() as u64) as usize];
        codes.push(glyphs::scene::sample_scene(meta, data.rng_mut())?);
        let toks = if data.uniform() < pt.cond_dropout {
            Vec::new()
        } else {
            tok.encode(&meta.prompt)?
        };
        text.extend(layout.text_ids(&toks));
    }
    let text = Tensor::from_slice(&text)
        .view([b as i64, layout.text_len])
        .to_device(device);
    let codes = codes_to_tensor(&codes, device);
    // Show-o §5: t ~ U[0,1), ratio = cos(tπ/2), k = round(N·ratio) ≥ 1 masked positions.
    let n = layout.num_vq_tokens;
    let t = Tensor::rand([b as i64], (Kind::Float, device));
    let k = (t * std::f64::consts::FRAC_PI_2)
        .cos()
        .multiply_scalar(n as f64)
        .round()
        .clamp_min(1.0);
    let order = Tensor::rand([b as i64, n], (Kind::Float, device))
        .argsort(-1, false)
        .argsort(-1, false);
    let mask = order.lt_tensor(&k.unsqueeze(1));
    let (ids, labels) = layout.training_ids(&text, &codes, &mask);
    Ok(Batch { ids, labels })
}

/// Show-o's t2i loss: CE over the full vocabulary at positions ≥ T (soi, masked codes, eoi), no shift.
pub fn t2i_loss(model: &Showo, ids: &Tensor, labels: &Tensor, text_len: i64) -> Tensor {
    let hidden = model.hidden(ids, &omni_attention_mask(ids, &model.cfg.specials()));
    let s = ids.size()[1] - text_len;
    let logits = model.logits_cols(&hidden.narrow(1, text_len, s), 0, model.cfg.vocab_size);
    logits.flatten(0, 1).cross_entropy_loss::<Tensor>(
        &labels.narrow(1, text_len, s).flatten(0, 1),
        None,
        tch::Reduction::Mean,
        -100,
        0.0,
    )
}

pub fn run(args: PretrainArgs) -> Result<()> {
    let recipe = Recipe::load(args.recipe.as_deref())?;
    ensure!(recipe.is_glyph(), "pretrain trains the glyph world's small Show-o (paths.vq: glyph); real Show-o comes from its checkpoint");
    let pt = recipe
        .pretrain
        .clone()
        .context("the recipe has no `pretrain:` section")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| recipe.paths.model.clone());
    let run = args
        .run
        .clone()
        .unwrap_or_else(|| format!("pretrain-{}", recipe.name));
    pretrain(&recipe, &pt, &out, &run, args.resume, args.max_steps)
}

pub fn pretrain(
    recipe: &Recipe,
    pt: &Pretrain,
    out: &Path,
    run: &str,
    resume: bool,
    max_steps: Option<u64>,
) -> Result<()> {
    let device = recipe.device()?;
    let tok = TextTokenizer::from_file(&recipe.paths.tokenizer)?;
    let cfg = glyph_model_config(recipe, &tok)?;
    let layout = Layout::new(&cfg, &tok);
    let run_dir = recipe.paths.runs.join(run);
    let ckpt_dir = recipe.paths.ckpts.join(run);
    let total = max_steps.unwrap_or(pt.steps).min(pt.steps);

    rng::seed_torch(pt.seed);
    let model = Showo::new(cfg.clone(), device, Kind::Float)?;
    let mut opt = optim::AdamW::new(
        &model.vs,
        optim::AdamWConfig {
            lr: pt.lr,
            weight_decay: pt.weight_decay,
            ..Default::default()
        },
    )?;
    let sched = LrSchedule::Cosine {
        warmup_steps: pt.warmup_steps,
        total_steps: pt.steps,
        min_lr_ratio: pt.min_lr_ratio,
    };
    let record = pretrain_record(recipe, pt)?;
    let mut start = 0;
    if resume {
        if let Some(c) = ckpt::Checkpoint::latest(&ckpt_dir)? {
            let state = c.trainer_state()?;
            // Checkpoints of another recipe's pretraining (same run name) are not continued.
            if let Some(was) = state.extra.get("pretrain") {
                let diff = crate::util::settings_diff(was, &record["pretrain"], &[]);
                ensure!(
                    diff.is_empty(),
                    "{} was written by a pretraining with other settings ({}): resume with those, or pretrain into another run",
                    c.dir.display(),
                    diff.join(", ")
                );
            }
            c.load_model(&model.vs)?;
            c.load_optimizer(&mut opt)?;
            start = state.step;
            ensure!(
                start <= total,
                "the latest checkpoint in {} is at step {start}, past the {total} steps asked for (--max-steps or pretrain.steps)",
                ckpt_dir.display()
            );
        }
    }
    let by_tag: Vec<Vec<_>> = crate::eval::geneval::TAGS
        .iter()
        .map(|t| glyphs::prompts::enumerate(t))
        .collect::<Result<_>>()?;
    let mut log = logging::Logger::new(
        &run_dir,
        total,
        logging::LoggerOptions {
            print_every: pt.log_every,
            ..Default::default()
        },
    )?;
    log.info(format!(
        "pretrain {run}: {} parameters, steps {start}..{total}, batch {}, device {device:?}",
        model.num_parameters(),
        pt.batch_size
    ));
    let vars = grad::trainable_vars(&model.vs);
    let t0 = Instant::now();
    let mut last_loss = f64::NAN;
    for step in start..total {
        rng::seed_torch_for_step(pt.seed, step);
        let batch = make_batch(&by_tag, &layout, &tok, pt, step, device)?;
        let loss = t2i_loss(&model, &batch.ids, &batch.labels, layout.text_len);
        opt.zero_grad();
        loss.backward();
        let gnorm = grad::clip_grad_norm(&vars, pt.max_grad_norm);
        let lr = sched.lr(pt.lr, step);
        opt.set_lr(lr);
        opt.step()?;
        last_loss = loss.double_value(&[]);
        log.step(
            step + 1,
            &[("loss", last_loss), ("lr", lr), ("grad_norm", gnorm)],
        );
        let done = step + 1;
        if done % pt.ckpt_every == 0 || done == total {
            let state = ckpt::TrainerState {
                step: done,
                seed: pt.seed,
                extra: record.clone(),
                ..Default::default()
            };
            ckpt::save_checkpoint(&ckpt_dir, &model.vs, Some(&model.cfg), &opt, &state)?;
        }
    }
    log.info(format!(
        "pretrain done: {} steps in {:.1}s, final loss {last_loss:.4}",
        total - start,
        t0.elapsed().as_secs_f64()
    ));
    if total == pt.steps {
        save_model_dir_with(&model, out, record.clone())?;
        log.info(format!("saved {}", out.display()));
    }
    // A grid of samples for the first 16 evaluation prompts.
    let grid = sample_grid(&model, &layout, &tok, recipe)?;
    log.image("samples", &grid.0, grid.1, total)?;
    log.finish();
    Ok(())
}

/// Writes a model directory atomically (staging dir + rename).
pub fn save_model_dir(model: &Showo, out: &Path) -> Result<()> {
    save_model_dir_with(model, out, serde_json::Value::Null)
}

/// A model folder whose trainer state carries `extra` (what made it).
fn save_model_dir_with(model: &Showo, out: &Path, extra: serde_json::Value) -> Result<()> {
    let w = ckpt::CheckpointWriter::begin(out)?;
    model.save(w.path())?;
    w.commit(&ckpt::TrainerState {
        extra,
        ..Default::default()
    })?;
    Ok(())
}

/// What a pretrained base depends on, kept in its `trainer_state.json`.
fn pretrain_record(recipe: &Recipe, pt: &Pretrain) -> Result<serde_json::Value> {
    let mut settings = serde_json::to_value(pt)?;
    // How often it logged and saved does not change the weights.
    crate::util::drop_keys(&mut settings, &["log_every", "ckpt_every"]);
    Ok(serde_json::json!({ "pretrain": {
        "pretrain": settings,
        "model": recipe.model,
        "tokenizer": recipe.paths.tokenizer,
    }}))
}

/// A base checkpoint that a recipe would reuse instead of pretraining: refused when its trainer
/// state records other pretraining settings than the recipe's (recipes that share a base path
/// would otherwise get whichever base ran first). Bases without a record are accepted.
pub fn check_base_matches(recipe: &Recipe, base: &Path) -> Result<()> {
    let Some(pt) = &recipe.pretrain else {
        return Ok(());
    };
    let path = base.join("trainer_state.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let state: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(was) = state.get("extra").and_then(|e| e.get("pretrain")) else {
        return Ok(());
    };
    let now = &pretrain_record(recipe, pt)?["pretrain"];
    let diff = crate::util::settings_diff(was, now, &[]);
    ensure!(
        diff.is_empty(),
        "{} was pretrained with other settings than recipe '{}' asks for ({}): point paths.model elsewhere, or delete it to pretrain again",
        base.display(),
        recipe.name,
        diff.join(", ")
    );
    Ok(())
}

fn sample_grid(
    model: &Showo,
    layout: &Layout,
    tok: &TextTokenizer,
    recipe: &Recipe,
) -> Result<(Vec<u8>, usize)> {
    let metas = crate::eval::geneval::layout::load_metadata_jsonl(&recipe.eval.metadata)?;
    let prompts: Vec<String> = metas.iter().take(16).map(|m| m.prompt.clone()).collect();
    let text = layout.text_batch(tok, &prompts, model.device())?;
    let rows: Vec<usize> = (0..prompts.len()).collect();
    let seeds: Vec<u64> = rows
        .iter()
        .map(|&i| derive_seed(recipe.eval.seed, i as u64, 0))
        .collect();
    let out = generate::sample(
        model,
        layout,
        &text,
        &rows,
        &seeds,
        &recipe.sampler,
        &mut NoHook,
    )?;
    let images = GlyphTokenizer::new().decode(&out.codes)?;
    crate::world::grid(&images, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_pretrained_under_other_settings_is_not_reused() {
        let dir = std::env::temp_dir().join(format!("imgcot-base-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let recipe = Recipe::load(None).unwrap();
        let pt = recipe.pretrain.clone().unwrap();
        let state = |extra: serde_json::Value| {
            let s = ckpt::TrainerState {
                extra,
                ..Default::default()
            };
            std::fs::write(
                dir.join("trainer_state.json"),
                serde_json::to_string(&s).unwrap(),
            )
            .unwrap();
        };
        // No record (a base saved by an older build, or by hand): accepted.
        state(serde_json::Value::Null);
        check_base_matches(&recipe, &dir).unwrap();
        state(pretrain_record(&recipe, &pt).unwrap());
        check_base_matches(&recipe, &dir).unwrap();
        // Logging and saving intervals do not change the weights.
        let mut chatty = recipe.clone();
        chatty.pretrain.as_mut().unwrap().log_every = 1;
        check_base_matches(&chatty, &dir).unwrap();
        let mut other = recipe.clone();
        other.pretrain.as_mut().unwrap().lr = 0.001;
        let e = check_base_matches(&other, &dir).unwrap_err();
        assert!(
            format!("{e:#}").contains("pretrain.lr: 0.0005 → 0.001"),
            "{e:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
