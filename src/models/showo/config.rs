//! Show-o's `config.json` (its own keys) plus the Phi-1.5 backbone hyper-parameters. Any HF
//! `PhiConfig` field at the top level overrides the Phi-1.5 default, so small test models and the
//! 512² variant load through the same code.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

fn d_vocab() -> i64 {
    58498
}
fn d_llm_vocab() -> i64 {
    50295
}
fn d_codebook() -> i64 {
    8192
}
fn d_vq_tokens() -> i64 {
    256
}
fn d_hidden() -> i64 {
    2048
}
fn d_inter() -> i64 {
    8192
}
fn d_layers() -> i64 {
    24
}
fn d_heads() -> i64 {
    32
}
fn d_prf() -> f64 {
    0.5
}
fn d_theta() -> f64 {
    10000.0
}
fn d_eps() -> f64 {
    1e-5
}
fn d_maxpos() -> i64 {
    2048
}
fn d_act() -> String {
    "gelu_new".into()
}
fn d_text_len() -> i64 {
    128
}

/// Keys that Show-o's or HF's config files carry and that change nothing here.
const IGNORED_KEYS: &[&str] = &[
    "_class_name",
    "_diffusers_version",
    "llm_model_path",
    "load_from_showo",
    "model_type",
    "architectures",
    "torch_dtype",
    "transformers_version",
    "resid_pdrop",
    "embd_pdrop",
    "attention_dropout",
    "initializer_range",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "rope_scaling",
    "tie_word_embeddings",
    "num_key_value_heads",
    "qk_layernorm",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: i64,
    #[serde(default = "d_llm_vocab")]
    pub llm_vocab_size: i64,
    #[serde(default = "d_codebook")]
    pub codebook_size: i64,
    #[serde(default = "d_vq_tokens")]
    pub num_vq_tokens: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_token_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w_clip_vit: Option<bool>,
    #[serde(default = "d_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_inter")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_prf")]
    pub partial_rotary_factor: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_maxpos")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    /// Text tokens before `<|soi|>` minus one (Show-o's `max_seq_length`, 128). Not in Show-o's
    /// config.json (it lives in its training YAML); small models record it here.
    #[serde(default = "d_text_len")]
    pub max_text_len: i64,
    /// Metadata keys we keep so that a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Config = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        for k in self.extra.keys() {
            if !IGNORED_KEYS.contains(&k.as_str()) {
                bail!("unknown config key '{k}'");
            }
        }
        if self.w_clip_vit == Some(true) {
            bail!("w_clip_vit=true (the CLIP-ViT understanding variant) is not supported for t2i");
        }
        if let Some(m) = self.mask_token_id {
            if m != self.vocab_size - 1 {
                bail!(
                    "mask_token_id {m} must be vocab_size - 1 = {}",
                    self.vocab_size - 1
                );
            }
        }
        if self.vocab_size != self.llm_vocab_size + 10 + self.codebook_size + 1 {
            bail!(
                "vocab_size {} must equal llm_vocab_size ({}) + 10 specials + codebook_size ({}) + 1 mask",
                self.vocab_size,
                self.llm_vocab_size,
                self.codebook_size
            );
        }
        crate::util::ensure_positive(
            "",
            &[
                ("hidden_size", self.hidden_size),
                ("num_attention_heads", self.num_attention_heads),
                ("num_hidden_layers", self.num_hidden_layers),
                ("intermediate_size", self.intermediate_size),
                ("num_vq_tokens", self.num_vq_tokens),
                ("codebook_size", self.codebook_size),
                ("max_text_len", self.max_text_len),
            ],
        )?;
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        let g = (self.num_vq_tokens as f64).sqrt() as i64;
        if g * g != self.num_vq_tokens {
            bail!("num_vq_tokens {} is not a square grid", self.num_vq_tokens);
        }
        if self.rotary_dim() % 2 != 0
            || self.rotary_dim() <= 0
            || self.rotary_dim() > self.head_dim()
        {
            bail!(
                "rotary dim {} must be even, positive and at most head_dim {} (partial_rotary_factor {})",
                self.rotary_dim(),
                self.head_dim(),
                self.partial_rotary_factor
            );
        }
        let _ = crate::nn::activation(
            &self.hidden_act,
            &tch::Tensor::zeros([1], tch::kind::FLOAT_CPU),
        )?;
        Ok(())
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
    pub fn rotary_dim(&self) -> i64 {
        (self.partial_rotary_factor * self.head_dim() as f64) as i64
    }
    pub fn mask_id(&self) -> i64 {
        self.vocab_size - 1
    }
    pub fn specials(&self) -> Specials {
        Specials::new(self.llm_vocab_size)
    }
    /// Length of the text part of the layout: `max_text_len + 1` (129 for Show-o).
    pub fn text_len(&self) -> i64 {
        self.max_text_len + 1
    }
    /// Full t2i sequence length: text, soi, image tokens, eoi.
    pub fn seq_len(&self) -> i64 {
        self.text_len() + self.num_vq_tokens + 2
    }
}

