//! Small helpers used across the crate: atomic writes, device and dtype parsing.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, then rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tmp_sibling(path);
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// A hidden temp path next to `path` (same filesystem, so rename is atomic).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(tch::Device::Cuda(n)),
            None => bail!("unknown device '{s}' (expected cpu, cuda or cuda:N)"),
        },
    }
}

/// Parses `fp32`/`float32`, `bf16`/`bfloat16`.
pub fn parse_dtype(s: &str) -> Result<tch::Kind> {
    match s {
        "fp32" | "float32" | "f32" => Ok(tch::Kind::Float),
        "bf16" | "bfloat16" => Ok(tch::Kind::BFloat16),
        _ => bail!("unknown dtype '{s}' (expected fp32 or bf16)"),
    }
}

/// Parses an inference dtype for `device`: `fp32`, `bf16`, or `auto`, which is bf16 on CUDA and on
/// CPUs with native bf16 dot products, fp32 on other CPUs (there bf16 matmuls are emulated and
/// slower than fp32).
pub fn parse_dtype_on(s: &str, device: tch::Device) -> Result<tch::Kind> {
    match s {
        "auto" => Ok(auto_dtype(device.is_cuda(), cpu_has_native_bf16())),
        _ => parse_dtype(s)
            .map_err(|_| anyhow::anyhow!("unknown dtype '{s}' (expected fp32, bf16 or auto)")),
    }
}

fn auto_dtype(cuda: bool, native_bf16: bool) -> tch::Kind {
    if cuda || native_bf16 {
        tch::Kind::BFloat16
    } else {
        tch::Kind::Float
    }
}

/// Whether this CPU computes bf16 dot products natively (x86 AVX512-BF16, which oneDNN uses for
/// libtorch's bf16 matmuls).
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_dtype_is_bf16_only_where_it_is_native() {
        assert_eq!(auto_dtype(true, false), tch::Kind::BFloat16);
        assert_eq!(auto_dtype(false, true), tch::Kind::BFloat16);
        assert_eq!(auto_dtype(false, false), tch::Kind::Float);
        let cpu = parse_dtype_on("auto", tch::Device::Cpu).unwrap();
        let want = if cpu_has_native_bf16() {
            tch::Kind::BFloat16
        } else {
            tch::Kind::Float
        };
        assert_eq!(cpu, want);
        assert_eq!(
            parse_dtype_on("fp32", tch::Device::Cpu).unwrap(),
            tch::Kind::Float
        );
        let err = parse_dtype_on("fp16", tch::Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("fp32, bf16 or auto"), "{err}");
        // Stored dtypes (saved weights, bench flags) take no `auto`.
        assert!(parse_dtype("auto").is_err());
    }
}
