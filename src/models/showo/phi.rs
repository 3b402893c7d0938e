//! The Phi-1.5 decoder layer as Show-o modifies it (spec-showo.md §1): per-head q/k LayerNorm after
//! the head split, partial NeoX rotary on the first `rotary_dim` dims, one shared input LayerNorm
//! feeding attention and MLP in parallel, `gelu_new`, all linears with bias.
use super::config::Config;
use crate::nn::rotary::Rotary;
use tch::nn::{self, Module};
use tch::Tensor;

fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, i, o, cfg)
}

pub(crate) fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    dense: nn::Linear,
    q_layernorm: nn::LayerNorm,
    k_layernorm: nn::LayerNorm,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        Self {
            q_proj: linear(&p / "q_proj", h, h),
            k_proj: linear(&p / "k_proj", h, h),
            v_proj: linear(&p / "v_proj", h, h),
            dense: linear(&p / "dense", h, h),
            q_layernorm: layer_norm(&p / "q_layernorm", hd, cfg.layer_norm_eps),
            k_layernorm: layer_norm(&p / "k_layernorm", hd, cfg.layer_norm_eps),
            heads: cfg.num_attention_heads,
            head_dim: hd,
        }
    }

    fn split(&self, xs: &Tensor) -> Tensor {
        let (b, l, _) = xs.size3().expect("[B, L, H]");
        xs.view([b, l, self.heads, self.head_dim]).transpose(1, 2)
    }

    /// Keys and values of `h` (the layer-normed input) at the positions of the rotary tables.
    pub fn qkv(
        &self,
        h: &Tensor,
        rot: &Rotary,
        cos: &Tensor,
        sin: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let q = self
            .q_layernorm
            .forward(&self.split(&self.q_proj.forward(h)));
        let k = self
            .k_layernorm
            .forward(&self.split(&self.k_proj.forward(h)));
        let v = self.split(&self.v_proj.forward(h));
        (rot.apply(&q, cos, sin), rot.apply(&k, cos, sin), v)
    }

    /// Attention output for queries `q` over keys/values `k`, `v` with a bool mask (true = attend).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
        let (b, _, l, _) = q.size4().expect("[B, H, L, D]");
        let o = Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            Some(mask),
            0.0,
            false,
            None::<f64>,
            false,
        );
        self.dense.forward(
            &o.transpose(1, 2)
                .reshape([b, l, self.heads * self.head_dim]),
        )
    }
}

#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    act: String,
}

impl Mlp {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        Self {
            fc1: linear(&p / "fc1", cfg.hidden_size, cfg.intermediate_size),
            fc2: linear(&p / "fc2", cfg.intermediate_size, cfg.hidden_size),
            act: cfg.hidden_act.clone(),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Tensor {
        // The activation name was validated with the config.
        let h =
            crate::nn::activation(&self.act, &self.fc1.forward(xs)).expect("validated activation");
        self.fc2.forward(&h)
    }
}

#[derive(Debug)]
pub struct PhiLayer {
    input_layernorm: nn::LayerNorm,
    pub self_attn: Attention,
    mlp: Mlp,
}

impl PhiLayer {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        Self {
            input_layernorm: layer_norm(
                &p / "input_layernorm",
                cfg.hidden_size,
                cfg.layer_norm_eps,
            ),
            self_attn: Attention::new(&p / "self_attn", cfg),
            mlp: Mlp::new(&p / "mlp", cfg),
        }
    }

    /// One layer. `past` holds keys/values of earlier positions (the cached text prefix) that the
    /// queries may attend to; `mask` is [B|1, 1, Lq, Lpast + Lq]. Returns (output, k, v) of these positions.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        xs: &Tensor,
        rot: &Rotary,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<(&Tensor, &Tensor)>,
        mask: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let h = self.input_layernorm.forward(xs);
        let (q, k, v) = self.self_attn.qkv(&h, rot, cos, sin);
        let attn = match past {
            Some((pk, pv)) => {
                let kk = Tensor::cat(&[pk, &k], 2);
                let vv = Tensor::cat(&[pv, &v], 2);
                self.self_attn.attend(&q, &kk, &vv, mask)
            }
            None => self.self_attn.attend(&q, &k, &v, mask),
        };
        let out = xs + attn + self.mlp.forward(&h);
        (out, k, v)
    }
}
