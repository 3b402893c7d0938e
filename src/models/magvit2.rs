//! MAGVIT-v2 as used by Show-o: a convolutional VQGAN encoder/decoder with a 13-bit
//! lookup-free quantizer (LFQ), i.e. 8192 image codes.
//!
//! Port of `showlab/Show-o` `models/modeling_magvitv2.py` + `models/common_modules.py`
//! (spec: shared/design/spec-showo.md §2.4, §6, §7, §8). Key characteristics:
//! - Weights are addressed by the original state-dict keys (`encoder.down.N.block.M.conv1.weight`,
//!   `decoder.up.N.upsample.conv.weight`, `quantize.embedding`, ...); the hub file is
//!   `pytorch_model.safetensors` (not HF's `model.safetensors`).
//! - GroupNorm(32, eps 1e-6) + swish everywhere; no time embedding; a single-head attention block
//!   only in the mid sections; the encoder ends in `quant_conv`, the decoder starts with `post_quant_conv`.
//! - Downsample pads asymmetrically (right/bottom only) before a stride-2 3×3 conv; Upsample is
//!   nearest ×2 then a 3×3 conv.
//! - LFQ: z_q = sign(z) with exact 0 → −1; code = Σ_c [z_c > 0]·2^(D−1−c) (channel 0 = MSB).
//!   Codes are laid out row-major over the (h, w) grid.
//! - Fully convolutional apart from the mid attention, so 256² (16×16 codes) and 512² (32×32) both work.
//!
//! The real checkpoint's `config.json` holds only diffusers metadata (`_class_name`,
//! `_diffusers_version`): the architecture is hardcoded in the original constructors. [`Config`]'s
//! defaults are that architecture; its field names follow the original constructor arguments where
//! they exist, so that small configs (tests, glyph-sized experiments) can be written to `config.json`.
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// File names used by Show-o's `ModelMixin` (`O:models/modeling_utils.py:47-49`).
pub const WEIGHTS_NAME: &str = "pytorch_model.safetensors";
pub const CONFIG_NAME: &str = "config.json";
/// The value of `_class_name` in the original `config.json`.
pub const CLASS_NAME: &str = "MAGVITv2";

/// GroupNorm settings of `Normalize` (`common_modules.py`).
const NUM_GROUPS: i64 = 32;
const GN_EPS: f64 = 1e-6;
/// RGB in, RGB out (the original's `in_channels`/`out_ch` are fixed at 3 for Show-o).
const IMAGE_CHANNELS: i64 = 3;

/// Architecture hyper-parameters. Defaults = the released `showlab/magvitv2` checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base channel count (`ch`).
    pub ch: i64,
    /// Latent channels at the quantizer (`z_channels`); must equal `codebook_dim` for LFQ.
    pub z_channels: i64,
    /// Training image size; used by preprocessing (`inspect encode`), not by the network.
    pub resolution: i64,
    /// Encoder per-level channel multipliers (`VQGANEncoder.ch_mult`).
    pub encoder_ch_mult: Vec<i64>,
    /// Encoder per-level ResnetBlock counts (`VQGANEncoder.num_res_blocks`).
    pub encoder_num_res_blocks: Vec<i64>,
    /// Decoder per-level channel multipliers (`VQGANDecoder.ch_mult`).
    pub decoder_ch_mult: Vec<i64>,
    /// Decoder per-level ResnetBlock counts (`VQGANDecoder.num_res_blocks`), indexed by level.
    pub decoder_num_res_blocks: Vec<i64>,
    /// Bits per code (`LFQuantizer.codebook_dim`); the codebook has 2^codebook_dim entries.
    pub codebook_dim: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ch: 128,
            z_channels: 13,
            resolution: 256,
            encoder_ch_mult: vec![1, 2, 2, 4, 4],
            encoder_num_res_blocks: vec![4, 3, 4, 3, 4],
            decoder_ch_mult: vec![1, 1, 2, 2, 4],
            decoder_num_res_blocks: vec![4, 4, 3, 4, 3],
            codebook_dim: 13,
        }
    }
}

