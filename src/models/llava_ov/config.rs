//! Configs of LLaVA-OneVision and its parts, with the checkpoints' own field names.
//!
//! Two `config.json` layouts are read:
//! - original LLaVA-NeXT (`lmms-lab/llava-onevision-qwen2-7b-ov`, `model_type: "llava"`): the Qwen2
//!   fields sit at the top level next to the `mm_*` fields; the vision tower config is not stored (the
//!   seed hard-codes SigLIP-so400m, spec-judges §1.1), so it defaults to so400m unless a
//!   `vision_config` object is present;
//! - HF (`llava-hf/...-hf`, `model_type: "llava_onevision"`): `text_config` + `vision_config`.
use super::prompt::PromptLayout;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_silu() -> String {
    "silu".into()
}
fn default_max_pos() -> i64 {
    32_768
}

/// `rope_parameters` of transformers v5 configs.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// Qwen2 text model (HF `Qwen2Config` field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// transformers ≥ 5 stores θ here instead of `rope_theta`.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Only `null` is supported (LLaVA-Qwen forces it to `None`, llava_qwen.py:53).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub head_dim: Option<i64>,
}

impl Qwen2Config {
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// θ of the rotary embedding, from `rope_parameters` (v5) or `rope_theta` (v4 / LLaVA).
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|r| r.rope_theta)
            .unwrap_or(self.rope_theta)
    }
    pub fn validate(&self) -> Result<()> {
        crate::util::ensure_positive(
            "qwen2: ",
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.num_key_value_heads),
                ("head_dim", self.head_dim.unwrap_or(1)),
            ],
        )?;
        if self.hidden_act != "silu" {
            bail!(
                "qwen2: hidden_act '{}' is not supported (expected silu)",
                self.hidden_act
            );
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            bail!(
                "qwen2: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.head_dim() % 2 != 0 {
            bail!("qwen2: head_dim {} must be even for RoPE", self.head_dim());
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                bail!("qwen2: rope_scaling {s} is not supported (only null)");
            }
        }
        if let Some(rp) = &self.rope_parameters {
            if let Some(t) = &rp.rope_type {
                if t != "default" {
                    bail!("qwen2: rope_type '{t}' is not supported (only default)");
                }
            }
        }
        Ok(())
    }
}

fn so400m_hidden() -> i64 {
    1152
}
fn so400m_intermediate() -> i64 {
    4304
}
fn so400m_layers() -> i64 {
    27
}
fn so400m_heads() -> i64 {
    16
}
fn three() -> i64 {
    3
}
fn so400m_image() -> i64 {
    384
}
fn so400m_patch() -> i64 {
    14
}
fn ln_eps() -> f64 {
    1e-6
}
fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}

