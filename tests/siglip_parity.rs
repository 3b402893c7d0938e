//! Parity of the truncated SigLIP tower with HF transformers 5.24: a 3-layer SiglipVisionModel whose
//! penultimate hidden state (layer 2, no post_layernorm) is what LLaVA-OneVision feeds the projector.
mod llava_common;
use imgcot::models::llava_ov::{SiglipVisionConfig, SiglipVisionTower, Weights};
use llava_common::*;
use tch::{Device, Kind};

#[test]
fn siglip_penultimate_matches_hf() {
    let dir = run_reference("siglip_parity.py", "siglip", &[]);
    let cfg: SiglipVisionConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg.num_hidden_layers, 3);
    let refs = read_tensors(&dir.join("reference.safetensors"));

    // Two layers built from a three-layer checkpoint: layer 2 and post_layernorm must be ignored.
    let mut w = Weights::from_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let tower = SiglipVisionTower::load(&mut w, "", &cfg, 2);
    w.finish().unwrap();
    let got = tch::no_grad(|| tower.forward(&refs["pixel_values"])).unwrap();
    let d = max_abs_diff(&got, &refs["penultimate"]);
    println!("siglip penultimate max|Δ| = {d:.3e}");
    assert!(d <= 1e-4, "max |Δ| = {d}");

    // All three layers: the last hidden state before post_layernorm.
    let mut w = Weights::from_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    let tower = SiglipVisionTower::load(&mut w, "", &cfg, 3);
    w.finish().unwrap();
    let got = tch::no_grad(|| tower.forward(&refs["pixel_values"])).unwrap();
    assert!(max_abs_diff(&got, &refs["last_no_post_ln"]) <= 1e-4);

    // Wrong input size is an error, not a panic.
    assert!(tower
        .forward(&refs["pixel_values"].narrow(2, 0, 56))
        .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