impl Config {
    /// Parses a `config.json`. Keys starting with `_` are diffusers metadata (`_class_name`,
    /// `_diffusers_version`, `_name_or_path`, ...) that the original writes and are ignored,
    /// except that `_class_name`, when present, must be `MAGVITv2`. Any other unknown key is an error,
    /// so a typo cannot silently fall back to the full-size default.
    pub fn from_json_str(text: &str, source: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{source}: invalid JSON"))?;
        let serde_json::Value::Object(mut map) = value else {
            bail!("{source}: expected a JSON object");
        };
        if let Some(class) = map.get("_class_name") {
            ensure!(
                class.as_str() == Some(CLASS_NAME),
                "{source}: _class_name is {class}, expected \"{CLASS_NAME}\""
            );
        }
        map.retain(|k, _| !k.starts_with('_'));
        let config: Config = serde_json::from_value(serde_json::Value::Object(map))
            .with_context(|| format!("{source}: invalid MAGVIT-v2 config"))?;
        config
            .validate()
            .with_context(|| format!("{source}: invalid MAGVIT-v2 config"))?;
        Ok(config)
    }

    /// Reads `config.json`; a missing file means the default (the released checkpoint, whose
    /// `config.json` carries no architecture keys).
    pub fn from_file_or_default(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.ch > 0 && self.ch % NUM_GROUPS == 0,
            "ch = {} must be a positive multiple of {NUM_GROUPS}",
            self.ch
        );
        ensure!(
            (1..=62).contains(&self.codebook_dim),
            "codebook_dim = {} must be in 1..=62",
            self.codebook_dim
        );
        ensure!(
            self.z_channels == self.codebook_dim,
            "z_channels ({}) must equal codebook_dim ({}) for LFQ",
            self.z_channels,
            self.codebook_dim
        );
        for (name, mult, blocks) in [
            (
                "encoder",
                &self.encoder_ch_mult,
                &self.encoder_num_res_blocks,
            ),
            (
                "decoder",
                &self.decoder_ch_mult,
                &self.decoder_num_res_blocks,
            ),
        ] {
            ensure!(!mult.is_empty(), "{name}_ch_mult is empty");
            ensure!(
                mult.len() == blocks.len(),
                "{name}_ch_mult has {} levels but {name}_num_res_blocks has {}",
                mult.len(),
                blocks.len()
            );
            ensure!(
                mult.iter().all(|&m| m > 0),
                "{name}_ch_mult entries must be positive: {mult:?}"
            );
            ensure!(
                blocks.iter().all(|&b| b > 0),
                "{name}_num_res_blocks entries must be positive: {blocks:?}"
            );
        }
        ensure!(
            self.encoder_ch_mult.len() == self.decoder_ch_mult.len(),
            "encoder has {} levels, decoder {}: the code grid would not round-trip",
            self.encoder_ch_mult.len(),
            self.decoder_ch_mult.len()
        );
        let f = self.downsample_factor();
        ensure!(
            self.resolution > 0 && self.resolution % f == 0,
            "resolution {} is not a multiple of the downsampling factor {f}",
            self.resolution
        );
        Ok(())
    }

    /// Spatial reduction of the encoder (16 for the released model).
    pub fn downsample_factor(&self) -> i64 {
        1 << (self.encoder_ch_mult.len() - 1)
    }

    pub fn codebook_size(&self) -> i64 {
        1 << self.codebook_dim
    }
}

fn swish(xs: &Tensor) -> Tensor {
    xs.silu()
}

fn group_norm(p: nn::Path, channels: i64) -> nn::GroupNorm {
    let cfg = nn::GroupNormConfig {
        eps: GN_EPS,
        ..Default::default()
    };
    nn::group_norm(p, NUM_GROUPS, channels, cfg)
}

/// Conv2d whose parameters start at zero: every value is overwritten by the strict load, and
/// skipping the Kaiming init saves time on the 95M-parameter model.
fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        ws_init: nn::Init::Const(0.),
        bs_init: nn::Init::Const(0.),
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// `ResnetBlock` without time embedding: out = shortcut(x) + conv2(swish(norm2(conv1(swish(norm1(x)))))).
#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    /// 1×1 conv, present only when the channel count changes.
    nin_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock {
    fn new(p: nn::Path, cin: i64, cout: i64) -> Self {
        Self {
            norm1: group_norm(&p / "norm1", cin),
            conv1: conv(&p / "conv1", cin, cout, 3, 1, 1),
            norm2: group_norm(&p / "norm2", cout),
            conv2: conv(&p / "conv2", cout, cout, 3, 1, 1),
            nin_shortcut: (cin != cout).then(|| conv(&p / "nin_shortcut", cin, cout, 1, 1, 0)),
        }
    }
}

