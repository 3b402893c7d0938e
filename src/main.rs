//! `imgcot-train`: the command line of imgcot. Every command defaults to the glyph world.
use clap::{Parser, Subcommand};
use imgcot::commands;

#[derive(Parser)]
#[command(
    name = "imgcot-train",
    version,
    about = "Verify and preference-align masked-token text-to-image generators"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the libtorch version, CUDA availability, GPUs and the default dtype.
    Doctor,
    /// Sample N candidates per prompt with the MaskGIT sampler.
    Sample(commands::sample::SampleArgs),
    /// Checkpoint doctors: logits of a Show-o checkpoint, MAGVIT-v2 encode/decode.
    #[command(subcommand)]
    Inspect(Inspect),
    /// Pretrain the glyph world's small Show-o from scratch.
    Pretrain(commands::pretrain::PretrainArgs),
    /// Generate and score an evaluation set (glyph-geneval by default; `eval geneval` for GenEval).
    Eval(commands::eval::EvalArgs),
    /// Build preference pairs: sample N per prompt with a policy, judge, pair.
    Pairs(commands::dpo::PairsArgs),
    /// DPO on masked image tokens: one round on given pairs.
    Dpo(commands::dpo::DpoArgs),
    /// Build ORM/PARM training data from a generator (labels from the glyph world's exact evaluator).
    JudgeData(imgcot::judge::cli::JudgeDataArgs),
    /// Fine-tune (or train from scratch) a LLaVA-OneVision judge on LLaVA-format yes/no data.
    RewardFt(imgcot::judge::cli::RewardFtArgs),
    /// Benchmarks (speed targets live here, not in tests).
    Bench(commands::bench::BenchArgs),
    /// Regenerate the glyph world's committed data files (eval set, training prompts, tokenizer).
    GlyphData {
        #[arg(long, default_value = "data/glyphs")]
        out: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum Inspect {
    /// Show-o logits for given input ids.
    Logits(commands::inspect::LogitsArgs),
    /// MAGVIT-v2: a PNG → codes.
    Encode(commands::inspect_vq::EncodeArgs),
    /// MAGVIT-v2: codes → image.
    Decode(commands::inspect_vq::DecodeArgs),
    /// A judge's P(yes) and P(no) for an image and a prompt (or ready-made input ids).
    Judge(imgcot::judge::cli::InspectJudgeArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Doctor => commands::doctor::run(),
        Cmd::Sample(a) => commands::sample::run(a),
        Cmd::Inspect(Inspect::Logits(a)) => commands::inspect::logits(a),
        Cmd::Inspect(Inspect::Encode(a)) => commands::inspect_vq::run_encode(a),
        Cmd::Inspect(Inspect::Decode(a)) => commands::inspect_vq::run_decode(a),
        Cmd::Inspect(Inspect::Judge(a)) => imgcot::judge::cli::run_inspect_judge(a),
        Cmd::JudgeData(a) => imgcot::judge::cli::run_judge_data(a),
        Cmd::RewardFt(a) => imgcot::judge::cli::run_reward_ft(a),
        Cmd::Pretrain(a) => commands::pretrain::run(a),
        Cmd::Eval(a) => commands::eval::run(a),
        Cmd::Bench(a) => commands::bench::run(a),
        Cmd::Pairs(a) => commands::dpo::run_pairs(a),
        Cmd::Dpo(a) => commands::dpo::run(a),
        Cmd::GlyphData { out } => {
            imgcot::glyphs::write_data_files(&out).map(|_| println!("wrote {}", out.display()))
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
