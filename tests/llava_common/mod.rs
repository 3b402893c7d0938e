//! Helpers shared by the LLaVA-OneVision / Qwen2 / SigLIP parity tests: run a Python reference script
//! (HF transformers from $IMGCOT_PYTHON) into a fresh folder under target/test-tmp and compare tensors.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Runs `tests/<script> OUT_DIR [args...]` and returns OUT_DIR. Panics (never skips) when Python or a
/// package is missing.
pub fn run_reference(script: &str, tag: &str, args: &[&str]) -> PathBuf {
    let py = std::env::var("IMGCOT_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-tmp")
        .join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = std::process::Command::new(&py)
        .arg(&script_path)
        .arg(&dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python '{py}' (set IMGCOT_PYTHON): {e}"));
    assert!(
        out.status.success(),
        "{} failed:\nstdout: {}\nstderr: {}",
        script_path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Named tensors of a safetensors file.
pub fn read_tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// max |a − b| in f64; panics on shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
