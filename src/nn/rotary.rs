//! Rotary position embeddings, NeoX "rotate_half" style, optionally on the first `rot_dim` dims only
//! (Phi's partial rotary). The cos/sin tables are computed in fp32 and cast to the activation dtype.
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Rotary {
    rot_dim: i64,
    inv_freq: Tensor,
}

impl Rotary {
    pub fn new(rot_dim: i64, theta: f64, device: Device) -> Self {
        let idx = Tensor::arange_start_step(0, rot_dim, 2, (Kind::Float, device));
        let inv_freq = (idx / rot_dim as f64 * theta.ln()).exp().reciprocal();
        Self { rot_dim, inv_freq }
    }

    /// cos/sin tables for `positions` (int64 [L]) → two [L, rot_dim] fp32 tensors.
    pub fn tables(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let t = positions
            .to_kind(Kind::Float)
            .to_device(self.inv_freq.device());
        let freqs = t.unsqueeze(1) * self.inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    /// Applies the rotation to `xs` [B, H, L, D] with tables [L, rot_dim]; dims ≥ rot_dim pass through.
    pub fn apply(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = xs.size()[3];
        let kind = xs.kind();
        let cos = cos.to_kind(kind);
        let sin = sin.to_kind(kind);
        let x_rot = xs.narrow(3, 0, self.rot_dim);
        let half = self.rot_dim / 2;
        let rotated = Tensor::cat(
            &[-x_rot.narrow(3, half, half), x_rot.narrow(3, 0, half)],
            -1,
        );
        let out = &x_rot * &cos + rotated * &sin;
        if self.rot_dim == d {
            out
        } else {
            Tensor::cat(&[out, xs.narrow(3, self.rot_dim, d - self.rot_dim)], -1)
        }
    }
}
