//! `train::optim::AdamW` against `torch.optim.AdamW` (tests/train_adamw_torch.py): same initial
//! weights, same loss, a changing LR, decay/no-decay groups, an LR multiplier and a parameter
//! without grad; params and moments must agree to 1e-6. Also the bf16 + fp32-master variant.

use imgcot::train::ckpt::{read_safetensors, write_safetensors};
use imgcot::train::optim::{is_no_decay, AdamW, AdamWConfig, ParamGroup};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Kind, Tensor};

const LRS: [f64; 6] = [1e-2, 2e-2, 3e-2, 2.5e-2, 1e-2, 5e-3];
const SHAPES: [(&str, &[i64]); 5] = [
    ("norm.weight", &[4]),
    ("proj.bias", &[3]),
    ("proj.weight", &[3, 4]),
    ("unused.weight", &[2]),
    ("vision.weight", &[3, 4]),
];

fn python() -> String {
    std::env::var("IMGCOT_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn workdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("imgcot-adamw-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn group(name: &str) -> ParamGroup {
    ParamGroup {
        decay: !is_no_decay(name),
        lr_mult: if name.starts_with("vision.") {
            0.5
        } else {
            1.0
        },
    }
}

fn run_python(dir: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/train_adamw_torch.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (set IMGCOT_PYTHON): {e}", python()));
    assert!(
        out.status.success(),
        "python reference failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn compare(bf16: bool) {
    let dir = workdir(if bf16 { "bf16" } else { "fp32" });
    tch::manual_seed(11);
    let init: Vec<(String, Tensor)> = SHAPES
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                Tensor::randn(*s, (Kind::Float, Device::Cpu)) * 0.5,
            )
        })
        .chain(std::iter::once((
            "input.x".to_string(),
            Tensor::randn([5, 4], (Kind::Float, Device::Cpu)),
        )))
        .collect();
    write_safetensors(&dir.join("init.safetensors"), &init).unwrap();
    let no_decay: Vec<&str> = SHAPES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !group(n).decay)
        .collect();
    let cfg = AdamWConfig {
        lr: LRS[0],
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let json = serde_json::json!({
        "lrs": LRS, "beta1": cfg.beta1, "beta2": cfg.beta2, "eps": cfg.eps, "weight_decay": cfg.weight_decay,
        "no_decay": no_decay, "lr_mults": {"vision.weight": 0.5}, "bf16": bf16,
    });
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    run_python(&dir);

    // Rust side.
    let mut vs = VarStore::new(Device::Cpu);
    let init: BTreeMap<String, Tensor> = init.into_iter().collect();
    let vars: BTreeMap<&str, Tensor> = SHAPES
        .iter()
        .map(|(n, _)| {
            let (prefix, leaf) = n.split_once('.').unwrap();
            (*n, (vs.root() / prefix).var_copy(leaf, &init[*n]))
        })
        .collect();
    if bf16 {
        vs.bfloat16();
    }
    let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
    let x = init["input.x"].to_kind(kind);
    let mut opt = AdamW::with_groups(&vs, cfg, group).unwrap();
    assert_eq!(opt.param_groups().len(), 5);
    for lr in LRS {
        opt.set_lr(lr);
        opt.zero_grad();
        let h = &x * &vars["norm.weight"];
        let y = h.matmul(&vars["proj.weight"].tr())
            + &vars["proj.bias"]
            + x.matmul(&vars["vision.weight"].tr());
        (&y * &y).sum(kind).backward();
        opt.step().unwrap();
    }
    assert!(!vars["unused.weight"].grad().defined());
    opt.save(&dir).unwrap();
    let ours: BTreeMap<String, Tensor> = read_safetensors(&dir.join("optimizer.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let torch: BTreeMap<String, Tensor> = read_safetensors(&dir.join("torch_out.safetensors"))
        .unwrap()
        .into_iter()
        .collect();

    let mut worst = 0f64;
    for (n, _) in SHAPES {
        let d = max_diff(&vars[n], &torch[&format!("param.{n}")]);
        worst = worst.max(d);
        assert!(
            d <= 1e-6,
            "{n}: param differs from torch by {d:e} (bf16={bf16})"
        );
        for key in ["exp_avg", "exp_avg_sq", "master"] {
            let k = format!("{key}.{n}");
            match (ours.get(&k), torch.get(&k)) {
                (Some(a), Some(b)) => {
                    let d = max_diff(a, b);
                    worst = worst.max(d);
                    assert!(d <= 1e-6, "{k}: differs from torch by {d:e} (bf16={bf16})");
                }
                (None, None) => {}
                (a, b) => panic!("{k}: present in ours={} torch={}", a.is_some(), b.is_some()),
            }
        }
    }
    // The untouched parameter was skipped on both sides, and the run did move the others.
    assert!(!ours.contains_key("exp_avg.unused.weight"));
    assert!(max_diff(&vars["proj.weight"], &init["proj.weight"]) > 1e-2);
    println!("bf16={bf16}: max |rust - torch| = {worst:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn adamw_matches_torch_fp32() {
    compare(false);
}

#[test]
fn adamw_matches_torch_bf16_master_weights() {
    compare(true);
}
