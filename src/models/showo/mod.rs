//! Show-o (Xie et al. 2024): a Phi-1.5 transformer over text and image tokens with omni-attention,
//! generating 256 (or 1024) MAGVIT-v2 codes by MaskGIT decoding.
//!
//! Key characteristics (spec-showo.md):
//! - Phi-1.5 backbone, 24 layers, hidden 2048, 32 heads; per-head q/k LayerNorm after the split;
//!   partial rotary (32 of 64 dims, rotate-half) at positions `arange(L)` including left pads;
//!   parallel attention + MLP behind one LayerNorm; `gelu_new`; final LayerNorm; `lm_head` with bias.
//! - Vocabulary 58498 = Phi's 50295 + [PAD] + nine specials + 8192 image codes + [MASK].
//! - Checkpoint: `config.json` + `pytorch_model.safetensors` (or `.bin`), keys `showo.model.…` and `showo.lm_head.…`.
//!
//! The text prefix never attends to image tokens, so its keys/values are the same at every MaskGIT
//! step: [`Showo::prefix`] computes them once and [`Showo::image_hidden`] reuses them.
pub mod config;
pub mod layout;
pub mod phi;

pub use config::{Config, Specials};
pub use layout::{additive_mask, omni_attention_mask, Layout, TextTokenizer};

/// A tiny Show-o for unit tests: `config_json` with weights drawn N(0, 0.3²) after
/// `manual_seed(seed)` — larger than the init, so predictions are not near-uniform.
#[cfg(test)]
pub(crate) fn tiny_random(seed: i64, config_json: &str) -> (Showo, Layout) {
    tch::manual_seed(seed);
    let cfg = Config::from_json(config_json).unwrap();
    let model = Showo::new(cfg, tch::Device::Cpu, tch::Kind::Float).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in model.vs.variables() {
            let r = tch::Tensor::randn_like(&v) * 0.3;
            v.copy_(&r);
        }
    });
    let layout = Layout::with_ids(&model.cfg, 0, 0);
    (model, layout)
}

/// Test-only: Σ |grad| over the model's trainable variables (non-zero iff a gradient reached it).
#[cfg(test)]
pub(crate) fn grad_abs_sum(model: &Showo) -> f64 {
    model
        .vs
        .trainable_variables()
        .iter()
        .map(|v| v.grad().abs().sum(tch::Kind::Float).double_value(&[]))
        .sum()
}

/// The config of the smallest test model (one layer, 12 codes, 16 image tokens).
#[cfg(test)]
pub(crate) const TINY_1L: &str = r#"{"llm_vocab_size":20,"codebook_size":12,"num_vq_tokens":16,"vocab_size":43,
               "hidden_size":32,"intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":1,"max_text_len":4}"#;

use crate::nn::rotary::Rotary;
use crate::nn::weights;
use anyhow::{Context, Result};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

pub const WEIGHT_FILES: [&str; 2] = ["pytorch_model.safetensors", "pytorch_model.bin"];

/// Cached per-layer keys/values of the text prefix.
#[derive(Debug)]
pub struct PrefixCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Non-pad keys of the prefix, bool [B, T].
    pub keep: Tensor,
}

impl PrefixCache {
    /// Rows `idx` (int64 [R]) of the cache, e.g. to expand prompts to candidates or drop pruned paths.
    pub fn select(&self, idx: &Tensor) -> PrefixCache {
        PrefixCache {
            k: self.k.iter().map(|t| t.index_select(0, idx)).collect(),
            v: self.v.iter().map(|t| t.index_select(0, idx)).collect(),
            keep: self.keep.index_select(0, idx),
        }
    }

    /// Concatenates caches along the batch dimension.
    pub fn cat(parts: &[&PrefixCache]) -> PrefixCache {
        let n = parts[0].k.len();
        PrefixCache {
            k: (0..n)
                .map(|i| Tensor::cat(&parts.iter().map(|p| &p.k[i]).collect::<Vec<_>>(), 0))
                .collect(),
            v: (0..n)
                .map(|i| Tensor::cat(&parts.iter().map(|p| &p.v[i]).collect::<Vec<_>>(), 0))
                .collect(),
            keep: Tensor::cat(&parts.iter().map(|p| &p.keep).collect::<Vec<_>>(), 0),
        }
    }