impl Module for ResnetBlock {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.conv1.forward(&swish(&self.norm1.forward(xs)));
        // Dropout is 0 in the original; inference only.
        let h = self.conv2.forward(&swish(&self.norm2.forward(&h)));
        match &self.nin_shortcut {
            Some(s) => s.forward(xs) + h,
            None => xs + h,
        }
    }
}

/// Single-head self-attention over the H·W positions, channels as features, 1×1 conv projections.
#[derive(Debug)]
struct AttnBlock {
    norm: nn::GroupNorm,
    q: nn::Conv2D,
    k: nn::Conv2D,
    v: nn::Conv2D,
    proj_out: nn::Conv2D,
}

impl AttnBlock {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            norm: group_norm(&p / "norm", c),
            q: conv(&p / "q", c, c, 1, 1, 0),
            k: conv(&p / "k", c, c, 1, 1, 0),
            v: conv(&p / "v", c, c, 1, 1, 0),
            proj_out: conv(&p / "proj_out", c, c, 1, 1, 0),
        }
    }
}

impl Module for AttnBlock {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (b, c, h, w) = xs.size4().expect("AttnBlock input is 4-D");
        let hn = self.norm.forward(xs);
        // (B, C, H, W) -> (B, 1, HW, C): one head whose features are the channels.
        let seq = |t: Tensor| t.reshape([b, c, h * w]).transpose(1, 2).unsqueeze(1);
        let (q, k, v) = (
            seq(self.q.forward(&hn)),
            seq(self.k.forward(&hn)),
            seq(self.v.forward(&hn)),
        );
        // softmax(q·kᵀ · C^-0.5) over keys, then weights · v: SDPA's default scale is C^-0.5.
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let o = o.squeeze_dim(1).transpose(1, 2).reshape([b, c, h, w]);
        xs + self.proj_out.forward(&o)
    }
}

/// Zero pad (left 0, right 1, top 0, bottom 1), then a stride-2 3×3 conv without padding.
#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
}

impl Downsample {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            conv: conv(&p / "conv", c, c, 3, 2, 0),
        }
    }
}

impl Module for Downsample {
    fn forward(&self, xs: &Tensor) -> Tensor {
        // pad order is (left, right, top, bottom) for the last two dims.
        self.conv.forward(&xs.constant_pad_nd([0, 1, 0, 1]))
    }
}

/// Nearest-neighbour ×2, then a 3×3 conv.
#[derive(Debug)]
struct Upsample {
    conv: nn::Conv2D,
}

impl Upsample {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            conv: conv(&p / "conv", c, c, 3, 1, 1),
        }
    }
}

impl Module for Upsample {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (_, _, h, w) = xs.size4().expect("Upsample input is 4-D");
        self.conv
            .forward(&xs.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0))
    }
}

/// `mid.block_1` → `mid.attn_1` → `mid.block_2`.
#[derive(Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            block_1: ResnetBlock::new(&p / "block_1", c, c),
            attn_1: AttnBlock::new(&p / "attn_1", c),
            block_2: ResnetBlock::new(&p / "block_2", c, c),
        }
    }
}

impl Module for Mid {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(xs)))
    }
}

/// One resolution level: `block.0..n` then an optional `downsample`/`upsample`.
#[derive(Debug)]
struct Level<S> {
    blocks: Vec<ResnetBlock>,
    resample: Option<S>,
}

impl<S: Module> Module for Level<S> {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut h = self.blocks[0].forward(xs);
        for b in &self.blocks[1..] {
            h = b.forward(&h);
        }
        match &self.resample {
            Some(r) => r.forward(&h),
            None => h,
        }
    }
}

/// `VQGANEncoder`: image [B,3,H,W] → pre-quantization latents [B, z_channels, H/f, W/f].
#[derive(Debug)]
pub struct Encoder {
    conv_in: nn::Conv2D,
    down: Vec<Level<Downsample>>,
    mid: Mid,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    quant_conv: nn::Conv2D,
}

