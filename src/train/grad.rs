//! Gradient utilities: global L2 norm (for logging), clipping by global norm, zeroing.
//!
//! Matches `torch.nn.utils.clip_grad_norm_`: `total = ||(||g_1||, .., ||g_n||)||_2` computed in fp32,
//! `coef = max_norm / (total + 1e-6)`, grads scaled in place only when `coef < 1`. Variables whose
//! grad is undefined (never reached by backward) are ignored; with no grads at all the norm is 0.

use tch::{nn::VarStore, Kind, Tensor};

/// The trainable variables of `vs` that currently require grad (partially frozen stores skip the
/// frozen ones), in creation order.
pub fn trainable_vars(vs: &VarStore) -> Vec<Tensor> {
    vs.trainable_variables()
        .into_iter()
        .filter(|t| t.requires_grad())
        .collect()
}

fn defined_grads(vars: &[Tensor]) -> Vec<Tensor> {
    vars.iter()
        .map(|v| v.grad())
        .filter(|g| g.defined())
        .collect()
}

/// Global L2 norm of the defined grads of `vars` as a 0-d fp32 tensor (no host sync).
pub fn grad_norm_tensor(vars: &[Tensor]) -> Option<Tensor> {
    let grads = defined_grads(vars);
    if grads.is_empty() {
        return None;
    }
    let norms: Vec<Tensor> = tch::no_grad(|| {
        grads
            .iter()
            .map(|g| {
                if g.kind() == Kind::Float {
                    g.norm()
                } else {
                    g.to_kind(Kind::Float).norm()
                }
            })
            .collect()
    });
    // Norms may live on different devices in exotic setups; gather them on the first one.
    let dev = norms[0].device();
    let norms: Vec<Tensor> = norms.into_iter().map(|n| n.to_device(dev)).collect();
    Some(tch::no_grad(|| Tensor::stack(&norms, 0).norm()))
}

/// Global L2 norm of the defined grads of `vars` (0.0 when no grad is defined). One host sync.
pub fn grad_norm(vars: &[Tensor]) -> f64 {
    grad_norm_tensor(vars)
        .map(|n| n.double_value(&[]))
        .unwrap_or(0.0)
}

/// Clips the defined grads of `vars` in place to global L2 norm `max_norm` and returns the norm
/// *before* clipping (for logging). A non-finite norm is returned as is and nothing is scaled, so
/// the caller can decide to skip the step.
pub fn clip_grad_norm(vars: &[Tensor], max_norm: f64) -> f64 {
    let total = grad_norm(vars);
    // max_norm ≤ 0 means no clipping (the paper's DPO runs without it); the norm is still reported.
    if !total.is_finite() || max_norm <= 0.0 {
        return total;
    }
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        tch::no_grad(|| {
            for mut g in defined_grads(vars) {
                let _ = g.g_mul_scalar_(coef);
            }
        });
    }
    total
}

/// Zeroes the defined grads of `vars` in place. tch has no API to reset `.grad` to undefined, so
/// this is torch's `zero_grad(set_to_none=False)`: once a variable got a grad it keeps being
/// stepped (with a zero grad) by the optimizer.
pub fn zero_grad(vars: &[Tensor]) {
    for v in vars {
        let mut v = v.shallow_clone();
        v.zero_grad();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    #[test]
    fn norm_and_clip_with_undefined_grads() {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let a = root.var_copy("a", &Tensor::from_slice(&[1.0f32, 2.0]));
        let b = root.var_copy("b", &Tensor::from_slice(&[3.0f32]));
        let _unused = root.var("c", &[4], nn::Init::Const(1.0));
        assert_eq!(grad_norm(&trainable_vars(&vs)), 0.0);
        // d/da sum(a^2) = 2a = [2, 4]; d/db sum(2 b) = 2 -> ||(2,4,2)|| = sqrt(24).
        let loss = (&a * &a).sum(Kind::Float) + (&b * 2.0).sum(Kind::Float);
        loss.backward();
        let vars = trainable_vars(&vs);
        let want = 24f64.sqrt();
        assert!((grad_norm(&vars) - want).abs() < 1e-6);
        // No-op clip when under the limit.
        assert!((clip_grad_norm(&vars, 10.0) - want).abs() < 1e-6);
        assert!((grad_norm(&vars) - want).abs() < 1e-6);
        // Clip to 1: returns the old norm, new norm ~1, direction kept.
        let before = clip_grad_norm(&vars, 1.0);
        assert!((before - want).abs() < 1e-6);
        assert!((grad_norm(&vars) - 1.0).abs() < 1e-5);
        let ga = Vec::<f32>::try_from(a.grad()).unwrap();
        assert!((ga[1] / ga[0] - 2.0).abs() < 1e-6);
        zero_grad(&vars);
        assert_eq!(grad_norm(&vars), 0.0);
    }

    #[test]
    fn bf16_grads_norm_in_fp32() {
        let mut vs = VarStore::new(Device::Cpu);
        let a = vs.root().var_copy("a", &Tensor::from_slice(&[3.0f32, 4.0]));
        vs.bfloat16();
        assert_eq!(a.kind(), Kind::BFloat16);
        (&a * &a).sum(Kind::BFloat16).backward();
        assert!((grad_norm(&trainable_vars(&vs)) - 10.0).abs() < 1e-6);
    }

    #[test]
    fn nonfinite_norm_does_not_scale() {
        let vs = VarStore::new(Device::Cpu);
        let a = vs.root().var_copy("a", &Tensor::from_slice(&[1.0f32]));
        (&a * f64::INFINITY).sum(Kind::Float).backward();
        let vars = trainable_vars(&vs);
        assert!(!clip_grad_norm(&vars, 1.0).is_finite());
        assert!(f64::try_from(a.grad().sum(Kind::Float))
            .unwrap()
            .is_infinite());
    }

    #[test]
    fn zero_max_norm_disables_clipping() {
        let vs = VarStore::new(Device::Cpu);
        let a = vs.root().var_copy("a", &Tensor::from_slice(&[3.0f32, 4.0]));
        (&a * &a).sum(Kind::Float).backward();
        let vars = trainable_vars(&vs);
        assert!((clip_grad_norm(&vars, 0.0) - 10.0).abs() < 1e-5);
        let g: Vec<f32> = Vec::try_from(a.grad()).unwrap();
        assert_eq!(g, vec![6.0, 8.0]);
        assert!((clip_grad_norm(&vars, 5.0) - 10.0).abs() < 1e-5);
        let g: Vec<f32> = Vec::try_from(a.grad()).unwrap();
        assert!((g[0] - 3.0).abs() < 1e-4 && (g[1] - 4.0).abs() < 1e-4);
    }
}
