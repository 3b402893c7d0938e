//! Not in the paper: the glyph world's stand-in for the pretrained SigLIP the paper's judges start
//! from. A scratch glyph judge's tower, shaped only by the yes/no bit and captions, stays blind for
//! longer than a CPU run lasts (README, "What is not done"). So before the fine-tune the tower alone
//! learns to name each 16-pixel cell's shape and color: two linear heads on its output features
//! (the layer the projector reads), dropped afterwards. The labels are the glyph world's
//! nearest-patch encoder's codes of the training images (exact on rendered and decoded glyph
//! images), so nothing but pixels goes in.
use crate::glyphs::world::{encode, Glyph, CELL, COLORS, IMAGE_SIZE, NUM_CELLS, SHAPES};
use crate::models::llava_ov::model::LlavaOnevision;
use crate::models::llava_ov::train::normalize_pixels;
use crate::models::llava_ov::weights::VISION_PREFIX;
use crate::train::logging::Logger;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::schedule::LrSchedule;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;
use tch::nn::Init;
use tch::{Kind, Tensor};

/// The `vision_pretrain:` section of a reward-ft stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionPretrain {
    /// Optimizer steps (linear warmup from 0 at the first step, then cosine to 0).
    pub steps: u64,
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Images per step, drawn with replacement from the stage's training records (an image asked
    /// about in several records is drawn that much more often).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
}

fn d_lr() -> f64 {
    1e-3
}
fn d_batch() -> usize {
    64
}

/// What the tower pretraining reached (also in reward-ft's report).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisionPretrainReport {
    pub steps: u64,
    pub final_loss: f64,
    /// Cell accuracy of the shape head (7 classes with "empty") on `heldout_images` (None: none).
    pub heldout_shape_acc: Option<f64>,
    /// Cell accuracy of the color head (7 classes with "empty") on `heldout_images`.
    pub heldout_color_acc: Option<f64>,
    pub heldout_images: usize,
    pub seconds: f64,
}

/// Per-cell labels of a uint8 [3, 128, 128] glyph image, row-major: (shape + 1, color + 1) of the
/// encoder's code, (0, 0) for an empty cell. Returns int64 [64, 2].
pub fn cell_labels(image: &Tensor) -> Result<Tensor> {
    let size = image.size();
    let side = IMAGE_SIZE as i64;
    ensure!(
        size == [3, side, side] && image.kind() == Kind::Uint8,
        "cell labels need a uint8 [3, {side}, {side}] image, found {:?} {:?}",
        image.kind(),
        size
    );
    let hwc = image.permute([1, 2, 0]).contiguous().flatten(0, -1);
    let bytes = Vec::<u8>::try_from(&hwc).map_err(|e| anyhow!("image bytes: {e}"))?;
    let codes = encode(&bytes)?;
    let mut out = Vec::with_capacity(2 * NUM_CELLS);
    for &c in &codes {
        match Glyph::from_code(c) {
            Some(g) => out.extend([g.shape as i64 + 1, g.color as i64 + 1]),
            None => out.extend([0, 0]),
        }
    }
    Ok(Tensor::from_slice(&out).view([NUM_CELLS as i64, 2]))
}

/// Images `idx` of `pool` stacked, with their [`cell_labels`] (cached in `labels` by index).
fn batch(
    pool: &[&Tensor],
    idx: &[usize],
    labels: &mut HashMap<usize, Tensor>,
) -> Result<(Tensor, Tensor)> {
    let mut px = Vec::with_capacity(idx.len());
    let mut tgt = Vec::with_capacity(idx.len());
    for &i in idx {
        px.push(pool[i].shallow_clone());
        let l = match labels.get(&i) {
            Some(l) => l.shallow_clone(),
            None => {
                let l =
                    cell_labels(pool[i]).with_context(|| format!("vision_pretrain image {i}"))?;
                labels.insert(i, l.shallow_clone());
                l
            }
        };
        tgt.push(l);
    }
    Ok((Tensor::stack(&px, 0), Tensor::stack(&tgt, 0)))
}