impl Encoder {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        let ch = cfg.ch;
        let n = cfg.encoder_ch_mult.len();
        let conv_in = conv(&p / "conv_in", IMAGE_CHANNELS, ch, 3, 1, 1);
        let mut down = Vec::with_capacity(n);
        // Level i maps ch·in_ch_mult[i] → ch·ch_mult[i], with in_ch_mult = (1,) + ch_mult.
        let mut block_in = ch;
        for i in 0..n {
            let pl = &p / "down" / i;
            let block_out = ch * cfg.encoder_ch_mult[i];
            let blocks = (0..cfg.encoder_num_res_blocks[i])
                .map(|j| {
                    let cin = if j == 0 { block_in } else { block_out };
                    ResnetBlock::new(&pl / "block" / j, cin, block_out)
                })
                .collect();
            block_in = block_out;
            let resample = (i + 1 != n).then(|| Downsample::new(&pl / "downsample", block_in));
            down.push(Level { blocks, resample });
        }
        Self {
            conv_in,
            down,
            mid: Mid::new(&p / "mid", block_in),
            norm_out: group_norm(&p / "norm_out", block_in),
            conv_out: conv(&p / "conv_out", block_in, cfg.z_channels, 3, 1, 1),
            quant_conv: conv(&p / "quant_conv", cfg.z_channels, cfg.z_channels, 1, 1, 0),
        }
    }
}

impl Module for Encoder {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(xs);
        for level in &self.down {
            h = level.forward(&h);
        }
        let h = self.mid.forward(&h);
        let h = self.conv_out.forward(&swish(&self.norm_out.forward(&h)));
        self.quant_conv.forward(&h)
    }
}

/// `VQGANDecoder`: quantized latents [B, z_channels, h, w] → image [B,3,h·f,w·f] (roughly in [−1, 1]).
#[derive(Debug)]
pub struct Decoder {
    post_quant_conv: nn::Conv2D,
    conv_in: nn::Conv2D,
    mid: Mid,
    /// Indexed by level (`up.0` is the full-resolution one); run from the last to the first.
    up: Vec<Level<Upsample>>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        let ch = cfg.ch;
        let n = cfg.decoder_ch_mult.len();
        let mut block_in = ch * cfg.decoder_ch_mult[n - 1];
        let post_quant_conv = conv(
            &p / "post_quant_conv",
            cfg.z_channels,
            cfg.z_channels,
            1,
            1,
            0,
        );
        let conv_in = conv(&p / "conv_in", cfg.z_channels, block_in, 3, 1, 1);
        let mid = Mid::new(&p / "mid", block_in);
        let mut up: Vec<Level<Upsample>> = Vec::with_capacity(n);
        for i in (0..n).rev() {
            let pl = &p / "up" / i;
            let block_out = ch * cfg.decoder_ch_mult[i];
            let blocks = (0..cfg.decoder_num_res_blocks[i])
                .map(|j| {
                    let cin = if j == 0 { block_in } else { block_out };
                    ResnetBlock::new(&pl / "block" / j, cin, block_out)
                })
                .collect();
            block_in = block_out;
            let resample = (i != 0).then(|| Upsample::new(&pl / "upsample", block_in));
            up.push(Level { blocks, resample });
        }
        up.reverse();
        Self {
            post_quant_conv,
            conv_in,
            mid,
            up,
            norm_out: group_norm(&p / "norm_out", block_in),
            conv_out: conv(&p / "conv_out", block_in, IMAGE_CHANNELS, 3, 1, 1),
        }
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Tensor {
        let h = self.conv_in.forward(&self.post_quant_conv.forward(z));
        let mut h = self.mid.forward(&h);
        for level in self.up.iter().rev() {
            h = level.forward(&h);
        }
        self.conv_out.forward(&swish(&self.norm_out.forward(&h)))
    }
}

/// The LFQ codebook: `embedding[k][c] = 2·((k >> (D−1−c)) & 1) − 1` (channel 0 = MSB), as f32.
pub fn lfq_embedding(codebook_dim: i64) -> Tensor {
    let ids = Tensor::arange(1i64 << codebook_dim, (Kind::Int64, Device::Cpu)).unsqueeze(1);
    let bits = ids
        .bitwise_and_tensor(&lfq_power_vals(codebook_dim).unsqueeze(0))
        .ne(0);
    bits.to_kind(Kind::Float) * 2.0 - 1.0
}

