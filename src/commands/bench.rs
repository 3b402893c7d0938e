//! `imgcot-train bench`:
//! - `sampler`: best-of-8 sampling of one prompt (18 steps, CFG 1.75) on a mid-size random Show-o,
//!   batched with the cached text prefix, against the paper's structure — the 8 candidates decoded
//!   one by one with a full uncached forward per step;
//! - `vq`: MAGVIT-v2 decode; `dpo-step`: one DPO optimizer step;
//! - `judge`: a random LLaVA-OneVision judge (7B shape or tiny): one forward for P(yes) against a
//!   100-token greedy generate with a KV cache (how the paper's code queries its judges);
//! - `parm`: PARM best-of-N with Show-o, MAGVIT-v2 and that judge, our batched and pruning
//!   `best_of_n_parm` against a sequential loop shaped like the paper's code.
use crate::generate::{self, derive_seed, literal::sample_literal, NoHook, SamplerConfig};
use crate::generate::{StepHook, StepState};
use crate::judge::{OutcomeJudge, StepJudge};
use crate::models::llava_ov::prompt::{orm_prompt, tokenizer_image_token};
use crate::models::llava_ov::train::{init_weights_on, model_from_tensors_kind, WeightInit};
use crate::models::llava_ov::{LlavaJudge, LlavaOvConfig};
use crate::models::showo::{Config, Layout, Showo};
use crate::models::ImageTokenizer;
use crate::verify::{best_of_n_parm, ParmConfig, VerifyStats};
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples (CPU, small sizes, seconds to a minute):
  imgcot-train bench sampler --reps 1
  imgcot-train bench judge --size tiny --reps 1
  imgcot-train bench parm --size mid --n 4 --steps 6
  imgcot-train bench guide-step --n 4 --steps 6 --reps 1
On a GPU (scripts/gpu-checks.sh):
  imgcot-train bench judge --size full --device cuda --dtype bf16 --reps 3
  imgcot-train bench parm --size full --device cuda --dtype bf16 --n 20")]
