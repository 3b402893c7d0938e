//! Show-o parity against HF transformers' PhiForCausalLM(qk_layernorm=True) on a small random model
//! saved in Show-o's checkpoint layout (spec-showo.md §1.3), plus the cached-prefix path.
mod common;
use imgcot::models::showo::{omni_attention_mask, Showo};
use tch::{Device, Kind, Tensor};

fn reference(name: &str, bin: bool) -> (std::path::PathBuf, Tensor, Tensor) {
    let dir = common::temp_dir(name);
    let d = dir.to_str().unwrap();
    if bin {
        common::run_python("showo_ref.py", &[d, "--bin"]);
    } else {
        common::run_python("showo_ref.py", &[d]);
    }
    let t = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap();
    let get = |n: &str| t.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    (dir, get("input_ids"), get("logits"))
}

#[test]
fn logits_match_hf_phi_fp32() {
    let (dir, ids, want) = reference("showo-parity", false);
    let model = Showo::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let sp = model.cfg.specials();
    let got = model.forward(&ids, &omni_attention_mask(&ids, &sp));
    assert_eq!(got.size(), want.size());
    let d = common::max_abs_diff(&got, &want);
    assert!(d <= 1e-4, "max |Δ| = {d}");

    // The cached text prefix + image segment gives the same image-segment logits.
    let t = model.cfg.text_len();
    let cache = model.prefix(&ids.narrow(1, 0, t), &sp);
    let seg = ids.narrow(1, t, ids.size()[1] - t);
    let h = model.image_hidden(&seg, &cache);
    let cached = model.logits_cols(&h, 0, model.cfg.vocab_size);
    let full = got.narrow(1, t, ids.size()[1] - t);
    let d = common::max_abs_diff(&cached, &full);
    assert!(d <= 1e-5, "cached vs uncached max |Δ| = {d}");

    // bf16 runs and stays close to fp32 (loose: bf16 has 8 bits of mantissa).
    let m16 = Showo::load(&dir, Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(m16.kind(), Kind::BFloat16);
    let got16 = m16.forward(&ids, &omni_attention_mask(&ids, &sp));
    let rel = common::max_abs_diff(&got16, &want) / want.abs().max().double_value(&[]);
    assert!(rel < 0.1, "bf16 relative error {rel}");
}

#[test]
fn loads_pytorch_bin_too() {
    let (dir, ids, want) = reference("showo-parity-bin", true);
    let model = Showo::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let got = model.forward(&ids, &omni_attention_mask(&ids, &model.cfg.specials()));
    assert!(common::max_abs_diff(&got, &want) <= 1e-4);
}

#[test]
fn strict_loading_names_the_bad_tensors() {
    let (dir, _, _) = reference("showo-strict", false);
    let file = dir.join("pytorch_model.safetensors");
    let mut t = Tensor::read_safetensors(&file).unwrap();
    t.retain(|(k, _)| k != "showo.model.layers.1.mlp.fc2.bias");
    for (k, v) in t.iter_mut() {
        if k == "showo.lm_head.bias" {
            *v = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        }
    }
    t.push((
        "showo.extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&t, &file).unwrap();
    let err = format!(
        "{:#}",
        Showo::load(&dir, Device::Cpu, Kind::Float)
            .err()
            .expect("must fail")
    );
    assert!(
        err.contains("missing tensor 'showo.model.layers.1.mlp.fc2.bias'"),
        "{err}"
    );
    assert!(
        err.contains("tensor 'showo.lm_head.bias': expected shape [175], found [7]"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor 'showo.extra.weight'"),
        "{err}"
    );

    std::fs::remove_file(&file).unwrap();
    let err = format!(
        "{:#}",
        Showo::load(&dir, Device::Cpu, Kind::Float)
            .err()
            .expect("must fail")
    );
    assert!(err.contains("no weights in"), "{err}");
}

#[test]
fn save_load_round_trip() {
    let (dir, ids, want) = reference("showo-roundtrip", false);
    let model = Showo::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let out = common::temp_dir("showo-saved");
    model.save(&out).unwrap();
    let again = Showo::load(&out, Device::Cpu, Kind::Float).unwrap();
    let got = again.forward(&ids, &omni_attention_mask(&ids, &again.cfg.specials()));
    assert!(common::max_abs_diff(&got, &want) <= 1e-4);
}
