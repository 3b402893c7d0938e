//! Qwen2 causal LM (the language model of LLaVA-OneVision): RMSNorm, rotary embeddings (rotate-half,
//! θ from the config), grouped-query attention with q/k/v bias through SDPA, SwiGLU MLP, untied
//! `lm_head`. Matches HF `Qwen2ForCausalLM` (tf5.24 qwen2/modeling_qwen2.py); keys `model.*`, `lm_head.*`.
use super::config::Qwen2Config;
use super::siglip::Linear;
use super::weights::Weights;
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// HF Qwen2RMSNorm: normalise in fp32, cast back, then scale.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(w: &mut Weights, name: &str, dim: i64, eps: f64) -> Self {
        Self {
            weight: w.get(name, &[dim]),
            eps,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let y = (x32 * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * y
    }
}

/// cos/sin tables [L, head_dim] for positions 0..L, computed in fp32 as HF does, then cast to `kind`.
pub fn rotary_tables(
    theta: f64,
    head_dim: i64,
    len: i64,
    device: Device,
    kind: Kind,
) -> (Tensor, Tensor) {
    let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
        .to_kind(Kind::Float)
        / head_dim as f64;
    let inv_freq = Tensor::pow_scalar(theta, &exponent).reciprocal();
    let pos = Tensor::arange(len, (Kind::Int64, device)).to_kind(Kind::Float);
    let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
}

fn rotate_half(x: &Tensor) -> Tensor {
    let d = *x.size().last().unwrap_or(&0);
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d / 2);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let (b, l, _) = x.size3().expect("qwen2 attention input is [B, L, C]");
        let d = self.head_dim;
        let q = self
            .q_proj
            .forward(x)
            .view([b, l, self.heads, d])
            .transpose(1, 2);
        let k = self
            .k_proj
            .forward(x)
            .view([b, l, self.kv_heads, d])
            .transpose(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .view([b, l, self.kv_heads, d])
            .transpose(1, 2);
        let q = apply_rotary(&q, cos, sin);
        let k = apply_rotary(&k, cos, sin);
        // Causal mask only: sequences are right-padded, so real tokens never see padding.
        // enable_gqa: kv head g serves q heads g·r .. g·r+r-1, as HF repeat_kv does.
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            true,
            None,
            self.heads != self.kv_heads,
        );
        self.o_proj
            .forward(&o.transpose(1, 2).reshape([b, l, self.heads * d]))
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(w: &mut Weights, p: &str, c: &Qwen2Config) -> Self {
        let (h, d) = (c.hidden_size, c.head_dim());
        let lin =
            |w: &mut Weights, n: &str, i, o, bias| Linear::load(w, &format!("{p}.{n}"), i, o, bias);
        Self {
            input_layernorm: RmsNorm::load(
                w,
                &format!("{p}.input_layernorm.weight"),
                h,
                c.rms_norm_eps,
            ),
            self_attn: Attention {
                q_proj: lin(w, "self_attn.q_proj", h, c.num_attention_heads * d, true),
                k_proj: lin(w, "self_attn.k_proj", h, c.num_key_value_heads * d, true),
                v_proj: lin(w, "self_attn.v_proj", h, c.num_key_value_heads * d, true),
                o_proj: lin(w, "self_attn.o_proj", c.num_attention_heads * d, h, false),
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: d,
            },
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                c.rms_norm_eps,
            ),
            mlp: Mlp {
                gate_proj: lin(w, "mlp.gate_proj", h, c.intermediate_size, false),
                up_proj: lin(w, "mlp.up_proj", h, c.intermediate_size, false),
                down_proj: lin(w, "mlp.down_proj", c.intermediate_size, h, false),
            },
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let x = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin);
        let h = self.post_attention_layernorm.forward(&x);
        let m = &self.mlp;
        &x + m
            .down_proj
            .forward(&(m.gate_proj.forward(&h).silu() * m.up_proj.forward(&h)))
    }
}

/// Qwen2ForCausalLM.
#[derive(Debug)]
pub struct Qwen2ForCausalLM {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    cfg: Qwen2Config,
    vocab_kept: i64,
}