pub struct BenchArgs {
    /// What to benchmark: `sampler`, `vq` (MAGVIT-v2 decode), `dpo-step`, `judge` (LLaVA-OneVision
    /// forward vs 100-token generate), `parm` (PARM best-of-N, batched vs the paper's loop).
    #[arg(default_value = "sampler")]
    pub what: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Candidates per prompt (sampler, parm), images (vq), pairs (dpo-step).
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    #[arg(long, default_value_t = 18)]
    pub steps: usize,
    /// Model size: `mid` (CPU benchmark) or `full` (Show-o 1.3B shape, for GPUs). judge: `tiny`
    /// (= `mid`) or `full` (LLaVA-OneVision-7B shape); parm: `mid` (mid Show-o, small MAGVIT-v2,
    /// tiny judge) or `full` (Show-o 1.3B, MAGVIT-v2, 7B judge).
    #[arg(long, default_value = "mid")]
    pub size: String,
    /// Repetitions (the median is reported); default 3, parm 1 (after an untimed warm-up).
    #[arg(long)]
    pub reps: Option<usize>,
    /// dpo-step: `frozen` (a reference model kept for every step), `precomputed` (reference
    /// log-probs computed once, then the reference model is dropped, as a cached run holds no
    /// reference), or `both` in one process. Run them as separate processes to compare peak memory.
    #[arg(long, default_value = "both")]
    pub reference: String,
    /// dpo-step: masks per pair (the paper's code draws one).
    #[arg(long, default_value_t = 1)]
    pub n_mc: usize,
    /// guide-step: sampler states replayed per trajectory (0: all).
    #[arg(long, default_value_t = 0)]
    pub replay_steps: usize,
    /// guide-step: KL penalty weight (> 0 also times the frozen reference's replay).
    #[arg(long, default_value_t = 0.0)]
    pub kl_coef: f64,
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

/// The benchmarks' one prompt ("a photo of a cat" in GPT-2 ids) as Show-o's text part, [1, L].
fn bench_prompt(layout: &Layout) -> Tensor {
    Tensor::from_slice(&layout.text_ids(&[64, 1402, 286, 257, 3797])).view([1, layout.text_len])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.reps != Some(0) && args.n > 0 && args.steps > 0 && args.n_mc > 0,
        "--reps, --n, --steps and --n-mc must be positive"
    );
    match args.what.as_str() {
        "sampler" => sampler(args),
        "vq" => vq(args),
        "dpo-step" => dpo_step(args),
        "judge" => judge(args),
        "parm" => parm(args),
        "guide-step" => guide_step(args),
        other => anyhow::bail!(
            "unknown benchmark '{other}' (sampler, vq, dpo-step, guide-step, judge, parm)"
        ),
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
    for _ in 0..args.reps.unwrap_or(3) {
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
    let modes: &[bool] = match args.reference.as_str() {
        "frozen" => &[false],
        "precomputed" => &[true],
        "both" => &[false, true],
        r => anyhow::bail!("--reference {r}: expected frozen, precomputed or both"),
    };
    let policy = Showo::new(config(&args.size)?, device, kind)?;
    let mut reference = Some(Showo::new(config(&args.size)?, device, kind)?);
    let layout = Layout::with_ids(&policy.cfg, 50256, 50256);
    let b = args.n as i64;
    let n = layout.num_vq_tokens;
    let text = bench_prompt(&layout)
        .expand([b, layout.text_len], false)
        .to_device(device);
    let chosen = Tensor::randint(policy.cfg.codebook_size, [b, n], (Kind::Int64, device));
    let rejected = Tensor::randint(policy.cfg.codebook_size, [b, n], (Kind::Int64, device));
    let lcfg = LogpConfig {
        n_mc: args.n_mc.max(1),
        ..Default::default()
    };
    let draws: Vec<_> = (0..b as u64)
        .map(|i| pair_draws(0, 0, i, n as usize, &lcfg))
        .collect();
    let batch = PairBatch::new(&layout, &text, &chosen, &rejected, &draws, None)?;
    let mut opt = crate::train::optim::AdamW::new(&policy.vs, Default::default())?;
    for &precomputed in modes {
        let r = reference
            .as_ref()
            .expect("dropped only after the last frozen mode");
        let (rc0, rr0) = tch::no_grad(|| batch.logps(r, &layout, &lcfg));
        if precomputed {
            // A precomputed-reference run holds no reference model: free it before timing.
            reference = None;
        }
        let mut t = Vec::new();
        for _ in 0..args.reps.unwrap_or(3) {
            let s = Instant::now();
            opt.zero_grad();
            let (pc, pr) = batch.logps(&policy, &layout, &lcfg);
            let (rc, rr) = match &reference {
                Some(r) if !precomputed => tch::no_grad(|| batch.logps(r, &layout, &lcfg)),
                _ => (rc0.shallow_clone(), rr0.shallow_clone()),
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
        println!(
            "bench dpo-step: {} pairs × {} masks, {} params, {device:?} {kind:?}, reference {}: {:.3} s per step",
            b,
            lcfg.n_mc,
            policy.num_parameters(),
            if precomputed { "precomputed (model dropped)" } else { "frozen copy" },
            median(t)
        );
    }
    Ok(())
}

/// One optimizer step of the guidance term alone (`dpo.guide` with `dpo_coef` 0): a random Show-o
/// of `--size` samples `--n` images of one prompt in `--steps` steps with CFG 1.75, a stand-in
/// reward (a hash of each image's codes; the judges have their own benchmarks) feeds the
/// leave-one-out baseline, and the sampled trajectories are replayed with gradient.
fn guide_step(args: BenchArgs) -> Result<()> {
    use crate::dpo::guidance::GuideConfig;
    use crate::dpo::trainer::guided_backward_on;
    // Checked before building a full-size model (guided_backward_on checks them again).
    anyhow::ensure!(
        args.n >= 2,
        "bench guide-step: --n must be at least 2 (leave-one-out baseline)"
    );
    anyhow::ensure!(
        args.kl_coef.is_finite() && args.kl_coef >= 0.0,
        "bench guide-step: --kl-coef must be a finite number ≥ 0"
    );
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    tch::manual_seed(0);
    let policy = Showo::new(config(&args.size)?, device, kind)?;
    let reference = if args.kl_coef > 0.0 {
        Some(Showo::new(config(&args.size)?, device, kind)?)
    } else {
        None
    };
    let layout = Layout::with_ids(&policy.cfg, 50256, 50256);
    let text = bench_prompt(&layout).to_device(device);
    let sampler = SamplerConfig {
        steps: args.steps,
        cfg_scale: 1.75,
        ..Default::default()
    };
    let g = GuideConfig {
        reward_coef: 1.0,
        prompts_per_step: 1,
        samples_per_prompt: args.n,
        every: 1,
        dpo_coef: 0.0,
        replay_steps: args.replay_steps,
        kl_coef: args.kl_coef,
    };
    let prompt_of = vec![0; args.n];
    let mut opt = crate::train::optim::AdamW::new(&policy.vs, Default::default())?;
    let mut rng = crate::train::rng::DataRng::with_stream(0, 0);
    let mut score = |codes: &Tensor| -> Result<Vec<f64>> {
        let sums = Vec::<i64>::try_from(codes.sum_dim_intlist(1, false, Kind::Int64))?;
        Ok(sums.iter().map(|s| (s % 101) as f64 / 100.0).collect())
    };
    let (mut total, mut sampling) = (Vec::new(), Vec::new());
    for rep in 0..args.reps.unwrap_or(3) {
        let seeds: Vec<u64> = (0..args.n as u64)
            .map(|k| derive_seed(1, rep as u64, k))
            .collect();
        let s = Instant::now();
        let _ = generate::sample(
            &policy,
            &layout,
            &text,
            &prompt_of,
            &seeds,
            &sampler,
            &mut NoHook,
        )?;
        sync(device);
        sampling.push(s.elapsed().as_secs_f64());
        let s = Instant::now();
        opt.zero_grad();
        guided_backward_on(
            &policy,
            reference.as_ref(),
            &layout,
            &text,
            &prompt_of,
            &seeds,
            &mut score,
            &g,
            &sampler,
            &mut rng,
        )?;
        opt.step()?;
        sync(device);
        total.push(s.elapsed().as_secs_f64());
    }
    let replayed = g.replayed_states(args.steps);
    println!(
        "bench guide-step: {} samples × {} steps, {replayed} states replayed, KL {}, {} params, {device:?} {kind:?}: {:.3} s per step (sampling alone {:.3} s)",
        args.n,
        args.steps,
        if reference.is_some() { "penalised (frozen reference)" } else { "off" },
        policy.num_parameters(),
        median(total),
        median(sampling)
    );
    Ok(())
}

fn sampler(args: BenchArgs) -> Result<()> {
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    tch::manual_seed(0);
    let model = Showo::new(config(&args.size)?, device, kind)?;
    let layout = Layout::with_ids(&model.cfg, 50256, 50256);
    let text = bench_prompt(&layout);
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
    for _ in 0..args.reps.unwrap_or(3) {
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

/// Generation prompt the judges are asked about (Show-o gets the fixed ids of `bench sampler`).
const JUDGE_PROMPT: &str = "a photo of a cat";

/// LLaVA-OneVision judge config: `full` = the fields of lmms-lab/llava-onevision-qwen2-7b-ov's
/// config.json (Qwen2-7B; no vision_config, so SigLIP-so400m-patch14-384 with 26 of 27 layers);
/// `tiny` = a few-second CPU stand-in with the same structure (GQA, image_newline, "pad").
pub fn judge_config(size: &str, tiny_vocab: i64) -> Result<LlavaOvConfig> {
    let json = match size {
        "full" => r#"{"model_type":"llava","architectures":["LlavaQwenForCausalLM"],
            "vocab_size":152064,"hidden_size":3584,"intermediate_size":18944,"num_hidden_layers":28,
            "num_attention_heads":28,"num_key_value_heads":4,"rope_theta":1000000.0,"rms_norm_eps":1e-6,
            "hidden_act":"silu","max_position_embeddings":32768,"tie_word_embeddings":false,
            "rope_scaling":null,"mm_hidden_size":1152,"mm_projector_type":"mlp2x_gelu",
            "mm_vision_select_layer":-2,"mm_vision_select_feature":"patch",
            "mm_patch_merge_type":"spatial_unpad","image_aspect_ratio":"anyres_max_9",
            "image_grid_pinpoints":"(1x1),...,(6x6)"}"#
            .to_string(),
        "tiny" | "mid" => format!(
            r#"{{"vocab_size":{tiny_vocab},"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "rope_theta":1000000.0,"mm_projector_type":"mlp2x_gelu",
            "mm_patch_merge_type":"spatial_unpad","image_aspect_ratio":"pad",
            "vision_config":{{"hidden_size":32,"intermediate_size":64,"num_hidden_layers":3,
            "num_attention_heads":2,"image_size":64,"patch_size":16}}}}"#
        ),
        _ => anyhow::bail!("unknown judge size '{size}' (tiny, full)"),
    };
    LlavaOvConfig::from_json_str(&json)
}

/// A LLaVA-OneVision judge with random weights drawn on `device` in `kind`, the glyph tokenizer
/// (built in memory: no Qwen tokenizer offline; its ids are < any vocab here, and it has
/// yes/no), and its parameter count.
fn random_judge(
    size: &str,
    device: Device,
    kind: Kind,
) -> Result<(LlavaJudge, tokenizers::Tokenizer, i64)> {
    let tok = crate::glyphs::tokenizer::build()?;
    let cfg = judge_config(size, tok.get_vocab_size(true) as i64)?;
    let tensors = init_weights_on(&cfg, 0, device, kind, WeightInit::Hf);
    let model = model_from_tensors_kind(cfg, tensors, device, kind)?;
    let params = model
        .named_tensors()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    Ok((LlavaJudge::new(model, tok.clone())?, tok, params))
}

/// LLaVA-OneVision judge with random weights on one 256² image ("pad" path) and the ORM prompt:
/// (a) one forward → P(yes), as our judges score; (b) 100-token greedy generate with a KV cache,
/// as the paper's code queries its judges through HF `generate`.
fn judge(args: BenchArgs) -> Result<()> {
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    let reps = args.reps.unwrap_or(3).max(1);
    let t0 = Instant::now();
    let (judge, tok, params) = random_judge(&args.size, device, kind)?;
    sync(device);
    let init_s = t0.elapsed().as_secs_f64();
    let c = judge.model().config().clone();
    let ids = tokenizer_image_token(&tok, &orm_prompt(JUDGE_PROMPT))?;
    tch::manual_seed(1);
    let image = Tensor::rand([1, 3, 256, 256], (Kind::Float, device)) * 2.0 - 1.0;
    let prompts = [JUDGE_PROMPT.to_string()];
    let (mut fwd, mut gen, mut pre) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p_yes, mut n_visual, mut new_tokens) = (0.0, 0, 0);
    let lm = judge.model().language_model();
    // Reading the ids back waits for the device, as HF's per-step EOS check does.
    let ids_back = |t: Tensor| Vec::<i64>::try_from(t.to_device(Device::Cpu).view([-1]));
    for _ in 0..reps {
        let s = Instant::now();
        p_yes = judge.outcome(&prompts, &image)?[0];
        sync(device);
        fwd.push(s.elapsed().as_secs_f64());
        let s = Instant::now();
        let visual = tch::no_grad(|| judge.visual_tokens(&image))?;
        let seq = tch::no_grad(|| judge.model().splice(&ids, &visual))?.unsqueeze(0);
        let s_gen = Instant::now();
        let out = ids_back(lm.greedy_generate(&seq, 100)?)?;
        gen.push(s.elapsed().as_secs_f64());
        let t_gen = s_gen.elapsed().as_secs_f64();
        // The prefill alone (first token only), to split (b) into prefill and per-token steps.
        let s = Instant::now();
        let _ = ids_back(lm.greedy_generate(&seq, 1)?)?;
        pre.push((s.elapsed().as_secs_f64(), t_gen));
        n_visual = visual[0].size()[0];
        new_tokens = out.len();
    }
    let (a, b) = (median(fwd), median(gen));
    let prefill = median(pre.iter().map(|p| p.0).collect());
    let step_ms = 1e3
        * median(
            pre.iter()
                .map(|p| (p.1 - p.0) / (new_tokens - 1) as f64)
                .collect(),
        );
    let t = &c.text;
    println!(
        "bench judge: LLaVA-OneVision {} (Qwen2 {}×{}, {} heads / {} kv, vocab {}; SigLIP {}×{}, {} of {} layers, {}²/{}), {params} params, random weights drawn on {device:?} {kind:?} in {init_s:.1} s",
        if args.size == "full" { "7B shape" } else { "tiny" },
        t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.vocab_size,
        c.vision.num_hidden_layers, c.vision.hidden_size, c.vision_layers_used, c.vision.num_hidden_layers,
        c.vision.image_size, c.vision.patch_size,
    );
    println!(
        "input: one 256² RGB image through \"pad\" → {n_visual} visual tokens (incl. image_newline) + {} ORM prompt ids from the glyph tokenizer (no Qwen tokenizer offline) = {} positions",
        ids.len() - 1,
        ids.len() as i64 - 1 + n_visual
    );
    println!(
        "(a) one forward, P(yes) at the answer position (our judges): {:.1} ms (median of {reps}; P(yes) = {p_yes:.3}, meaningless with random weights)",
        1e3 * a
    );
    println!(
        "(b) greedy generate, {new_tokens} new tokens with a KV cache (prefill + {} one-token steps, as HF generate; no EOS stop), image preprocessing included: {:.1} ms (prefill alone {:.1} ms, {step_ms:.2} ms per one-token step)",
        new_tokens - 1,
        1e3 * b,
        1e3 * prefill,
    );
    println!("ratio (b)/(a): {:.1}×", b / a);
    Ok(())
}

/// The paper's PARM loop for one candidate (parm.py): every step's prediction decoded, clarity
/// asked until the first clear step, potential once there; nothing pruned.
struct PaperParmHook<'a> {
    judge: &'a dyn StepJudge,
    vq: &'a dyn ImageTokenizer,
    prompt: &'a [String],
    threshold: f64,
    device: Device,
    clear: bool,
    stats: VerifyStats,
}

impl StepHook for PaperParmHook<'_> {
    fn on_step(&mut self, s: &StepState) -> Result<Vec<usize>> {
        let image = self.vq.decode(&s.sampled.to_device(self.device))?;
        self.stats.decoded_intermediates += 1;
        if !self.clear {
            self.stats.clarity_calls += 1;
            if self.judge.clarity(self.prompt, &image)?[0] > self.threshold {
                self.clear = true;
                self.stats.potential_calls += 1;
                let _ = self.judge.potential(self.prompt, &image)?;
            }
        }
        Ok(vec![])
    }
}

