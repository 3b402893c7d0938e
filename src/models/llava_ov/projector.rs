//! `mlp2x_gelu` projector (seed multimodal_projector/builder.py:41-48): Linear → exact GELU → Linear,
//! checkpoint indices `mm_projector.0` and `mm_projector.2` (index 1 is the parameter-free GELU).
use super::siglip::Linear;
use super::weights::Weights;
use tch::Tensor;

#[derive(Debug)]
pub struct Projector {
    linear_0: Linear,
    linear_2: Linear,
}

impl Projector {
    /// `prefix` = "model.mm_projector".
    pub fn load(w: &mut Weights, prefix: &str, vision_hidden: i64, text_hidden: i64) -> Self {
        Self {
            linear_0: Linear::load(w, &format!("{prefix}.0"), vision_hidden, text_hidden, true),
            linear_2: Linear::load(w, &format!("{prefix}.2"), text_hidden, text_hidden, true),
        }
    }

    /// (name, tensor) under `prefix` (shallow clones), for training.
    pub fn named_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.linear_0
            .named_tensors(&format!("{prefix}.0"), &mut out);
        self.linear_2
            .named_tensors(&format!("{prefix}.2"), &mut out);
        out
    }

    /// [..., vision_hidden] → [..., text_hidden].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        // nn.GELU() default = exact erf form (not the tanh approximation SigLIP uses).
        self.linear_2
            .forward(&self.linear_0.forward(x).gelu("none"))
    }
}
