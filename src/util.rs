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
    path.with_file_name(format!(".{name}.tmp-{}", owner_tag()))
}

/// The owner part of temp and moved-aside names (`.tmp-<tag>`, `.old-<tag>`): `<pid>@<host>`,
/// where the host part also names the pid namespace ([`host_name`]).
/// The host keeps two machines or containers that share a volume (both can run as PID 1) from
/// writing the same temp name, and lets the stale-temp cleanup judge liveness only for its own
/// host's processes. Without a readable host name it is the bare pid, as older builds wrote.
pub fn owner_tag() -> String {
    match host_name() {
        "" => std::process::id().to_string(),
        host => format!("{}@{host}", std::process::id()),
    }
}

/// Whose an owner tag is, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A process of this host and pid namespace (a bare pid, as older builds wrote, counts).
    Local(u32),
    /// `<pid>@<other host>`: its liveness cannot be checked here.
    Foreign,
    /// Not an owner tag.
    NotATag,
}

pub fn owner_of(tag: &str) -> Owner {
    let pid = |p: &str| p.parse::<u32>().ok();
    match tag.split_once('@') {
        Some((p, host)) if host == host_name() => pid(p).map_or(Owner::NotATag, Owner::Local),
        Some((p, host)) if pid(p).is_some() && !host.is_empty() => Owner::Foreign,
        Some(_) => Owner::NotATag,
        None => pid(tag).map_or(Owner::NotATag, Owner::Local),
    }
}

/// The host name plus the pid namespace's inode (`<host>-<inode>`): containers that share the
/// host's name (`--uts=host`) still have their own pid namespaces.
fn host_name() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .chars()
            // A file-name-safe spelling: no separators, no '@' (the tag's own).
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // "pid:[4026531836]" → "4026531836".
        let ns: String = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| {
                p.to_string_lossy()
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect()
            })
            .unwrap_or_default();
        match (host.is_empty(), ns.is_empty()) {
            (true, _) => String::new(),
            (false, true) => host,
            (false, false) => format!("{host}-{ns}"),
        }
    })
}

/// Parses `cpu`, `cuda`, `cuda:N`; a GPU that this machine does not have is an error here,
/// not a libtorch panic at the first tensor placed on it.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let n = match s {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => 0,
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => bail!("unknown device '{s}' (expected cpu, cuda or cuda:N)"),
        },
    };
    let count = if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    if n >= count {
        bail!(
            "device '{s}' is not available: this machine has {count} CUDA device(s) visible to libtorch (`imgcot-train doctor` says more)"
        );
    }
    Ok(tch::Device::Cuda(n))
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

/// Refuses a zero or negative size (`what`: a prefix for the message, e.g. `qwen2: `): sizes are
/// divided by and allocated from, so they are checked before anything else uses them.
pub fn ensure_positive(what: &str, fields: &[(&str, i64)]) -> Result<()> {
    for &(name, v) in fields {
        if v <= 0 {
            bail!("{what}{name} {v} must be positive");
        }
    }
    Ok(())
}

/// Removes the keys at dotted `paths` (`a.b.c`) from a JSON object, where present.
pub fn drop_keys(v: &mut serde_json::Value, paths: &[&str]) {
    for p in paths {
        let mut parts: Vec<&str> = p.split('.').collect();
        let Some(last) = parts.pop() else { continue };
        let mut at = Some(&mut *v);
        for k in parts {
            at = at.and_then(|x| x.get_mut(k));
        }
        if let Some(serde_json::Value::Object(m)) = at {
            m.remove(last);
        }
    }
}

/// How recorded settings `was` differ from `now` (`a.b: x → y`, one entry per differing dotted
/// path; empty when equal), with the keys at `ignore` (dotted paths that change no result)
/// left out on both sides.
pub fn settings_diff(
    was: &serde_json::Value,
    now: &serde_json::Value,
    ignore: &[&str],
) -> Vec<String> {
    let (mut was, mut now) = (was.clone(), now.clone());
    drop_keys(&mut was, ignore);
    drop_keys(&mut now, ignore);
    let mut out = Vec::new();
    json_diff(&was, &now, "", &mut out);
    out
}

fn json_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_diff(u, v, &p, out),
                    (u, v) => out.push(format!(
                        "{p}: {} → {}",
                        u.map_or("absent".into(), Value::to_string),
                        v.map_or("absent".into(), Value::to_string)
                    )),
                }
            }
        }
        _ if !same_setting(a, b) => out.push(format!("{at}: {a} → {b}")),
        _ => {}
    }
}

/// JSON equality in which two strings naming the same path lexically are equal: settings
/// records hold paths as typed, and `ckpts/x`, `ckpts/x/` and `./ckpts//x` are one folder.
/// Only the spelling is normalised (no symlinks, no `..`, no current directory), so records
/// stay valid when the repository moves.
pub fn same_setting(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y || same_path_text(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(u, v)| same_setting(u, v))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, u)| y.get(k).is_some_and(|v| same_setting(u, v)))
        }
        _ => a == b,
    }
}

fn same_path_text(a: &str, b: &str) -> bool {
    use std::path::Component;
    // Only where a separator appears: no such setting here is a non-path whose meaning changes
    // with a doubled slash, a trailing one or a leading "./" (a shard such as "0/2" has none).
    let parts = |s: &str| -> Vec<String> {
        Path::new(s)
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect()
    };
    (a.contains('/') || b.contains('/')) && parts(a) == parts(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_this_machine_lacks_are_errors() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        assert!(parse_device("gpu").is_err());
        let e = parse_device("cuda:999").unwrap_err();
        assert!(format!("{e:#}").contains("not available"), "{e:#}");
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda").is_err());
        }
    }

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

    #[test]
    fn owner_tags_name_this_host_and_only_its_pids_are_judged_here() {
        let tag = owner_tag();
        assert_eq!(owner_of(&tag), Owner::Local(std::process::id()));
        assert!(!tag.contains('/') && !tag.contains('.'), "{tag}");
        assert_eq!(
            owner_of("4242"),
            Owner::Local(4242),
            "older builds' bare pid"
        );
        assert_eq!(owner_of("4242@some-other-host"), Owner::Foreign);
        assert_eq!(owner_of("notes"), Owner::NotATag);
        assert_eq!(owner_of("x@some-other-host"), Owner::NotATag);
    }

    #[test]
    fn settings_that_spell_one_path_differently_are_the_same() {
        use serde_json::json;
        let was = json!({"init": "ckpts/x", "dpo": {"pairs": "runs/a/pairs.jsonl"}, "beta": 0.5});
        let now =
            json!({"init": "./ckpts//x/", "dpo": {"pairs": "runs/a/pairs.jsonl"}, "beta": 0.5});
        assert!(settings_diff(&was, &now, &[]).is_empty());
        assert!(same_setting(&json!(["ckpts/x/"]), &json!(["ckpts/x"])));
        // Other folders, other values and other types still differ.
        let moved = json!({"init": "ckpts/y", "dpo": {"pairs": "runs/a/pairs.jsonl"}, "beta": 0.5});
        assert_eq!(
            settings_diff(&was, &moved, &[]),
            ["init: \"ckpts/x\" → \"ckpts/y\""]
        );
        assert!(!same_setting(&json!("/ckpts/x"), &json!("ckpts/x")));
        assert!(!same_setting(&json!("ckpts/x"), &json!("ckpts/x/final")));
        assert!(!same_setting(&json!("a"), &json!("")));
        assert!(!same_setting(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!same_setting(&json!(1), &json!("1")));
    }
}
