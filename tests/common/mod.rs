//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python interpreter with the reference stacks (set by `make test`; falls back to python3).
pub fn python() -> String {
    std::env::var("IMGCOT_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `tests/<script>` with args; panics with its output when it fails (never skips).
pub fn run_python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python(), path.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{} failed:\n{text}", path.display());
    text
}

/// A fresh temporary directory under the target dir (kept for inspection after failures).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-tmp")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The release binary built alongside the tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgcot-train"))
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A fresh folder under cargo's per-test tmp dir, removed on drop (also when a test panics).
pub struct TmpDir(pub PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// `<CARGO_TARGET_TMPDIR>/<prefix>-<name>-<pid>`, emptied and created.
pub fn tmp_path(prefix: &str, name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn tmp_dir(prefix: &str, name: &str) -> TmpDir {
    TmpDir(tmp_path(prefix, name))
}

/// Folder for a checkpoint shared by one test binary (kept for the process lifetime); folders
/// left by earlier runs whose process is gone are removed first.
pub fn shared_dir(prefix: &str, name: &str) -> PathBuf {
    let tag = format!("{prefix}-{name}-");
    if Path::new("/proc/self").exists() {
        for e in std::fs::read_dir(env!("CARGO_TARGET_TMPDIR"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let file_name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = file_name.strip_prefix(&tag) {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    tmp_path(prefix, name)
}
