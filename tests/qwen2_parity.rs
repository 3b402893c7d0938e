//! Parity of the Rust Qwen2ForCausalLM with HF transformers 5.24 (tiny random config, fp32):
//! sharded loading through model.safetensors.index.json, GQA, RoPE θ=1e6, q/k/v bias, logits.
mod llava_common;
use imgcot::models::llava_ov::{Qwen2Config, Qwen2ForCausalLM, Weights};
use llava_common::*;
use tch::{Device, Kind};

#[test]
fn qwen2_logits_match_hf() {
    let dir = run_reference("qwen2_parity.py", "qwen2", &[]);
    let cfg: Qwen2Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg.theta(), 1e6);
    let refs = read_tensors(&dir.join("reference.safetensors"));
    let ids = &refs["input_ids"];
    let want = &refs["logits"];
    let files = imgcot::models::llava_ov::weights::checkpoint_files(&dir).unwrap();
    assert!(files.len() > 1, "the reference must be sharded");

    // Full vocabulary.
    let mut w = Weights::from_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let lm = Qwen2ForCausalLM::load(&mut w, &cfg, None).unwrap();
    w.finish().unwrap();
    let got = tch::no_grad(|| lm.forward(ids)).unwrap();
    let d = max_abs_diff(&got, want);
    println!("qwen2 logits max|Δ| = {d:.3e}");
    assert!(d <= 1e-4, "max |Δ| = {d}");

    // Vocabulary cut to 300 rows (the seed's resize_token_embeddings): logits = first 300 columns.
    let mut w = Weights::from_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let lm = Qwen2ForCausalLM::load(&mut w, &cfg, Some(300)).unwrap();
    w.finish().unwrap();
    assert_eq!(lm.vocab_size(), 300);
    let ids300 = ids.clamp_max(299);
    let got = tch::no_grad(|| lm.forward(&ids300)).unwrap();
    assert_eq!(got.size(), vec![2, 23, 300]);
    let mut w = Weights::from_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let full = Qwen2ForCausalLM::load(&mut w, &cfg, None).unwrap();
    let want300 = tch::no_grad(|| full.forward(&ids300))
        .unwrap()
        .narrow(-1, 0, 300);
    assert!(max_abs_diff(&got, &want300) <= 1e-5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qwen2_strict_loading_reports_shapes() {
    let dir = run_reference("qwen2_parity.py", "qwen2-strict", &[]);
    let mut cfg: Qwen2Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.intermediate_size = 96;
    cfg.num_hidden_layers = 1;
    let mut w = Weights::from_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let _ = Qwen2ForCausalLM::load(&mut w, &cfg, None).unwrap();
    let msg = format!("{:#}", w.finish().unwrap_err());
    assert!(
        msg.contains("'model.layers.0.mlp.up_proj.weight'")
            && msg.contains("expected shape [96, 64], found [128, 64]"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected tensor 'model.layers.1.input_layernorm.weight'"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
