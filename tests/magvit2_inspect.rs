//! `inspect encode|decode` (src/commands/inspect_vq.rs) on a small MAGVIT-v2 checkpoint written by
//! tests/magvit2_ref.py: preprocessing, codes/image files, PNG naming and pixel conversion, errors.
mod common;
use image::RgbImage;
use imgcot::commands::inspect_vq::{self, images_to_rgb8, rgb8_to_tensor};
use imgcot::models::magvit2::Magvit2;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

use common::TmpDir;

fn tmp_dir(name: &str) -> TmpDir {
    common::tmp_dir("magvit2-inspect", name)
}

fn shared_dir(name: &str) -> PathBuf {
    common::shared_dir("magvit2-inspect", name)
}

/// Small checkpoint (config resolution 512, factor 16, 64 codes), written once per test binary.
fn ckpt() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = shared_dir("ckpt");
        let python = std::env::var("IMGCOT_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/magvit2_ref.py");
        let out = Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .args(["--config", "small", "--skip-encode", "--skip-decode"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python} (set IMGCOT_PYTHON): {e}"));
        assert!(
            out.status.success(),
            "magvit2_ref.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn noise_png(path: &Path, w: u32, h: u32, seed: u32) -> RgbImage {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let v = (x.wrapping_mul(73856093) ^ y.wrapping_mul(19349663) ^ seed.wrapping_mul(83492791))
            .wrapping_mul(2654435761);
        image::Rgb([(v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8])
    });
    img.save(path).unwrap();
    img
}

fn read(path: &Path, name: &str) -> Tensor {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
}

#[test]
fn encode_then_decode_round_trip_files() {
    let dir = tmp_dir("roundtrip");
    let model = Magvit2::load(ckpt(), Device::Cpu).unwrap();
    // An image already at the config resolution goes through unchanged: codes = encode(pixels).
    let img = noise_png(&dir.join("a.png"), 512, 512, 1);
    inspect_vq::inspect_encode(
        ckpt(),
        &dir.join("a.png"),
        &dir.join("a.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let codes = read(&dir.join("a.safetensors"), "codes");
    assert_eq!(codes.kind(), Kind::Int64);
    assert_eq!(codes.size(), vec![1, 1024]);
    assert!(codes.equal(&model.encode(&rgb8_to_tensor(&img)).unwrap()));
    // A non-square image at another size is resized + cropped to 512² (32×32 codes); explicit 256 → 16×16.
    noise_png(&dir.join("b.png"), 700, 530, 2);
    inspect_vq::inspect_encode(
        ckpt(),
        &dir.join("b.png"),
        &dir.join("b.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        read(&dir.join("b.safetensors"), "codes").size(),
        vec![1, 1024]
    );
    inspect_vq::inspect_encode_at(
        ckpt(),
        &dir.join("b.png"),
        &dir.join("c.safetensors"),
        Device::Cpu,
        Some(256),
    )
    .unwrap();
    let codes_c = read(&dir.join("c.safetensors"), "codes");
    assert_eq!(codes_c.size(), vec![1, 256]);

    // Decode (16×16 grids, 256², to keep the test fast) to safetensors: fp32 `image` = the model's decode.
    let both = Tensor::cat(&[&codes_c, &(&codes_c + 1).remainder(64)], 0);
    inspect_vq::write_safetensors(&dir.join("both.safetensors"), &[("codes", &both)]).unwrap();
    inspect_vq::inspect_decode(
        ckpt(),
        &dir.join("both.safetensors"),
        &dir.join("img.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let image = read(&dir.join("img.safetensors"), "image");
    assert_eq!(image.kind(), Kind::Float);
    assert_eq!(image.size(), vec![2, 3, 256, 256]);
    let want = model.decode(&both).unwrap();
    assert!(image.equal(&want));

    // Decode to PNG: B = 2 → out-0.png, out-1.png with Show-o's pixel conversion; B = 1 → out.png.
    inspect_vq::inspect_decode(
        ckpt(),
        &dir.join("both.safetensors"),
        &dir.join("out.png"),
        Device::Cpu,
    )
    .unwrap();
    assert!(!dir.join("out.png").exists());
    let want_px = images_to_rgb8(&want).unwrap();
    for (i, w) in want_px.iter().enumerate() {
        let got = image::open(dir.join(format!("out-{i}.png")))
            .unwrap()
            .to_rgb8();
        assert!(&got == w, "out-{i}.png differs from the decoded pixels");
    }
    inspect_vq::inspect_decode(
        ckpt(),
        &dir.join("c.safetensors"),
        &dir.join("one.png"),
        Device::Cpu,
    )
    .unwrap();
    // B = 1 (a different batch size may round differently, so compare with its own decode).
    let one = images_to_rgb8(&model.decode(&codes_c).unwrap()).unwrap();
    let got = image::open(dir.join("one.png")).unwrap().to_rgb8();
    assert!(got == one[0], "one.png differs from the decoded pixels");
}

#[test]
fn decode_rejects_bad_code_files() {
    let dir = tmp_dir("bad");
    let err = |codes: &Tensor, name: &str| -> String {
        let p = dir.join(format!("{name}.safetensors"));
        Tensor::write_safetensors(&[(name, codes)], &p).unwrap();
        format!(
            "{:#}",
            inspect_vq::inspect_decode(ckpt(), &p, &dir.join("o.safetensors"), Device::Cpu)
                .unwrap_err()
        )
    };
    assert!(err(&Tensor::zeros([1, 16], (Kind::Float, Device::Cpu)), "codes").contains("integer"));
    assert!(
        err(&Tensor::zeros([1, 16], (Kind::Int64, Device::Cpu)), "ids")
            .contains("no tensor named `codes`")
    );
    assert!(
        err(&Tensor::zeros([1, 15], (Kind::Int64, Device::Cpu)), "codes").contains("not a square")
    );
    assert!(err(
        &Tensor::full([1, 16], 64, (Kind::Int64, Device::Cpu)),
        "codes"
    )
    .contains("[0, 64)"));
    assert!(!dir.join("o.safetensors").exists());
    let e = inspect_vq::inspect_encode(
        ckpt(),
        &dir.join("missing.png"),
        &dir.join("x.safetensors"),
        Device::Cpu,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("missing.png"), "{e:#}");
}
