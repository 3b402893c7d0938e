//! `LlavaQwenForCausalLM`: SigLIP tower → mlp2x_gelu projector → visual tokens (+ `image_newline`)
//! spliced into the Qwen2 input embeddings at each −200 placeholder (llava_arch.py:263-560).
use super::config::LlavaOvConfig;
use super::image_processing::{py_floordiv, select_best_resolution, unpad_bounds};
use super::projector::Projector;
use super::prompt::IMAGE_TOKEN_INDEX;
use super::qwen2::Qwen2ForCausalLM;
use super::siglip::SiglipVisionTower;
use super::weights::{Weights, VISION_PREFIX};
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct LlavaOnevision {
    cfg: LlavaOvConfig,
    vision: SiglipVisionTower,
    projector: Projector,
    image_newline: Option<Tensor>,
    lm: Qwen2ForCausalLM,
}

impl LlavaOnevision {
    /// Loads `dir/config.json` and the (sharded) safetensors of `dir`, strictly. `vocab_keep`: rows of
    /// `embed_tokens`/`lm_head` kept (the seed: `len(tokenizer)` = 151646).
    pub fn load(dir: &Path, device: Device, kind: Kind, vocab_keep: Option<i64>) -> Result<Self> {
        let cfg = LlavaOvConfig::from_file(&dir.join("config.json"))?;
        let mut w = Weights::from_dir(dir, device, kind)?;
        let m = Self::from_weights(cfg, &mut w, vocab_keep)?;
        w.finish()
            .with_context(|| format!("loading {}", dir.display()))?;
        Ok(m)
    }

    /// Builds the model from `w` (original key names); call `w.finish()` afterwards.
    pub fn from_weights(
        cfg: LlavaOvConfig,
        w: &mut Weights,
        vocab_keep: Option<i64>,
    ) -> Result<Self> {
        let vision = SiglipVisionTower::load(w, VISION_PREFIX, &cfg.vision, cfg.vision_layers_used);
        let projector = Projector::load(
            w,
            "model.mm_projector",
            cfg.vision.hidden_size,
            cfg.text.hidden_size,
        );
        let image_newline = cfg
            .has_image_newline
            .then(|| w.get("model.image_newline", &[cfg.text.hidden_size]));
        let lm = Qwen2ForCausalLM::load(w, &cfg.text, vocab_keep)?;
        Ok(Self {
            cfg,
            vision,
            projector,
            image_newline,
            lm,
        })
    }

    pub fn config(&self) -> &LlavaOvConfig {
        &self.cfg
    }
    pub fn language_model(&self) -> &Qwen2ForCausalLM {
        &self.lm
    }
    pub fn device(&self) -> Device {
        self.lm.device()
    }

