//! Layers and helpers shared by the model modules: strict checkpoint loading, rotary embeddings,
//! activations.
pub mod rotary;
pub mod weights;

use tch::Tensor;

/// `gelu_new` / `gelu_pytorch_tanh`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_tanh(xs: &Tensor) -> Tensor {
    xs.gelu("tanh")
}

/// Applies the activation named in an HF config (`hidden_act`).
pub fn activation(name: &str, xs: &Tensor) -> anyhow::Result<Tensor> {
    Ok(match name {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => gelu_tanh(xs),
        "gelu" => xs.gelu("none"),
        "silu" | "swish" => xs.silu(),
        "relu" => xs.relu(),
        _ => anyhow::bail!("unsupported activation '{name}'"),
    })
}