impl Qwen2ForCausalLM {
    /// Loads `model.*` and `lm_head.weight`. `vocab_keep`: keep only the first rows of `embed_tokens`
    /// and `lm_head` (the seed resizes both to `len(tokenizer)`, spec-judges §0.3); `None` keeps all.
    pub fn load(w: &mut Weights, cfg: &Qwen2Config, vocab_keep: Option<i64>) -> Result<Self> {
        cfg.validate()?;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        if let Some(k) = vocab_keep {
            ensure!(
                k >= 1 && k <= v,
                "vocab_keep {k} is outside 1..={v} (config vocab_size)"
            );
        }
        let embed_tokens = w.get_rows("model.embed_tokens.weight", &[v, h], vocab_keep);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(w, &format!("model.layers.{i}"), cfg))
            .collect();
        let norm = RmsNorm::load(w, "model.norm.weight", h, cfg.rms_norm_eps);
        let lm_head = if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            embed_tokens.shallow_clone()
        } else {
            w.get_rows("lm_head.weight", &[v, h], vocab_keep)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cfg: cfg.clone(),
            vocab_kept: vocab_keep.unwrap_or(v),
        })
    }

    pub fn config(&self) -> &Qwen2Config {
        &self.cfg
    }

    /// (original name, tensor) of every weight (shallow clones sharing storage), for training.
    /// A tied `lm_head` is listed once, as `model.embed_tokens.weight`.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.shallow_clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.weight.shallow_clone(),
            ));
            let a = &l.self_attn;
            a.q_proj
                .named_tensors(&format!("{p}.self_attn.q_proj"), &mut out);
            a.k_proj
                .named_tensors(&format!("{p}.self_attn.k_proj"), &mut out);
            a.v_proj
                .named_tensors(&format!("{p}.self_attn.v_proj"), &mut out);
            a.o_proj
                .named_tensors(&format!("{p}.self_attn.o_proj"), &mut out);
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.shallow_clone(),
            ));
            l.mlp
                .gate_proj
                .named_tensors(&format!("{p}.mlp.gate_proj"), &mut out);
            l.mlp
                .up_proj
                .named_tensors(&format!("{p}.mlp.up_proj"), &mut out);
            l.mlp
                .down_proj
                .named_tensors(&format!("{p}.mlp.down_proj"), &mut out);
        }
        out.push(("model.norm.weight".into(), self.norm.weight.shallow_clone()));
        if self.lm_head.data_ptr() != self.embed_tokens.data_ptr() {
            out.push(("lm_head.weight".into(), self.lm_head.shallow_clone()));
        }
        out
    }
    /// Rows of the (possibly truncated) vocabulary = width of the logits.
    pub fn vocab_size(&self) -> i64 {
        self.vocab_kept
    }
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Token ids (any int shape, all in 0..vocab) → embeddings [..., hidden].
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(
            &self.embed_tokens,
            &ids.to_device(self.device()),
            -1,
            false,
            false,
        )
    }

    /// Embeddings [B, L, hidden] (positions 0..L-1, causal) → final-normed hidden states [B, L, hidden].
    pub fn forward_hidden(&self, embeds: &Tensor) -> Result<Tensor> {
        let s = embeds.size();
        ensure!(
            s.len() == 3 && s[2] == self.cfg.hidden_size,
            "qwen2: expected embeds [B, L, {}], got {s:?}",
            self.cfg.hidden_size
        );
        let (cos, sin) = rotary_tables(
            self.cfg.theta(),
            self.cfg.head_dim(),
            s[1],
            self.device(),
            self.kind(),
        );
        let mut h = embeds.to_device(self.device()).to_kind(self.kind());
        for layer in &self.layers {
            h = layer.forward(&h, &cos, &sin);
        }
        Ok(self.norm.forward(&h))
    }

    /// Hidden states [..., hidden] → fp32 logits [..., vocab] (HF upcasts logits to fp32).
    pub fn lm_logits(&self, hidden: &Tensor) -> Tensor {
        hidden
            .to_kind(self.kind())
            .linear(&self.lm_head, None::<Tensor>)
            .to_kind(Kind::Float)
    }

    /// Token ids [B, L] → fp32 logits [B, L, vocab].
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.lm_logits(&self.forward_hidden(&self.embed(ids))?))
    }
}