    /// Every weight under its original LLaVA-NeXT name (shallow clones sharing storage with the
    /// model: setting `requires_grad` or updating them in place acts on the model), for training
    /// and saving.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.vision.named_tensors(VISION_PREFIX);
        out.extend(self.projector.named_tensors("model.mm_projector"));
        if let Some(nl) = &self.image_newline {
            out.push(("model.image_newline".into(), nl.shallow_clone()));
        }
        out.extend(self.lm.named_tensors());
        out
    }

    /// Crops [N, 3, S, S] → the tower's output of the selected layer [N, P, vision hidden], before
    /// the projector.
    pub fn vision_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let f = self.vision.forward(pixels)?;
        Ok(if self.cfg.drop_first_vision_token {
            let p = f.size()[1];
            f.narrow(1, 1, p - 1)
        } else {
            f
        })
    }

    /// Crops [N, 3, S, S] → projected features [N, P, hidden] (tower output of the selected layer).
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.projector.forward(&self.vision_features(pixels)?))
    }

    fn newline(&self) -> Result<&Tensor> {
        self.image_newline
            .as_ref()
            .context("this config has no image_newline (mm_patch_merge_type without unpad)")
    }

    /// "pad" mode (seed inference): one crop per image → `[P + 1, hidden]` per image
    /// (features, then `image_newline`; llava_arch.py:410-416).
    pub fn encode_pad(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        let f = self.image_features(pixels)?;
        let nl = self.newline()?.unsqueeze(0);
        Ok((0..f.size()[0])
            .map(|i| Tensor::cat(&[f.get(i), nl.shallow_clone()], 0))
            .collect())
    }

    /// `anyres_max_N` + `spatial_unpad` (llava_arch.py:353-409) for one image of PIL size (W, H):
    /// `crops` = [1 + rows·cols, 3, S, S] from [`super::image_processing::preprocess_anyres`].
    pub fn encode_anyres(
        &self,
        crops: &Tensor,
        image_size: (i64, i64),
        max_num_patches: i64,
    ) -> Result<Tensor> {
        let f = self.image_features(crops)?;
        let (n, p, c) = f.size3()?;
        let g = self.cfg.vision.grid();
        ensure!(p == g * g, "anyres: {p} features per crop, expected {g}²");
        let s = self.cfg.vision.image_size;
        let (bw, bh) = select_best_resolution(image_size, &self.cfg.image_grid_pinpoints);
        let (cols, rows) = (bw / s, bh / s);
        ensure!(
            n == 1 + rows * cols,
            "anyres: {n} crops for a {cols}×{rows} grid (+1 base) of image {image_size:?}"
        );
        let base = f.get(0);
        // [rows, cols, g, g, C] → [C, rows·g, cols·g]
        let grid = f
            .narrow(0, 1, n - 1)
            .view([rows, cols, g, g, c])
            .permute([4, 0, 2, 1, 3])
            .contiguous();
        let grid = grid.view([c, rows * g, cols * g]);
        let (t, b, l, r) = unpad_bounds((rows * g, cols * g), image_size);
        let mut grid = grid.narrow(1, t, b - t).narrow(2, l, r - l);
        let (h, w) = (b - t, r - l);
        let times = ((h * w) as f64 / (max_num_patches * g * g) as f64).sqrt();
        if times > 1.1 {
            let (nh, nw) = (
                py_floordiv(h as f64, times) as i64,
                py_floordiv(w as f64, times) as i64,
            );
            grid = grid
                .unsqueeze(0)
                .upsample_bilinear2d([nh, nw], false, None, None)
                .squeeze_dim(0);
        }
        let (_, h2, _) = grid.size3()?;
        let nl = self
            .newline()?
            .view([c, 1, 1])
            .expand([c, h2, 1], false)
            .to_kind(grid.kind());
        let grid = Tensor::cat(&[grid, nl], 2).flatten(1, 2).transpose(0, 1);
        Ok(Tensor::cat(&[base, grid], 0))
    }

    /// Input embeddings [L, hidden] of one sequence: text ids embedded, the k-th −200 replaced by
    /// `images[k]` (llava_arch.py:444-500).
    pub fn splice(&self, ids: &[i64], images: &[Tensor]) -> Result<Tensor> {
        let n_img = ids.iter().filter(|&&t| t == IMAGE_TOKEN_INDEX).count();
        ensure!(
            n_img == images.len(),
            "{n_img} image placeholders but {} images",
            images.len()
        );
        let vocab = self.lm.vocab_size();
        if let Some(bad) = ids
            .iter()
            .find(|&&t| t != IMAGE_TOKEN_INDEX && !(0..vocab).contains(&t))
        {
            bail!("token id {bad} outside the vocabulary 0..{vocab}");
        }
        let mut parts = Vec::new();
        let mut imgs = images.iter();
        for (k, chunk) in ids.split(|&t| t == IMAGE_TOKEN_INDEX).enumerate() {
            if k > 0 {
                parts.push(
                    imgs.next()
                        .expect("counted")
                        .to_device(self.device())
                        .to_kind(self.lm.kind()),
                );
            }
            if !chunk.is_empty() {
                parts.push(self.lm.embed(&Tensor::from_slice(chunk)));
            }
        }
        ensure!(!parts.is_empty(), "empty sequence");
        Ok(Tensor::cat(&parts, 0))
    }

    /// Spliced sequences (each [L_i, hidden]) → fp32 logits [B, vocab] at each last position.
    /// Right-padded with zeros; causal attention keeps padding invisible to real tokens.
    pub fn last_logits(&self, seqs: &[Tensor]) -> Result<Tensor> {
        ensure!(!seqs.is_empty(), "no sequences");
        let lens: Vec<i64> = seqs.iter().map(|s| s.size()[0]).collect();
        let max = *lens.iter().max().expect("non-empty");
        let padded: Vec<Tensor> = seqs
            .iter()
            .map(|s| {
                if s.size()[0] == max {
                    s.shallow_clone()
                } else {
                    s.constant_pad_nd([0, 0, 0, max - s.size()[0]])
                }
            })
            .collect();
        let hidden = self.lm.forward_hidden(&Tensor::stack(&padded, 0))?;
        let idx = Tensor::from_slice(&lens.iter().map(|l| l - 1).collect::<Vec<_>>())
            .to_device(hidden.device());
        let b = Tensor::arange(seqs.len() as i64, (Kind::Int64, hidden.device()));
        let last = hidden.index(&[Some(b), Some(idx)]);
        Ok(self.lm.lm_logits(&last))
    }

    /// fp32 logits [L, vocab] of every position of one spliced sequence.
    pub fn all_logits(&self, seq: &Tensor) -> Result<Tensor> {
        Ok(self
            .lm
            .lm_logits(&self.lm.forward_hidden(&seq.unsqueeze(0))?)
            .squeeze_dim(0))
    }
}
