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
    /// What to benchmark (only `sampler` for now).
    #[arg(default_value = "sampler")]
    pub what: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Candidates per prompt.
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
    anyhow::ensure!(args.what == "sampler", "unknown benchmark '{}' (sampler)", args.what);
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    tch::manual_seed(0);
    let model = Showo::new(config(&args.size)?, device, kind)?;
    let layout = Layout::with_ids(&model.cfg, 50256, 50256);
    let text = Tensor::from_slice(&layout.text_ids(&[64, 1402, 286, 257, 3797])).view([1, layout.text_len]);
    let cfg = SamplerConfig { steps: args.steps, cfg_scale: 1.75, ..Default::default() };
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
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut batched = Vec::new();
    let mut looped = Vec::new();
    for _ in 0..args.reps {
        let t = Instant::now();
        let out = generate::sample(&model, &layout, &text, &vec![0; args.n], &seeds, &cfg, &mut NoHook)?;
        sync();
        batched.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut codes = Vec::new();
        for &s in &seeds {
            codes.push(sample_literal(&model, &layout, &text, &[s], &cfg)?);
        }
        sync();
        looped.push(t.elapsed().as_secs_f64());
        // Same seeds → same images on both paths (fp32; bf16 may differ in rare near-ties).
        if kind == Kind::Float {
            let same = out.codes.eq_tensor(&Tensor::cat(&codes, 0).to_device(tch::Device::Cpu)).all().int64_value(&[]);
            anyhow::ensure!(same == 1, "batched and sequential paths disagree");
        }
    }
    let (b, l) = (median(batched), median(looped));
    println!("batched + cached prefix: {b:.3} s per prompt ({:.2} images/s)", args.n as f64 / b);
    println!("sequential, uncached:    {l:.3} s per prompt ({:.2} images/s)", args.n as f64 / l);
    println!("speed-up: {:.2}×", l / b);
    Ok(())
}