/// Show-o's special ids, all derived from `llm_vocab_size` (spec-showo.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: i64,
    pub soi: i64,
    pub eoi: i64,
    pub sov: i64,
    pub eov: i64,
    pub t2i: i64,
    pub mmu: i64,
    pub t2v: i64,
    pub v2v: i64,
    pub lvg: i64,
    /// id of image code 0.
    pub image_offset: i64,
}

impl Specials {
    pub fn new(llm_vocab_size: i64) -> Self {
        let b = llm_vocab_size;
        Self {
            pad: b,
            soi: b + 1,
            eoi: b + 2,
            sov: b + 3,
            eov: b + 4,
            t2i: b + 5,
            mmu: b + 6,
            t2v: b + 7,
            v2v: b + 8,
            lvg: b + 9,
            image_offset: b + 10,
        }
    }
}

/// The special tokens' names in id order (for tokenizer files).
pub const SPECIAL_NAMES: [&str; 10] = [
    "[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>",
    "<|v2v|>", "<|lvg|>",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_show_o() {
        let c = Config::from_json(
            r#"{"_class_name":"Showo","_diffusers_version":"0.30.1","codebook_size":8192,
            "llm_model_path":"microsoft/phi-1_5","llm_vocab_size":50295,"mask_token_id":58497,"num_vq_tokens":256,
            "vocab_size":58498,"w_clip_vit":false}"#,
        )
        .unwrap();
        assert_eq!(c.hidden_size, 2048);
        assert_eq!(c.rotary_dim(), 32);
        assert_eq!(c.seq_len(), 387);
        let s = c.specials();
        assert_eq!(
            (s.pad, s.soi, s.eoi, s.t2i, s.image_offset),
            (50295, 50296, 50297, 50300, 50305)
        );
        assert_eq!(c.mask_id(), 58497);
    }

    #[test]
    fn bad_keys_are_errors() {
        let e = Config::from_json(r#"{"hidden_size":"big"}"#).unwrap_err();
        assert!(
            format!("{e:#}").contains("hidden_size") || format!("{e:#}").contains("invalid type"),
            "{e:#}"
        );
        let e = Config::from_json(r#"{"hiden_size":64}"#).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown config key 'hiden_size'"),
            "{e:#}"
        );
        let e = Config::from_json(r#"{"mask_token_id":5}"#).unwrap_err();
        assert!(format!("{e:#}").contains("mask_token_id"), "{e:#}");
    }

    #[test]
    fn sizes_that_would_panic_later_are_errors() {
        for (json, what) in [
            (r#"{"num_attention_heads":0}"#, "num_attention_heads 0"),
            (r#"{"max_text_len":-1}"#, "max_text_len -1"),
            (r#"{"partial_rotary_factor":2.0}"#, "at most head_dim"),
        ] {
            let e = Config::from_json(json).unwrap_err();
            assert!(format!("{e:#}").contains(what), "{json}: {e:#}");
        }
    }
}
