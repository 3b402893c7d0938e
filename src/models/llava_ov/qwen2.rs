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
    rotary_tables_from(theta, head_dim, 0, len, device, kind)
}

/// Like [`rotary_tables`] for positions `start..start + len` (decoding after a KV cache); each
/// row is computed exactly as the full table's row of that position.
pub fn rotary_tables_from(
    theta: f64,
    head_dim: i64,
    start: i64,
    len: i64,
    device: Device,
    kind: Kind,
) -> (Tensor, Tensor) {
    let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
        .to_kind(Kind::Float)
        / head_dim as f64;
    let inv_freq = Tensor::pow_scalar(theta, &exponent).reciprocal();
    let pos = Tensor::arange_start(start, start + len, (Kind::Int64, device)).to_kind(Kind::Float);
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
    /// `x` [B, L, C] at positions `past.len..past.len + L` → (output [B, L, C], keys and values of
    /// the whole sequence so far [B, kv_heads, past + L, head_dim], after RoPE, not repeated).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<&(Tensor, Tensor)>,
    ) -> (Tensor, Tensor, Tensor) {
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
        let mut k = apply_rotary(&k, cos, sin);
        let mut v = v;
        let mut p = 0;
        if let Some((pk, pv)) = past {
            p = pk.size()[2];
            k = Tensor::cat(&[pk, &k], 2);
            v = Tensor::cat(&[pv, &v], 2);
        }
        // Without a cache: causal mask only (sequences are right-padded, so real tokens never see
        // padding). With one, SDPA's is_causal would align the mask to the top-left corner, so a
        // single query would see only the first key: one new query attends to every cached key
        // (no mask), and several new queries get the explicit bottom-right causal mask.
        let (mask, causal) = if p == 0 {
            (None, true)
        } else if l == 1 {
            (None, false)
        } else {
            let i = Tensor::arange(l, (Kind::Int64, x.device())).unsqueeze(1);
            let j = Tensor::arange(p + l, (Kind::Int64, x.device())).unsqueeze(0);
            (Some(j.le_tensor(&(i + p))), false)
        };
        // enable_gqa: kv head g serves q heads g·r .. g·r+r-1, as HF repeat_kv does.
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            causal,
            None,
            self.heads != self.kv_heads,
        );
        let o = self
            .o_proj
            .forward(&o.transpose(1, 2).reshape([b, l, self.heads * d]));
        (o, k, v)
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

    /// See [`Attention::forward`]: also returns the layer's keys and values so far.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<&(Tensor, Tensor)>,
    ) -> (Tensor, Tensor, Tensor) {
        let (a, k, v) = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, past);
        let x = x + a;
        let h = self.post_attention_layernorm.forward(&x);
        let m = &self.mlp;
        let y = &x
            + m.down_proj
                .forward(&(m.gate_proj.forward(&h).silu() * m.up_proj.forward(&h)));
        (y, k, v)
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
            h = layer.forward(&h, &cos, &sin, None).0;
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

    /// Embeddings [B, L, hidden] of the positions after those in `cache` (all of them when it is
    /// empty: the prefill) → final-normed hidden states [B, L, hidden]; their keys and values are
    /// appended to `cache`. Rows must have no padding (every row is `cache.len() + L` long).
    pub fn forward_cached(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let s = embeds.size();
        ensure!(
            s.len() == 3 && s[2] == self.cfg.hidden_size,
            "qwen2: expected embeds [B, L, {}], got {s:?}",
            self.cfg.hidden_size
        );
        ensure!(
            cache.layers.is_empty() || cache.layers.len() == self.layers.len(),
            "qwen2: KV cache has {} layers, the model {}",
            cache.layers.len(),
            self.layers.len()
        );
        let (cos, sin) = rotary_tables_from(
            self.cfg.theta(),
            self.cfg.head_dim(),
            cache.len(),
            s[1],
            self.device(),
            self.kind(),
        );
        let mut h = embeds.to_device(self.device()).to_kind(self.kind());
        let mut next = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, k, v) = layer.forward(&h, &cos, &sin, cache.layers.get(i));
            h = y;
            next.push((k, v));
        }
        cache.layers = next;
        Ok(self.norm.forward(&h))
    }

    /// Greedy decoding of `max_new` tokens after the prompt `embeds` [B, L, hidden] as HF
    /// `generate(do_sample=False, max_new_tokens)` runs it with its KV cache: one prefill (logits of
    /// the last position only), then one one-token step per further token (`max_new − 1` steps).
    /// No stop at EOS. Returns the ids [B, max_new].
    pub fn greedy_generate(&self, embeds: &Tensor, max_new: usize) -> Result<Tensor> {
        ensure!(max_new > 0, "max_new must be positive");
        let _g = tch::no_grad_guard();
        let mut cache = KvCache::default();
        let h = self.forward_cached(embeds, &mut cache)?;
        let last = |h: &Tensor| {
            self.lm_logits(&h.select(1, h.size()[1] - 1))
                .argmax(-1, false)
        };
        let mut tok = last(&h);
        let mut out = vec![tok.shallow_clone()];
        for _ in 1..max_new {
            let h = self.forward_cached(&self.embed(&tok.unsqueeze(1)), &mut cache)?;
            tok = last(&h);
            out.push(tok.shallow_clone());
        }
        Ok(Tensor::stack(&out, 1))
    }
}