/// SigLIP vision tower (HF `SiglipVisionConfig` field names). Defaults = so400m-patch14-384, the values
/// the seed hard-codes (siglip_encoder.py:75-89).
#[derive(Debug, Clone, Deserialize)]
pub struct SiglipVisionConfig {
    #[serde(default = "so400m_hidden")]
    pub hidden_size: i64,
    #[serde(default = "so400m_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "so400m_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "so400m_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "three")]
    pub num_channels: i64,
    #[serde(default = "so400m_image")]
    pub image_size: i64,
    #[serde(default = "so400m_patch")]
    pub patch_size: i64,
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu_tanh")]
    pub hidden_act: String,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl SiglipVisionConfig {
    /// Patches per side (384/14 → 27; the last pixels are dropped by the valid convolution).
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> i64 {
        self.grid() * self.grid()
    }
    pub fn validate(&self) -> Result<()> {
        crate::util::ensure_positive(
            "siglip: ",
            &[
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("num_channels", self.num_channels),
                ("image_size", self.image_size),
                ("patch_size", self.patch_size),
            ],
        )?;
        if self.hidden_act != "gelu_pytorch_tanh" {
            bail!(
                "siglip: hidden_act '{}' is not supported (expected gelu_pytorch_tanh)",
                self.hidden_act
            );
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "siglip: hidden_size {} not divisible by heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Ok(())
    }
}

/// How images become crops and visual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AspectMode {
    /// Seed inference (`image_aspect_ratio="pad"`): expand2square, one crop, features + 1 newline.
    Pad,
    /// Training (`anyres_max_N` + `spatial_unpad`): base + grid crops, unpad, pool when > N·grid².
    AnyresMax(i64),
}

impl AspectMode {
    pub fn parse(s: &str) -> Result<Self> {
        if s == "pad" {
            return Ok(Self::Pad);
        }
        if let Some(n) = s.strip_prefix("anyres_max_") {
            let n: i64 = n
                .parse()
                .with_context(|| format!("bad image_aspect_ratio '{s}'"))?;
            return Ok(Self::AnyresMax(n));
        }
        bail!("image_aspect_ratio '{s}' is not supported (expected pad or anyres_max_N)")
    }
}

/// Resolved LLaVA-OneVision config, whichever layout it came from.
#[derive(Debug, Clone)]
pub struct LlavaOvConfig {
    pub text: Qwen2Config,
    pub vision: SiglipVisionConfig,
    /// Number of SigLIP encoder layers actually run: `num_hidden_layers + 1 + feature_layer`
    /// (so400m: 27 + 1 − 2 = 26, the seed's `layers[-1:]` deletion; HF: 26 + 1 − 1 = 26).
    pub vision_layers_used: i64,
    /// HF `vision_feature_select_strategy == "default"` drops the first token (CLS); "full" keeps all.
    pub drop_first_vision_token: bool,
    /// `image_grid_pinpoints` as stored: original = (width, height), HF = (height, width); the grid is
    /// symmetric in practice (all 384·i × 384·j).
    pub image_grid_pinpoints: Vec<(i64, i64)>,
    /// The checkpoint's training-time aspect mode (the seed overrides it to `pad` at inference).
    pub image_aspect_ratio: AspectMode,
    /// `image_newline` is used (`"unpad" in mm_patch_merge_type`, always true for OneVision).
    pub has_image_newline: bool,
    /// How the judge is asked (`imgcot_prompt_layout`, ours; absent = the paper's chat template).
    pub prompt_layout: PromptLayout,
}

#[derive(Deserialize)]
struct OriginalFields {
    #[serde(default)]
    imgcot_prompt_layout: PromptLayout,
    #[serde(default)]
    mm_hidden_size: Option<i64>,
    #[serde(default)]
    mm_projector_type: Option<String>,
    #[serde(default)]
    mm_vision_select_layer: Option<i64>,
    #[serde(default)]
    mm_vision_select_feature: Option<String>,
    #[serde(default)]
    mm_patch_merge_type: Option<String>,
    #[serde(default)]
    image_aspect_ratio: Option<String>,
    #[serde(default)]
    image_grid_pinpoints: Option<serde_json::Value>,
    #[serde(default)]
    vision_config: Option<SiglipVisionConfig>,
}

#[derive(Deserialize)]
struct HfFields {
    #[serde(default)]
    imgcot_prompt_layout: PromptLayout,
    text_config: Qwen2Config,
    vision_config: SiglipVisionConfig,
    #[serde(default)]
    vision_feature_layer: Option<serde_json::Value>,
    #[serde(default)]
    vision_feature_select_strategy: Option<String>,
    #[serde(default)]
    vision_aspect_ratio: Option<String>,
    #[serde(default)]
    image_grid_pinpoints: Option<serde_json::Value>,
    #[serde(default)]
    projector_hidden_act: Option<String>,
    #[serde(default)]
    multimodal_projector_bias: Option<bool>,
}

fn parse_pinpoints(v: &Option<serde_json::Value>, patch: i64) -> Result<Vec<(i64, i64)>> {
    let Some(v) = v else {
        return Ok((1..=6)
            .flat_map(|i| (1..=6).map(move |j| (patch * i, patch * j)))
            .collect());
    };
    if let Some(s) = v.as_str() {
        // "(1x1),...,(6x6)" → all (patch·i, patch·j) in the range (train.py:1582-1597).
        let nums: Vec<i64> = s
            .split(|c: char| !c.is_ascii_digit())
            .filter(|t| !t.is_empty())
            .map(|t| t.parse().unwrap_or(0))
            .collect();
        if nums.len() != 4 {
            bail!("image_grid_pinpoints '{s}': expected the form (AxB),...,(CxD)");
        }
        let (r0, c0, r1, c1) = (nums[0], nums[1], nums[2], nums[3]);
        return Ok((r0..=r1)
            .flat_map(|i| (c0..=c1).map(move |j| (patch * i, patch * j)))
            .collect());
    }
    let list: Vec<[i64; 2]> = serde_json::from_value(v.clone()).context("image_grid_pinpoints")?;
    Ok(list.into_iter().map(|[a, b]| (a, b)).collect())
}

impl LlavaOvConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let cfg = if v.get("text_config").is_some() {
            Self::from_hf(serde_json::from_value(v)?)?
        } else {
            let text: Qwen2Config = serde_json::from_value(v.clone())?;
            Self::from_original(text, serde_json::from_value(v)?)?
        };
        cfg.text.validate()?;
        cfg.vision.validate()?;
        if cfg.vision_layers_used < 1 || cfg.vision_layers_used > cfg.vision.num_hidden_layers {
            bail!(
                "vision feature layer selects {} of {} SigLIP layers",
                cfg.vision_layers_used,
                cfg.vision.num_hidden_layers
            );
        }
        Ok(cfg)
    }

    fn from_original(text: Qwen2Config, o: OriginalFields) -> Result<Self> {
        let vision = o.vision_config.unwrap_or_default();
        if let Some(h) = o.mm_hidden_size {
            if h != vision.hidden_size {
                bail!(
                    "mm_hidden_size {h} != vision hidden_size {}",
                    vision.hidden_size
                );
            }
        }
        if let Some(p) = &o.mm_projector_type {
            if p != "mlp2x_gelu" {
                bail!("mm_projector_type '{p}' is not supported (expected mlp2x_gelu)");
            }
        }
        if let Some(f) = &o.mm_vision_select_feature {
            if f != "patch" {
                bail!("mm_vision_select_feature '{f}' is not supported (expected patch)");
            }
        }
        // The seed's SigLIP tower deletes its last layer and ignores mm_vision_select_layer; -2 is what
        // that deletion amounts to, and the only value LLaVA-OV checkpoints carry.
        let select = o.mm_vision_select_layer.unwrap_or(-2);
        if select != -2 {
            bail!("mm_vision_select_layer {select}: the SigLIP tower of LLaVA-NeXT always drops exactly one layer (-2)");
        }
        let merge = o
            .mm_patch_merge_type
            .unwrap_or_else(|| "spatial_unpad".into());
        Ok(Self {
            vision_layers_used: vision.num_hidden_layers - 1,
            drop_first_vision_token: false,
            image_grid_pinpoints: parse_pinpoints(&o.image_grid_pinpoints, vision.image_size)?,
            image_aspect_ratio: AspectMode::parse(
                o.image_aspect_ratio.as_deref().unwrap_or("anyres_max_9"),
            )?,
            has_image_newline: merge.contains("unpad"),
            prompt_layout: o.imgcot_prompt_layout,
            text,
            vision,
        })
    }

    fn from_hf(h: HfFields) -> Result<Self> {
        let layer = match &h.vision_feature_layer {
            None => -1,
            Some(v) => v.as_i64().with_context(|| {
                format!("vision_feature_layer {v}: only a single int is supported")
            })?,
        };
        let n = h.vision_config.num_hidden_layers;
        let used = if layer < 0 { n + 1 + layer } else { layer };
        let drop_first = match h
            .vision_feature_select_strategy
            .as_deref()
            .unwrap_or("full")
        {
            "full" => false,
            "default" => true,
            s => bail!("vision_feature_select_strategy '{s}' is not supported"),
        };
        if let Some(a) = &h.projector_hidden_act {
            if a != "gelu" {
                bail!("projector_hidden_act '{a}' is not supported (expected gelu)");
            }
        }
        if h.multimodal_projector_bias == Some(false) {
            bail!("multimodal_projector_bias=false is not supported");
        }
        Ok(Self {
            vision_layers_used: used,
            drop_first_vision_token: drop_first,
            image_grid_pinpoints: parse_pinpoints(
                &h.image_grid_pinpoints,
                h.vision_config.image_size,
            )?,
            image_aspect_ratio: AspectMode::parse(
                h.vision_aspect_ratio.as_deref().unwrap_or("anyres_max_9"),
            )?,
            has_image_newline: true,
            prompt_layout: h.imgcot_prompt_layout,
            text: h.text_config,
            vision: h.vision_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_layout_defaults_to_so400m_minus_one_layer() {
        let j = r#"{"model_type":"llava","vocab_size":152064,"hidden_size":3584,"intermediate_size":18944,
            "num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"rope_theta":1000000.0,
            "rms_norm_eps":1e-6,"mm_hidden_size":1152,"mm_projector_type":"mlp2x_gelu","mm_vision_select_layer":-2,
            "mm_patch_merge_type":"spatial_unpad","image_aspect_ratio":"anyres_max_9",
            "image_grid_pinpoints":"(1x1),...,(6x6)","rope_scaling":null}"#;
        let c = LlavaOvConfig::from_json_str(j).unwrap();
        assert_eq!(c.vision.hidden_size, 1152);
        assert_eq!(c.vision_layers_used, 26);
        assert_eq!(c.vision.num_patches(), 729);
        assert_eq!(c.text.head_dim(), 128);
        assert_eq!(c.text.theta(), 1e6);
        assert_eq!(c.image_grid_pinpoints.len(), 36);
        assert_eq!(c.image_grid_pinpoints[1], (384, 768));
        assert_eq!(c.image_aspect_ratio, AspectMode::AnyresMax(9));
        assert!(c.has_image_newline);
    }

    #[test]
    fn rejects_unsupported_fields() {
        let base = r#""vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":2,"num_key_value_heads":1"#;
        let bad = format!(r#"{{{base},"mm_projector_type":"linear"}}"#);
        assert!(LlavaOvConfig::from_json_str(&bad).is_err());
        let bad = format!(r#"{{{base},"rope_scaling":{{"type":"linear","factor":2.0}}}}"#);
        assert!(LlavaOvConfig::from_json_str(&bad).is_err());
        let ok = format!(r#"{{{base}}}"#);
        assert!(LlavaOvConfig::from_json_str(&ok).is_ok());
        let zero_kv = base.replace(r#""num_key_value_heads":1"#, r#""num_key_value_heads":0"#);
        let e = LlavaOvConfig::from_json_str(&format!(r#"{{{zero_kv}}}"#)).unwrap_err();
        assert!(format!("{e:#}").contains("num_key_value_heads 0"), "{e:#}");
        let zero_heads = base.replace(r#""num_attention_heads":2"#, r#""num_attention_heads":0"#);
        let e = LlavaOvConfig::from_json_str(&format!(r#"{{{zero_heads}}}"#)).unwrap_err();
        assert!(format!("{e:#}").contains("num_attention_heads 0"), "{e:#}");
    }
}
