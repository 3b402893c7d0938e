//! The spec's MaskGIT loop written literally (spec-showo.md §4): a full, uncached forward of the
//! whole sequence at every step, cond and uncond rows in one batch, sampling per row with the same
//! per-candidate random streams as [`super::sampler`]. It is the structure of the paper's code
//! (one forward of the full sequence per step) and serves as the reference for tests and the
//! benchmark baseline.
use super::sampler::{unit_f32, SamplerConfig};
use crate::models::showo::{omni_attention_mask, Layout, Showo};
use anyhow::Result;
use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;
use tch::{Kind, Tensor};

pub fn sample_literal(
    model: &Showo,
    layout: &Layout,
    text: &Tensor,
    seeds: &[u64],
    cfg: &SamplerConfig,
) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let dev = model.device();
    let text = &text.to_device(dev);
    let b = text.size()[0];
    let n = layout.num_vq_tokens;
    let k = model.cfg.codebook_size;
    let off = layout.sp.image_offset;
    let mut ids = layout.generation_ids(text);
    let unc_text = layout.uncond_text(dev).expand([b, layout.text_len], false);
    let t = layout.text_len;
    let mut rngs: Vec<ChaCha8Rng> = seeds
        .iter()
        .map(|&s| ChaCha8Rng::seed_from_u64(s))
        .collect();
    let mut temp = cfg.temperature;
    let mut last = Tensor::zeros([b, n], (Kind::Int64, dev));
    for step in 0..cfg.steps {
        let logits = if cfg.cfg_scale != 0.0 {
            let unc = Tensor::cat(&[&unc_text, &ids.narrow(1, t, ids.size()[1] - t)], 1);
            let both = Tensor::cat(&[&ids, &unc], 0);
            let l = model.forward(&both, &omni_attention_mask(&both, &layout.sp));
            let (c, u) = (l.narrow(0, 0, b), l.narrow(0, b, b));
            c * (1.0 + cfg.cfg_scale) - u * cfg.cfg_scale
        } else {
            model.forward(&ids, &omni_attention_mask(&ids, &layout.sp))
        };
        let logits = logits.narrow(1, t + 1, n).narrow(2, off, k);
        let probs = logits.softmax(-1, Kind::Float);
        let img = ids.narrow(1, t + 1, n);
        let unknown = img.eq(layout.mask_id);
        let cur =
            (&img - off).where_self(&unknown.logical_not(), &Tensor::from(-1i64).to_device(dev));
        let ratio = (step as f32 + 1.0) / cfg.steps as f32;
        let mut samp_v = vec![0i64; (b * n) as usize];
        let mut gum_v = vec![0f32; (b * n) as usize];
        let p = Vec::<f32>::try_from(probs.flatten(0, -1).to_device(tch::Device::Cpu))?;
        for r in 0..b as usize {
            let us: Vec<f32> = (0..n).map(|_| unit_f32(&mut rngs[r])).collect();
            for (j, u) in us.iter().enumerate() {
                let row = &p[(r * n as usize + j) * k as usize..][..k as usize];
                let total: f32 = row.iter().sum();
                let mut acc = 0f32;
                let mut pick = k - 1;
                for (c, &pc) in row.iter().enumerate() {
                    acc += pc;
                    if acc > u * total {
                        pick = c as i64;
                        break;
                    }
                }
                samp_v[r * n as usize + j] = pick;
            }
            for j in 0..n as usize {
                gum_v[r * n as usize + j] = unit_f32(&mut rngs[r]);
            }
        }
        let samp = Tensor::from_slice(&samp_v)
            .view([b, n])
            .to_device(dev)
            .where_self(&unknown, &cur);
        let conf_p = probs.gather(2, &samp.unsqueeze(-1), false).squeeze_dim(-1);
        let conf_p = conf_p.where_self(&unknown, &Tensor::from(f32::MAX).to_device(dev));
        let cap = (n as f32 * cfg.schedule.ratio(ratio)).floor() as i64;
        let mask_len = (unknown.sum_dim_intlist(-1, true, Kind::Int64) - 1)
            .clamp_max(cap)
            .clamp_min(1);
        temp *= 1.0 - ratio as f64;
        let u = Tensor::from_slice(&gum_v).view([b, n]).to_device(dev);
        let gumbel = -(-(u.clamp_min(1e-20).log())).clamp_min(1e-20).log();
        let conf = conf_p.clamp_min(1e-20).log() + gumbel * temp;
        let (sorted, _) = conf.sort(-1, false);
        let remask = conf.lt_tensor(&sorted.gather(1, &mask_len, false));
        let new_img = (&samp + off).where_self(
            &remask.logical_not(),
            &Tensor::from(layout.mask_id).to_device(dev),
        );
        ids = Tensor::cat(
            &[
                ids.narrow(1, 0, t + 1),
                new_img,
                ids.narrow(1, t + 1 + n, 1),
            ],
            1,
        );
        last = samp;
    }
    Ok(last)
}
