//! `imgcot-train bench sampler`: best-of-8 sampling of one prompt (18 steps, CFG 1.75) on a
//! mid-size random Show-o, batched with the cached text prefix, against the paper's structure —
//! the 8 candidates decoded one by one with a full uncached forward per step.
use crate::generate::{self, derive_seed, literal::sample_literal, NoHook, SamplerConfig};
use crate::models::showo::{Config, Layout, Showo};
use anyhow::Result;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to benchmark: `sampler`, `vq` (MAGVIT-v2 decode), `dpo-step`.
    #[arg(default_value = "sampler")]
    pub what: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Candidates per prompt (sampler), images (vq), pairs (dpo-step).
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    #[arg(long, default_value_t = 18)]
    pub steps: usize,
    /// Model size: `mid` (CPU benchmark) or `full` (Show-o 1.3B shape, for GPUs).
    #[arg(long, default_value = "mid")]
    pub size: String,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

pub fn config(size: &str) -> Result<Config> {
    Ok(match size {
        // 8 layers, hidden 512, 256 image tokens, Show-o's 129-token text part and 8192 codes.
        "mid" => Config::from_json(
            r#"{"hidden_size":512,"intermediate_size":2048,"num_hidden_layers":8,"num_attention_heads":8}"#,
        )?,
        "full" => Config::default(),
        _ => anyhow::bail!("unknown size '{size}' (mid, full)"),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what.as_str() {
        "sampler" => sampler(args),
        "vq" => vq(args),
        "dpo-step" => dpo_step(args),
        other => anyhow::bail!("unknown benchmark '{other}' (sampler, vq, dpo-step)"),
    }
}

fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// MAGVIT-v2 (full size, random weights) decode of `n` 256² images.
fn vq(args: BenchArgs) -> Result<()> {
    let device = crate::util::parse_device(&args.device)?;
    tch::manual_seed(0);
    let m =
        crate::models::magvit2::Magvit2::new(crate::models::magvit2::Config::default(), device)?;
    let codes = Tensor::randint(8192, [args.n as i64, 256], (Kind::Int64, device));
    let mut t = Vec::new();
    for _ in 0..args.reps {
        let s = Instant::now();
        let _ = tch::no_grad(|| m.decode(&codes))?;
        sync(device);
        t.push(s.elapsed().as_secs_f64());
    }
    let med = median(t);
    println!("bench vq: MAGVIT-v2 decode of {} codes grids (256²) on {device:?}: {med:.3} s ({:.1} images/s)", args.n, args.n as f64 / med);
    Ok(())
}

/// One DPO optimizer step on `n` pairs (random codes) with a random Show-o of `--size`, with a
/// frozen reference forward and with precomputed reference log-probs.
fn dpo_step(args: BenchArgs) -> Result<()> {
    use crate::dpo::logp::{pair_draws, LogpConfig, PairBatch};
    use crate::dpo::loss::{dpo_loss, LossConfig, PairLogps};
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    tch::manual_seed(0);
    let policy = Showo::new(config(&args.size)?, device, kind)?;
    let reference = Showo::new(config(&args.size)?, device, kind)?;
    let layout = Layout::with_ids(&policy.cfg, 50256, 50256);
    let b = args.n as i64;
    let n = layout.num_vq_tokens;
    let text = Tensor::from_slice(&layout.text_ids(&[64, 1402, 286, 257, 3797]))
        .view([1, layout.text_len])
        .expand([b, layout.text_len], false)
        .to_device(device);
    let chosen = Tensor::randint(policy.cfg.codebook_size, [b, n], (Kind::Int64, device));
    let rejected = Tensor::randint(policy.cfg.codebook_size, [b, n], (Kind::Int64, device));
    let lcfg = LogpConfig {
        n_mc: 1,
        ..Default::default()
    };
    let draws: Vec<_> = (0..b as u64)
        .map(|i| pair_draws(0, 0, i, n as usize, &lcfg))
        .collect();
    let batch = PairBatch::new(&layout, &text, &chosen, &rejected, &draws);
    let mut opt = crate::train::optim::AdamW::new(&policy.vs, Default::default())?;
    for precomputed in [false, true] {
        let (rc0, rr0) = tch::no_grad(|| batch.logps(&reference, &layout, &lcfg));
        let mut t = Vec::new();
        for _ in 0..args.reps {
            let s = Instant::now();
            opt.zero_grad();
            let (pc, pr) = batch.logps(&policy, &layout, &lcfg);
            let (rc, rr) = if precomputed {
                (rc0.shallow_clone(), rr0.shallow_clone())
            } else {
                tch::no_grad(|| batch.logps(&reference, &layout, &lcfg))
            };
            let out = dpo_loss(
                &LossConfig::default(),
                &PairLogps {
                    policy_chosen: &pc,
                    policy_rejected: &pr,
                    ref_chosen: &rc,
                    ref_rejected: &rr,
                },
                None,
            )?;
            out.loss.backward();
            opt.step()?;
            sync(device);
            t.push(s.elapsed().as_secs_f64());
        }
        println!("bench dpo-step: {} pairs, {} params, {device:?} {kind:?}, reference {}: {:.3} s per step", b, policy.num_parameters(), if precomputed { "precomputed" } else { "frozen copy" }, median(t));
    }
    Ok(())
}

fn sampler(args: BenchArgs) -> Result<()> {
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    tch::manual_seed(0);
    let model = Showo::new(config(&args.size)?, device, kind)?;
    let layout = Layout::with_ids(&model.cfg, 50256, 50256);
    let text = Tensor::from_slice(&layout.text_ids(&[64, 1402, 286, 257, 3797]))
        .view([1, layout.text_len]);
    let cfg = SamplerConfig {
        steps: args.steps,
        cfg_scale: 1.75,
        ..Default::default()
    };
    let seeds: Vec<u64> = (0..args.n as u64).map(|k| derive_seed(0, 0, k)).collect();
    println!(
        "bench sampler: {} params, {} image tokens, best-of-{} × {} steps, CFG {}, {device:?} {kind:?}, {} threads",
        model.num_parameters(),
        layout.num_vq_tokens,
        args.n,
        args.steps,
        cfg.cfg_scale,
        tch::get_num_threads()
    );
    let sync = || sync(device);
    let mut batched = Vec::new();
    let mut looped = Vec::new();
    let mut agree = 0.0;
    for _ in 0..args.reps {
        let t = Instant::now();
        let out = generate::sample(
            &model,
            &layout,
            &text,
            &vec![0; args.n],
            &seeds,
            &cfg,
            &mut NoHook,
        )?;
        sync();
        batched.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut codes = Vec::new();
        for &s in &seeds {
            codes.push(sample_literal(&model, &layout, &text, &[s], &cfg)?);
        }
        sync();
        looped.push(t.elapsed().as_secs_f64());
        // Same seeds → same images up to float noise: the cached batch and the full uncached
        // forward differ by ~1e-6 in the logits, which can flip a draw that lands on a CDF boundary.
        let seq = Tensor::cat(&codes, 0).to_device(tch::Device::Cpu);
        agree = out
            .codes
            .eq_tensor(&seq)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
    }
    let (b, l) = (median(batched), median(looped));
    println!(
        "batched + cached prefix: {b:.3} s per prompt ({:.2} images/s)",
        args.n as f64 / b
    );
    println!(
        "sequential, uncached:    {l:.3} s per prompt ({:.2} images/s)",
        args.n as f64 / l
    );
    println!(
        "speed-up: {:.2}×; codes identical on both paths: {:.2}%",
        l / b,
        100.0 * agree
    );
    Ok(())
}