    pub fn len(&self) -> i64 {
        self.keep.size()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Showo {
    pub cfg: Config,
    pub vs: nn::VarStore,
    embed_tokens: nn::Embedding,
    layers: Vec<phi::PhiLayer>,
    final_layernorm: nn::LayerNorm,
    lm_head: nn::Linear,
    rotary: Rotary,
}

impl Showo {
    /// A freshly initialised model (normal(0, 0.02) weights, as Phi's `initializer_range`).
    pub fn new(cfg: Config, device: Device, kind: Kind) -> Result<Self> {
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root() / "showo";
        let m = &root / "model";
        let embed_tokens = nn::embedding(
            &m / "embed_tokens",
            cfg.vocab_size,
            cfg.hidden_size,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            },
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| phi::PhiLayer::new(&m / "layers" / i, &cfg))
            .collect();
        let final_layernorm =
            phi::layer_norm(&m / "final_layernorm", cfg.hidden_size, cfg.layer_norm_eps);
        let lm_head = nn::linear(
            &root / "lm_head",
            cfg.hidden_size,
            cfg.vocab_size,
            nn::LinearConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        let rotary = Rotary::new(cfg.rotary_dim(), cfg.rope_theta, device);
        let mut model = Self {
            cfg,
            vs,
            embed_tokens,
            layers,
            final_layernorm,
            lm_head,
            rotary,
        };
        model.set_kind(kind);
        Ok(model)
    }

    /// Loads a Show-o checkpoint directory (`config.json` + `pytorch_model.safetensors` or `.bin`) strictly.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg = Config::from_file(&dir.join("config.json"))?;
        let model = Self::new(cfg, device, kind)?;
        let file = weights::find_weights(dir, &WEIGHT_FILES)?;
        let tensors = weights::read_state_dict(&file)?;
        weights::load_strict(&model.vs, tensors, &file, &[])?;
        Ok(model)
    }

    pub fn set_kind(&mut self, kind: Kind) {
        match kind {
            Kind::BFloat16 => self.vs.bfloat16(),
            Kind::Half => self.vs.half(),
            _ => self.vs.float(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.embed_tokens.ws.kind()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Final hidden states (after `final_layernorm`) of a full sequence with a bool mask [B|1, 1, L, L].
    pub fn hidden(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let l = ids.size()[1];
        let pos = Tensor::arange(l, (Kind::Int64, ids.device()));
        let (cos, sin) = self.rotary.tables(&pos);
        let mut xs = self.embed_tokens.forward(ids);
        for layer in &self.layers {
            xs = layer.forward(&xs, &self.rotary, &cos, &sin, None, mask).0;
        }
        self.final_layernorm.forward(&xs)
    }

    /// Full-vocabulary fp32 logits [B, L, V] (as Show-o's `logits.float()`).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        self.lm_head
            .forward(&self.hidden(ids, mask))
            .to_kind(Kind::Float)
    }

    /// fp32 logits restricted to vocabulary columns `start..start+len` (e.g. the image codes):
    /// equal to slicing the full logits, at a fraction of the lm_head cost.
    pub fn logits_cols(&self, hidden: &Tensor, start: i64, len: i64) -> Tensor {
        let w = self.lm_head.ws.narrow(0, start, len);
        let b = self.lm_head.bs.as_ref().map(|b| b.narrow(0, start, len));
        hidden.linear(&w, b.as_ref()).to_kind(Kind::Float)
    }

    /// Runs the text prefix `text` [B, T] once and keeps every layer's keys/values.
    pub fn prefix(&self, text: &Tensor, sp: &Specials) -> PrefixCache {
        let t = text.size()[1];
        let pos = Tensor::arange(t, (Kind::Int64, text.device()));
        let (cos, sin) = self.rotary.tables(&pos);
        let mask = omni_attention_mask(text, sp);
        let mut xs = self.embed_tokens.forward(text);
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        for layer in &self.layers {
            let (o, k, v) = layer.forward(&xs, &self.rotary, &cos, &sin, None, &mask);
            xs = o;
            ks.push(k);
            vs.push(v);
        }
        PrefixCache {
            k: ks,
            v: vs,
            keep: text.ne(sp.pad),
        }
    }

    /// Final hidden states of the image segment `seg` [B, S] (soi, image ids, eoi) placed right
    /// after a cached prefix: every image-segment query sees all non-pad keys (omni-attention).
    pub fn image_hidden(&self, seg: &Tensor, cache: &PrefixCache) -> Tensor {
        let (b, s) = seg.size2().expect("[B, S]");
        let t = cache.len();
        let pos = Tensor::arange_start(t, t + s, (Kind::Int64, seg.device()));
        let (cos, sin) = self.rotary.tables(&pos);
        let seg_keep = Tensor::ones([b, s], (Kind::Bool, seg.device()));
        let mask = Tensor::cat(&[&cache.keep, &seg_keep], 1).view([b, 1, 1, t + s]);
        let mut xs = self.embed_tokens.forward(seg);
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer
                .forward(
                    &xs,
                    &self.rotary,
                    &cos,
                    &sin,
                    Some((&cache.k[i], &cache.v[i])),
                    &mask,
                )
                .0;
        }
        self.final_layernorm.forward(&xs)
    }

    /// Writes `config.json` and `pytorch_model.safetensors` (fp32, `{"format":"pt"}`) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg = serde_json::to_string_pretty(&self.cfg)?;
        crate::util::atomic_write(&dir.join("config.json"), cfg.as_bytes())?;
        let tensors = weights::named_tensors(&self.vs, Some(Kind::Float));
        weights::write_safetensors(&dir.join(WEIGHT_FILES[0]), &tensors)
    }

    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}
