//! `imgcot-train inspect logits`: a checkpoint doctor — runs a Show-o (or Qwen2) checkpoint on given token ids
//! so users can prove a converted checkpoint against their Python stack.
use crate::models::showo::{omni_attention_mask, Showo};
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use tch::Kind;

#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    /// Show-o checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors file with int64 `input_ids` [B, L].
    #[arg(long)]
    pub input_ids: PathBuf,
    /// Output safetensors file: fp32 `logits` [B, L, V].
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
}

pub fn logits(args: LogitsArgs) -> Result<()> {
    let device = crate::util::parse_device(&args.device)?;
    let tensors = crate::nn::weights::read_state_dict(&args.input_ids)?;
    let ids = tensors
        .into_iter()
        .find(|(n, _)| n == "input_ids")
        .map(|(_, t)| t)
        .with_context(|| format!("{}: no tensor named 'input_ids'", args.input_ids.display()))?;
    ensure!(
        ids.dim() == 2,
        "input_ids must be [B, L], found {:?}",
        ids.size()
    );
    ensure!(
        ids.kind() == Kind::Int64,
        "input_ids must be int64, found {:?}",
        ids.kind()
    );
    // A Qwen2 (judge language model) checkpoint: text-only ids, causal.
    if crate::judge::cli::is_qwen2_dir(&args.model) {
        let logits = crate::judge::cli::qwen2_logits(&args.model, &ids)?;
        crate::nn::weights::write_safetensors(
            &args.out,
            &[("logits".to_string(), logits.to_kind(Kind::Float))],
        )?;
        println!("wrote logits {:?} to {}", logits.size(), args.out.display());
        return Ok(());
    }
    let model = Showo::load(&args.model, device, crate::util::parse_dtype(&args.dtype)?)?;
    let v = model.cfg.vocab_size;
    ensure!(ids.numel() > 0, "input_ids is empty");
    let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
    ensure!(
        lo >= 0 && hi < v,
        "input_ids out of range [0, {v}): min {lo}, max {hi}"
    );
    let ids = ids.to_device(device);
    let logits =
        tch::no_grad(|| model.forward(&ids, &omni_attention_mask(&ids, &model.cfg.specials())));
    crate::nn::weights::write_safetensors(
        &args.out,
        &[("logits".to_string(), logits.to_kind(Kind::Float))],
    )?;
    println!("wrote logits {:?} to {}", logits.size(), args.out.display());
    Ok(())
}