/// Trains `model`'s vision tower in place on `train` images (uint8 [3, S, S]); scores the heads on
/// the first (up to) 256 of `heldout`. Every tower weight trains, whatever the later fine-tune
/// freezes: call it before the fine-tune sets `requires_grad`.
pub fn pretrain_tower(
    model: &LlavaOnevision,
    train: &[&Tensor],
    heldout: &[&Tensor],
    cfg: &VisionPretrain,
    seed: u64,
    log: &mut Logger,
) -> Result<VisionPretrainReport> {
    let t0 = Instant::now();
    let vc = &model.config().vision;
    ensure!(
        vc.image_size == IMAGE_SIZE as i64 && vc.patch_size == CELL as i64,
        "vision_pretrain needs one patch per glyph cell (image_size {IMAGE_SIZE}, patch_size \
         {CELL}); this tower has image_size {} and patch_size {}",
        vc.image_size,
        vc.patch_size
    );
    ensure!(
        cfg.steps >= 1 && cfg.batch_size >= 1,
        "vision_pretrain: steps and batch_size must be ≥ 1"
    );
    ensure!(!train.is_empty(), "vision_pretrain: no training images");
    let dev = model.device();
    let tower = model
        .named_tensors()
        .into_iter()
        .filter(|(name, _)| name.starts_with(VISION_PREFIX))
        .map(|(name, t)| {
            let _ = t.set_requires_grad(true);
            (name, t)
        });
    let vs = crate::train::ckpt::var_store_of(dev, tower)?;
    let h = vc.hidden_size;
    let classes = [SHAPES.len() as i64 + 1, COLORS.len() as i64 + 1];
    let heads: Vec<(Tensor, Tensor)> = classes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let root = vs.root();
            let init = Init::Randn {
                mean: 0.0,
                stdev: (h as f64).powf(-0.5),
            };
            (
                root.var(&format!("cell_head{k}_weight"), &[n, h], init),
                root.zeros(&format!("cell_head{k}_bias"), &[n]),
            )
        })
        .collect();
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    let vars = opt.vars();
    let sched = LrSchedule::Cosine {
        warmup_steps: (cfg.steps / 10).clamp(1, 20),
        total_steps: cfg.steps,
        min_lr_ratio: 0.0,
    };
    // (loss, per-head accuracy) of a batch of images with their labels.
    let forward = |px: &Tensor, tgt: &Tensor| -> Result<(Tensor, [f64; 2])> {
        let f = model.vision_features(&normalize_pixels(px).to_device(dev))?;
        ensure!(
            f.size()[1] == NUM_CELLS as i64,
            "vision_pretrain: the tower gives {} tokens per image, not one per cell ({NUM_CELLS})",
            f.size()[1]
        );
        let tgt = tgt.to_device(dev);
        let mut loss = Tensor::zeros([], (Kind::Float, dev));
        let mut acc = [0.0; 2];
        for (k, (w, b)) in heads.iter().enumerate() {
            let logits = f.matmul(&w.tr()) + b;
            let t = tgt.select(2, k as i64);
            loss += logits
                .flatten(0, 1)
                .cross_entropy_for_logits(&t.flatten(0, 1));
            acc[k] = logits
                .argmax(-1, false)
                .eq_tensor(&t)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
        }
        Ok((loss, acc))
    };
    let mut rng = crate::glyphs::rng::seeded(seed, 0x7669_7370);
    let mut train_labels = HashMap::new();
    let mut last = f64::NAN;
    for step in 0..cfg.steps {
        let idx: Vec<usize> = (0..cfg.batch_size)
            .map(|_| crate::glyphs::rng::below(&mut rng, train.len()))
            .collect();
        let (px, tgt) = batch(train, &idx, &mut train_labels)?;
        let (loss, acc) = forward(&px, &tgt)?;
        opt.zero_grad();
        loss.backward();
        let gnorm = crate::train::grad::clip_grad_norm(&vars, 1.0);
        last = loss.double_value(&[]);
        if !last.is_finite() || !gnorm.is_finite() {
            bail!("vision_pretrain step {step}: non-finite loss {last} / grad norm {gnorm}");
        }
        opt.set_lr(sched.lr(cfg.lr, step));
        opt.step()?;
        log.scalar("vision_pretrain/loss", last, step + 1);
        if (step + 1) % 50 == 0 || step + 1 == cfg.steps {
            log.info(format!(
                "vision_pretrain step {}/{}: loss {last:.4}, cell accuracy shape {:.3} color {:.3}",
                step + 1,
                cfg.steps,
                acc[0],
                acc[1]
            ));
        }
    }
    let n_held = heldout.len().min(256);
    let mut right = [0.0; 2];
    for chunk in (0..n_held).collect::<Vec<_>>().chunks(64) {
        let (px, tgt) = batch(heldout, chunk, &mut HashMap::new())?;
        let (_, acc) = tch::no_grad(|| forward(&px, &tgt))?;
        for k in 0..2 {
            right[k] += acc[k] * chunk.len() as f64;
        }
    }
    let held_acc = |k: usize| (n_held > 0).then(|| right[k] / n_held as f64);
    let report = VisionPretrainReport {
        steps: cfg.steps,
        final_loss: last,
        heldout_shape_acc: held_acc(0),
        heldout_color_acc: held_acc(1),
        heldout_images: n_held,
        seconds: t0.elapsed().as_secs_f64(),
    };
    // The fine-tune after this reads tower gradients (LoRA routes W.grad into its factors).
    opt.zero_grad();
    let show = |a: Option<f64>| a.map(|a| format!("{a:.4}")).unwrap_or("-".into());
    log.info(format!(
        "vision_pretrain done in {:.0}s: held-out cell accuracy shape {} color {} ({n_held} images)",
        report.seconds,
        show(report.heldout_shape_acc),
        show(report.heldout_color_acc)
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glyphs::world::{render, Codes};

    #[test]
    fn cell_labels_split_each_code_into_shape_and_color() {
        let mut codes: Codes = [0; NUM_CELLS];
        let glyphs = [(0, 0, 0), (9, 5, 5), (63, 2, 3), (20, 4, 1)];
        for &(cell, shape, color) in &glyphs {
            codes[cell] = Glyph { shape, color }.code();
        }
        let img = Tensor::from_slice(&render(&codes))
            .view([IMAGE_SIZE as i64, IMAGE_SIZE as i64, 3])
            .permute([2, 0, 1]);
        let l = cell_labels(&img).unwrap();
        assert_eq!(l.size(), [NUM_CELLS as i64, 2]);
        for cell in 0..NUM_CELLS {
            let want = glyphs
                .iter()
                .find(|g| g.0 == cell)
                .map(|&(_, s, c)| [s as i64 + 1, c as i64 + 1])
                .unwrap_or([0, 0]);
            let got = [
                l.int64_value(&[cell as i64, 0]),
                l.int64_value(&[cell as i64, 1]),
            ];
            assert_eq!(got, want, "cell {cell}");
        }
        assert!(cell_labels(&img.to_kind(Kind::Float)).is_err());
        assert!(cell_labels(&img.narrow(1, 0, 64)).is_err());
    }
}