/// `[2^(D−1), ..., 2, 1]` as int64: the weight of each channel's bit in the code id.
pub fn lfq_power_vals(codebook_dim: i64) -> Tensor {
    let vals: Vec<i64> = (0..codebook_dim)
        .map(|c| 1i64 << (codebook_dim - 1 - c))
        .collect();
    Tensor::from_slice(&vals)
}

/// Code ids of latents `z` [B, D, h, w]: bit c set iff z[c] > 0 (so exact 0 → −1) → [B, h·w] int64.
pub fn lfq_codes(z: &Tensor, power_vals: &Tensor) -> Tensor {
    let (b, d, h, w) = z.size4().expect("latents are 4-D");
    let bits = z.gt(0.0).to_kind(Kind::Int64);
    let pv = power_vals.to_device(z.device()).view([1, d, 1, 1]);
    (bits * pv)
        .sum_dim_intlist(1, false, Kind::Int64)
        .reshape([b, h * w])
}

/// `LFQuantizer` at inference: only its two buffers (no parameters).
#[derive(Debug)]
pub struct Lfq {
    /// [2^D, D] ±1 (model dtype).
    embedding: Tensor,
    /// [D] int64.
    power_vals: Tensor,
}

impl Lfq {
    fn new(p: nn::Path, codebook_dim: i64) -> Self {
        let device = p.device();
        // Registered as non-trainable variables so that they carry their checkpoint names.
        let embedding = p.add(
            "embedding",
            lfq_embedding(codebook_dim).to_device(device),
            false,
        );
        let power_vals = p.add(
            "power_vals",
            lfq_power_vals(codebook_dim).to_device(device),
            false,
        );
        Self {
            embedding,
            power_vals,
        }
    }

    /// [B, D, h, w] → codes [B, h·w].
    pub fn codes(&self, z: &Tensor) -> Tensor {
        lfq_codes(z, &self.power_vals)
    }

    /// Codes [B, h·w] → ±1 latents [B, D, h, w] (`get_codebook_entry`).
    pub fn lookup(&self, codes: &Tensor, h: i64, w: i64) -> Tensor {
        let b = codes.size()[0];
        let d = self.embedding.size()[1];
        self.embedding
            .index_select(0, &codes.flatten(0, -1))
            .reshape([b, h, w, d])
            .permute([0, 3, 1, 2])
    }
}

/// Names of the two LFQ buffers. They are deterministic: regenerated when the file lacks them.
const BUFFER_NAMES: [&str; 2] = ["quantize.embedding", "quantize.power_vals"];

/// MAGVIT-v2 (`MAGVITv2` in the original): `encoder.`, `decoder.`, `quantize.`.
#[derive(Debug)]
pub struct Magvit2 {
    config: Config,
    vs: nn::VarStore,
    encoder: Encoder,
    decoder: Decoder,
    quantize: Lfq,
    kind: Kind,
}

impl Magvit2 {
    /// Builds the network with zero weights and the LFQ buffers, in fp32 on `device`.
    pub fn new(config: Config, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let encoder = Encoder::new(&root / "encoder", &config);
        let decoder = Decoder::new(&root / "decoder", &config);
        let quantize = Lfq::new(&root / "quantize", config.codebook_dim);
        Ok(Self {
            config,
            vs,
            encoder,
            decoder,
            quantize,
            kind: Kind::Float,
        })
    }