/// Keys and values of every layer for the positions decoded so far, each
/// [B, kv_heads, T, head_dim] after RoPE (HF `DynamicCache`: grown by concatenation).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Positions cached (T).
    pub fn len(&self) -> i64 {
        self.layers.first().map(|(k, _)| k.size()[2]).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::LlavaOvConfig;
    use super::super::train::{init_weights, model_from_tensors};
    use super::*;

    #[test]
    fn kv_cached_decode_matches_full_forward() {
        // GQA (4 heads on 2 kv heads) and θ 1e6 as the 7B judge; 2 rows, no padding.
        let cfg = LlavaOvConfig::from_json_str(
            r#"{"vocab_size":50,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":2,"rope_theta":1000000.0,
                "vision_config":{"hidden_size":32,"intermediate_size":32,"num_hidden_layers":2,
                "num_attention_heads":2,"image_size":32,"patch_size":16}}"#,
        )
        .unwrap();
        let model = model_from_tensors(cfg.clone(), init_weights(&cfg, 5), Device::Cpu).unwrap();
        let lm = model.language_model();
        // Larger weights than the 0.02 init, so attention is far from uniform.
        tch::no_grad(|| {
            for (_, t) in lm.named_tensors() {
                if t.dim() == 2 {
                    let mut t = t;
                    let _ = t.g_mul_scalar_(20.0);
                }
            }
        });
        tch::manual_seed(7);
        let ids = Tensor::randint(50, [2, 12], (Kind::Int64, Device::Cpu));
        let full = |upto: i64| {
            lm.forward(&ids.narrow(1, 0, upto))
                .unwrap()
                .select(1, upto - 1)
        };
        let _g = tch::no_grad_guard();
        let mut cache = KvCache::default();
        // Prefill of 5 positions, then a 3-token chunk (explicit causal mask), then single steps.
        let h = lm
            .forward_cached(&lm.embed(&ids.narrow(1, 0, 5)), &mut cache)
            .unwrap();
        let mut worst: f64 = 0.0;
        let mut check = |h: &Tensor, upto: i64| {
            let got = lm.lm_logits(&h.select(1, h.size()[1] - 1));
            let d = (got - full(upto)).abs().max().double_value(&[]);
            worst = worst.max(d);
        };
        check(&h, 5);
        let h = lm
            .forward_cached(&lm.embed(&ids.narrow(1, 5, 3)), &mut cache)
            .unwrap();
        check(&h, 8);
        assert_eq!(cache.len(), 8);
        for t in 8..12 {
            let h = lm
                .forward_cached(&lm.embed(&ids.narrow(1, t, 1)), &mut cache)
                .unwrap();
            check(&h, t + 1);
        }
        assert_eq!(cache.len(), 12);
        assert!(worst <= 1e-4, "cached vs full logits differ by {worst}");

        // Greedy generation through the cache = argmax of full forwards over the growing sequence.
        let prompt = ids.narrow(1, 0, 4);
        let gen = lm.greedy_generate(&lm.embed(&prompt), 5).unwrap();
        let mut seq = prompt.shallow_clone();
        for _ in 0..5 {
            let next = lm
                .forward(&seq)
                .unwrap()
                .select(1, seq.size()[1] - 1)
                .argmax(-1, false);
            seq = Tensor::cat(&[seq, next.unsqueeze(1)], 1);
        }
        assert_eq!(gen, seq.narrow(1, 4, 5));
    }
}