fn stats_line(s: &VerifyStats) -> String {
    format!(
        "row-steps {}/{}, clarity calls {}, potential calls {}, outcome calls {}, decoded intermediates {}, pruned {}, fallbacks {}",
        s.row_steps, s.row_steps_full, s.clarity_calls, s.potential_calls, s.outcome_calls,
        s.decoded_intermediates, s.pruned, s.fallbacks
    )
}

/// PARM best-of-N for one prompt: (a) `best_of_n_parm` (live paths batched, hopeless ones
/// pruned), (a′) the same without pruning, (b) the paper's structure — one candidate at a time,
/// its intermediate decoded and judged every step, no pruning, then the ORM score of each final
/// image. Show-o steps run through the cached sampler in all three, so the ratios isolate the
/// verification (`bench sampler` measures the cache).
fn parm(args: BenchArgs) -> Result<()> {
    let device = crate::util::parse_device(&args.device)?;
    let kind = crate::util::parse_dtype(&args.dtype)?;
    let reps = args.reps.unwrap_or(1).max(1);
    let full = match args.size.as_str() {
        "full" => true,
        "mid" => false,
        s => anyhow::bail!("unknown parm size '{s}' (mid, full)"),
    };
    let t0 = Instant::now();
    tch::manual_seed(0);
    let model = Showo::new(config(&args.size)?, device, kind)?;
    let layout = Layout::with_ids(&model.cfg, 50256, 50256);
    let vq_cfg = if full {
        crate::models::magvit2::Config::default()
    } else {
        // Same code grid and codebook, narrow and shallow: the full decoder takes ~4 s per
        // image on CPU, and the paper's loop decodes N·steps of them.
        crate::models::magvit2::Config {
            ch: 32,
            encoder_num_res_blocks: vec![1; 5],
            decoder_num_res_blocks: vec![1; 5],
            ..Default::default()
        }
    };
    let vq = crate::models::magvit2::Magvit2::new(vq_cfg, device)?;
    let (judge, _, judge_params) = random_judge(if full { "full" } else { "tiny" }, device, kind)?;
    sync(device);
    let setup_s = t0.elapsed().as_secs_f64();
    let text = bench_prompt(&layout);
    let cfg = SamplerConfig {
        steps: args.steps,
        ..Default::default()
    };
    let n = args.n;
    let seeds: Vec<u64> = (0..n as u64).map(|k| derive_seed(0, 0, k)).collect();
    let prompts = vec![JUDGE_PROMPT.to_string(); n];
    let prune = ParmConfig::default();
    let no_prune = ParmConfig {
        no_prune: true,
        ..Default::default()
    };
    println!(
        "bench parm: best-of-{n} × {} steps, CFG {}, one prompt; Show-o {} ({} params) + LLaVA-OneVision judge {} ({judge_params} params) in {kind:?}, MAGVIT-v2 {} in fp32, random weights, {device:?}; setup {setup_s:.1} s",
        cfg.steps,
        cfg.cfg_scale,
        args.size,
        model.num_parameters(),
        if full { "7B shape" } else { "tiny" },
        if full { "full" } else { "small (ch 32, 1 block per level)" },
    );
    // Untimed warm-up: first kernel launches, allocator growth, cuBLAS handles.
    {
        let one = generate::sample(&model, &layout, &text, &[0], &seeds[..1], &cfg, &mut NoHook)?;
        let img = vq.decode(&one.codes.to_device(device))?;
        let _ = judge.clarity(&prompts[..1], &img)?;
        sync(device);
    }
    let mut ta = Vec::new();
    let mut ta2 = Vec::new();
    let mut tb = Vec::new();
    let (mut sa, mut sa2, mut sb) = Default::default();
    let mut picks = (0, 0, 0);
    let run_ours = |p: &ParmConfig| {
        best_of_n_parm(
            &model,
            &layout,
            &vq,
            &judge,
            &judge,
            &text,
            &vec![0; n],
            &prompts,
            &seeds,
            n,
            &cfg,
            p,
        )
    };
    for _ in 0..reps {
        let s = Instant::now();
        let sel = run_ours(&prune)?;
        sync(device);
        ta.push(s.elapsed().as_secs_f64());
        (sa, picks.0) = (sel.stats, sel.chosen[0]);

        let s = Instant::now();
        let sel = run_ours(&no_prune)?;
        sync(device);
        ta2.push(s.elapsed().as_secs_f64());
        (sa2, picks.1) = (sel.stats, sel.chosen[0]);

        let s = Instant::now();
        let mut stats = VerifyStats {
            candidates: n,
            row_steps_full: n * cfg.steps,
            ..Default::default()
        };
        let mut scores = Vec::with_capacity(n);
        for (k, &seed) in seeds.iter().enumerate() {
            let mut hook = PaperParmHook {
                judge: &judge,
                vq: &vq,
                prompt: &prompts[k..k + 1],
                threshold: prune.clarity_threshold,
                device,
                clear: false,
                stats: VerifyStats::default(),
            };
            let out = generate::sample(&model, &layout, &text, &[0], &[seed], &cfg, &mut hook)?;
            stats.add(&hook.stats);
            stats.row_steps += out.row_steps;
            let img = vq.decode(&out.codes.to_device(device))?;
            scores.push(judge.p_yes(&prompts[k..k + 1], &img)?[0]);
            stats.outcome_calls += 1;
        }
        sync(device);
        tb.push(s.elapsed().as_secs_f64());
        picks.2 = (0..n)
            .max_by(|&x, &y| scores[x].total_cmp(&scores[y]).then(y.cmp(&x)))
            .unwrap_or(0);
        sb = stats;
    }
    let (a, a2, b) = (median(ta), median(ta2), median(tb));
    println!(
        "(a)  best_of_n_parm, batched live paths + pruning: {a:.3} s per prompt; {}; picked #{}",
        stats_line(&sa),
        picks.0
    );
    println!(
        "(a') best_of_n_parm without pruning:               {a2:.3} s per prompt; {}; picked #{}",
        stats_line(&sa2),
        picks.1
    );
    println!(
        "(b)  sequential as the paper's code (one candidate at a time, decode every step, clarity until clear, potential once, no pruning, ORM on every final image): {b:.3} s per prompt; {}; picked #{}",
        stats_line(&sb),
        picks.2
    );
    println!(
        "ratio (b)/(a): {:.2}×, (b)/(a'): {:.2}× (median of {reps}); random weights: P(yes), clarity and potential are meaningless, so when paths turn clear and which are pruned says nothing about real judges",
        b / a,
        b / a2
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_judge_config_has_the_7b_shape() {
        let c = judge_config("full", 0).unwrap();
        assert_eq!((c.text.head_dim(), c.text.theta()), (128, 1e6));
        assert_eq!((c.vision_layers_used, c.vision.num_patches()), (26, 729));
        let params: i64 = crate::models::llava_ov::train::expected_shapes(&c)
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum();
        // llava-onevision-qwen2-7b-ov: 8.03 B parameters with the full 152064-row vocabulary.
        assert_eq!(params, 8_030_346_528);
        assert!(judge_config("tiny", 119).is_ok());
    }

    #[test]
    fn dpo_step_rejects_an_unknown_reference_mode_before_building_models() {
        let args = BenchArgs {
            what: "dpo-step".into(),
            device: "cpu".into(),
            dtype: "fp32".into(),
            n: 1,
            steps: 1,
            size: "full".into(),
            reps: Some(1),
            reference: "cached".into(),
            n_mc: 1,
            replay_steps: 0,
            kl_coef: 0.0,
        };
        let e = run(args).unwrap_err().to_string();
        assert!(e.contains("expected frozen, precomputed or both"), "{e}");
    }

    #[test]
    fn guide_step_rejects_bad_settings_before_building_models() {
        let args = |n: usize, kl_coef: f64| BenchArgs {
            what: "guide-step".into(),
            device: "cpu".into(),
            dtype: "fp32".into(),
            n,
            steps: 1,
            size: "full".into(),
            reps: Some(1),
            reference: "both".into(),
            n_mc: 1,
            replay_steps: 0,
            kl_coef,
        };
        let e = run(args(1, 0.0)).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        let e = run(args(4, f64::NAN)).unwrap_err().to_string();
        assert!(e.contains("--kl-coef"), "{e}");
    }
}