    /// Loads a checkpoint in fp32: `path` is a folder with `pytorch_model.safetensors` (and
    /// optionally `config.json`) or the `.safetensors` file itself (its folder's `config.json` is used).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Self::load_with_kind(path, device, Kind::Float)
    }

    /// Like [`Magvit2::load`], then casts the float weights to `kind` (Float, BFloat16 or Half).
    /// Weights are always read into fp32 first, whatever the file's dtype.
    pub fn load_with_kind(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        ensure!(
            matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half),
            "MAGVIT-v2 supports fp32, bf16 or fp16 weights, not {kind:?}"
        );
        let (weights, config_path) = resolve_paths(path)?;
        let config = Config::from_file_or_default(&config_path)?;
        let mut model = Self::new(config, device)?;
        model.load_weights(&weights)?;
        // Only float variables change kind: `power_vals` stays int64.
        match kind {
            Kind::BFloat16 => model.vs.bfloat16(),
            Kind::Half => model.vs.half(),
            _ => {}
        }
        model.kind = kind;
        Ok(model)
    }

    /// Strictly loads a safetensors file into this model: every parameter must be present with
    /// its exact shape and no other tensor may be there. The LFQ buffers may be absent (they are
    /// regenerated); when present they must equal the expected codebook.
    pub fn load_weights(&mut self, file: &Path) -> Result<()> {
        let tensors = Tensor::read_safetensors(file)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut found: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len());
        for (name, t) in tensors {
            found.insert(name, t);
        }
        let expected: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        let mut problems = Vec::new();
        for (name, var) in &expected {
            let want = var.size();
            match found.get(name) {
                None if BUFFER_NAMES.contains(&name.as_str()) => {}
                None => problems.push(format!("missing tensor {name} (expected shape {want:?})")),
                Some(t) if t.size() != want => problems.push(format!(
                    "tensor {name}: expected shape {want:?}, found {:?}",
                    t.size()
                )),
                Some(t) => {
                    let ok_kind = if var.kind() == Kind::Int64 {
                        is_integer(t.kind())
                    } else {
                        t.is_floating_point()
                    };
                    if !ok_kind {
                        problems.push(format!(
                            "tensor {name}: expected a {:?}-compatible dtype, found {:?}",
                            var.kind(),
                            t.kind()
                        ));
                    }
                }
            }
        }
        let mut unexpected: Vec<_> = found
            .iter()
            .filter(|(n, _)| !expected.contains_key(*n))
            .map(|(n, t)| (n.clone(), t.size()))
            .collect();
        unexpected.sort();
        for (name, shape) in unexpected {
            problems.push(format!("unexpected tensor {name} (shape {shape:?})"));
        }
        if !problems.is_empty() {
            bail!(
                "{} does not match the MAGVIT-v2 config ({} problem(s)):\n  {}",
                file.display(),
                problems.len(),
                problems.join("\n  ")
            );
        }
        for name in BUFFER_NAMES {
            if let Some(t) = found.get(name) {
                let want = &expected[name];
                let same = t.to_kind(want.kind()).equal(&want.to_device(Device::Cpu));
                ensure!(
                    same,
                    "{}: buffer {name} does not hold the LFQ codebook values (channel 0 = MSB, bits → ±1)",
                    file.display()
                );
            }
        }
        tch::no_grad(|| -> Result<()> {
            for (name, var) in &expected {
                if BUFFER_NAMES.contains(&name.as_str()) {
                    continue;
                }
                let src = &found[name];
                let mut dst = var.shallow_clone();
                dst.f_copy_(&src.to_kind(Kind::Float))
                    .with_context(|| format!("copying tensor {name}"))?;
            }
            Ok(())
        })?;
        self.vs.freeze();
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn quantizer(&self) -> &Lfq {
        &self.quantize
    }

    fn check_images(&self, images: &Tensor) -> Result<()> {
        let size = images.size();
        let f = self.config.downsample_factor();
        ensure!(
            size.len() == 4 && size[1] == IMAGE_CHANNELS,
            "images must be [B, 3, H, W], got {size:?}"
        );
        ensure!(
            size[2] > 0 && size[3] > 0 && size[2] % f == 0 && size[3] % f == 0,
            "image height/width {}x{} must be positive multiples of {f}",
            size[2],
            size[3]
        );
        ensure!(
            images.is_floating_point(),
            "images must be a float tensor, got {:?}",
            images.kind()
        );
        Ok(())
    }

    /// Pre-quantization latents (`quant_conv` output) in fp32: [B, D, H/f, W/f].
    pub fn encode_latents(&self, images: &Tensor) -> Result<Tensor> {
        self.check_images(images)?;
        let x = images.to_device(self.device()).to_kind(self.kind);
        Ok(tch::no_grad(|| self.encoder.forward(&x)).to_kind(Kind::Float))
    }

    /// Images in [−1, 1], [B, 3, H, W] → int64 codes [B, (H/f)·(W/f)], row-major over the grid.
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let z = self.encode_latents(images)?;
        Ok(self.quantize.codes(&z))
    }

    /// Codes [B, N] with N = g² → fp32 images [B, 3, g·f, g·f] (`decode_code`, square grid).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let size = codes.size();
        ensure!(size.len() == 2, "codes must be [B, N], got {size:?}");
        ensure!(
            is_integer(codes.kind()),
            "codes must be an integer tensor, got {:?}",
            codes.kind()
        );
        let n = size[1];
        let g = (n as f64).sqrt().round() as i64;
        ensure!(
            n > 0 && g * g == n,
            "codes per image ({n}) is not a square number"
        );
        self.decode_grid(codes, g, g)
    }

    /// Codes [B, h·w] → fp32 images [B, 3, h·f, w·f].
    pub fn decode_grid(&self, codes: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        let size = codes.size();
        ensure!(
            size.len() == 2 && size[1] == h * w,
            "codes must be [B, {}], got {size:?}",
            h * w
        );
        let codes = codes.to_device(self.device()).to_kind(Kind::Int64);
        if codes.numel() > 0 {
            let (lo, hi) = (codes.min().int64_value(&[]), codes.max().int64_value(&[]));
            let k = self.config.codebook_size();
            ensure!(
                lo >= 0 && hi < k,
                "codes must lie in [0, {k}), found range [{lo}, {hi}]"
            );
        }
        let z = self.quantize.lookup(&codes, h, w).to_kind(self.kind);
        Ok(tch::no_grad(|| self.decoder.forward(&z)).to_kind(Kind::Float))
    }
}

impl super::ImageTokenizer for Magvit2 {
    fn codebook_size(&self) -> i64 {
        self.config.codebook_size()
    }

    fn grid_size(&self, image_size: i64) -> i64 {
        image_size / self.config.downsample_factor()
    }

    fn encode(&self, images: &Tensor) -> Result<Tensor> {
        Magvit2::encode(self, images)
    }

    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        Magvit2::decode(self, codes)
    }
}

fn is_integer(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    )
}

/// (weights file, config.json path) for a checkpoint folder or a direct weights file path.
pub fn resolve_paths(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.is_dir() {
        let weights = path.join(WEIGHTS_NAME);
        ensure!(
            weights.is_file(),
            "MAGVIT-v2 checkpoint folder {} has no {WEIGHTS_NAME}",
            path.display()
        );
        Ok((weights, path.join(CONFIG_NAME)))
    } else if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok((path.to_path_buf(), dir.join(CONFIG_NAME)))
    } else {
        bail!("MAGVIT-v2 checkpoint {} does not exist", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &Tensor, i: i64) -> Vec<f32> {
        Vec::<f32>::try_from(t.get(i)).unwrap()
    }

    #[test]
    fn embedding_bit_order_is_msb_first() {
        let e = lfq_embedding(13);
        assert_eq!(e.size(), vec![8192, 13]);
        let mut want = vec![-1f32; 13];
        want[12] = 1.0;
        assert_eq!(row(&e, 1), want);
        let mut want = vec![-1f32; 13];
        want[0] = 1.0;
        assert_eq!(row(&e, 4096), want);
        assert_eq!(row(&e, 0), vec![-1f32; 13]);
        assert_eq!(row(&e, 8191), vec![1f32; 13]);
        assert_eq!(
            Vec::<i64>::try_from(lfq_power_vals(13)).unwrap()[..3],
            [4096, 2048, 1024]
        );
    }

    #[test]
    fn codes_of_sign_patterns_and_zero_maps_to_minus_one() {
        // Two positions, 13 channels: position 0 = +,-,-,...,-,+ (4096 + 1); position 1 = all zeros.
        let mut p0 = vec![-0.5f32; 13];
        p0[0] = 2.0;
        p0[12] = 1e-7;
        let p1 = vec![0f32; 13];
        let z = Tensor::from_slice(&[p0, p1].concat())
            .view([2, 13])
            .transpose(0, 1)
            .reshape([1, 13, 1, 2]);
        let codes = lfq_codes(&z, &lfq_power_vals(13));
        assert_eq!(
            Vec::<i64>::try_from(codes.flatten(0, -1)).unwrap(),
            vec![4097, 0]
        );
        // Round trip: the embedding of a code quantizes back to the same code.
        let e = lfq_embedding(13);
        let ids = Tensor::from_slice(&[0i64, 1, 4096, 5461, 8191]);
        let z = e
            .index_select(0, &ids)
            .transpose(0, 1)
            .reshape([1, 13, 1, 5]);
        assert_eq!(
            Vec::<i64>::try_from(lfq_codes(&z, &lfq_power_vals(13)).flatten(0, -1)).unwrap(),
            vec![0, 1, 4096, 5461, 8191]
        );
    }

    #[test]
    fn row_major_code_layout() {
        // A 2×3 grid with one channel set at (row 1, col 0) only: flat index 3.
        let z = Tensor::full([1, 2, 2, 3], -1.0, (Kind::Float, Device::Cpu));
        let _ = z.get(0).get(0).get(1).get(0).fill_(1.0);
        let codes = lfq_codes(&z, &lfq_power_vals(2));
        assert_eq!(
            Vec::<i64>::try_from(codes.flatten(0, -1)).unwrap(),
            vec![0, 0, 0, 2, 0, 0]
        );
    }

    #[test]
    fn config_defaults_are_the_released_checkpoint() {
        let cfg = Config::from_json_str(
            r#"{"_class_name":"MAGVITv2","_diffusers_version":"0.30.1"}"#,
            "t",
        )
        .unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.downsample_factor(), 16);
        assert_eq!(cfg.codebook_size(), 8192);
        let err = Config::from_json_str(r#"{"z_channel": 13}"#, "cfg.json").unwrap_err();
        assert!(format!("{err:#}").contains("z_channel"), "{err:#}");
        let err = Config::from_json_str(r#"{"_class_name":"Showo"}"#, "cfg.json").unwrap_err();
        assert!(format!("{err:#}").contains("_class_name"), "{err:#}");
        let err = Config::from_json_str(r#"{"z_channels": 12}"#, "cfg.json").unwrap_err();
        assert!(format!("{err:#}").contains("codebook_dim"), "{err:#}");
    }

    #[test]
    fn full_size_key_set_matches_the_spec() {
        let m = Magvit2::new(Config::default(), Device::Cpu).unwrap();
        let vars = m.var_store().variables();
        assert_eq!(vars.len(), 382);
        let numel: i64 = vars.values().map(|t| t.numel() as i64).sum();
        assert_eq!(numel, 95_493_513);
        let shape = |n: &str| vars.get(n).unwrap_or_else(|| panic!("no {n}")).size();
        assert_eq!(shape("encoder.conv_in.weight"), vec![128, 3, 3, 3]);
        assert_eq!(
            shape("encoder.down.1.block.0.nin_shortcut.weight"),
            vec![256, 128, 1, 1]
        );
        assert_eq!(
            shape("encoder.down.3.downsample.conv.weight"),
            vec![512, 512, 3, 3]
        );
        assert_eq!(shape("encoder.quant_conv.weight"), vec![13, 13, 1, 1]);
        assert_eq!(shape("decoder.conv_in.weight"), vec![512, 13, 3, 3]);
        assert_eq!(
            shape("decoder.up.3.block.0.nin_shortcut.weight"),
            vec![256, 512, 1, 1]
        );
        assert_eq!(
            shape("decoder.up.4.block.2.conv2.weight"),
            vec![512, 512, 3, 3]
        );
        assert_eq!(
            shape("decoder.up.1.upsample.conv.weight"),
            vec![128, 128, 3, 3]
        );
        assert_eq!(shape("decoder.conv_out.weight"), vec![3, 128, 3, 3]);
        assert_eq!(shape("quantize.embedding"), vec![8192, 13]);
        assert_eq!(vars["quantize.power_vals"].kind(), Kind::Int64);
        assert!(!vars.contains_key("encoder.down.4.downsample.conv.weight"));
        assert!(!vars.contains_key("decoder.up.0.upsample.conv.weight"));
        assert!(!vars.contains_key("decoder.up.4.block.3.conv1.weight"));
    }
}
