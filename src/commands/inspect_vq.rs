//! `imgcot-train inspect encode|decode`: MAGVIT-v2 checkpoint doctor.
//!
//! `encode`: PNG → Show-o preprocessing (short side → R bicubic, center crop R×R, [−1, 1]) →
//! int64 `codes` [1, N] in a safetensors file. `decode`: int64 `codes` [B, N] → fp32 `image`
//! [B, 3, H, W] in a safetensors file, or PNGs when the output path ends in `.png`
//! (pixel = trunc(clamp((x+1)/2, 0, 1)·255), as Show-o converts samples).
use crate::models::magvit2::Magvit2;
use crate::util::{atomic_write, parse_device};
use anyhow::{bail, ensure, Context, Result};
use image::imageops::FilterType;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `inspect encode`: image → MAGVIT-v2 codes.
#[derive(clap::Args, Debug, Clone)]
pub struct EncodeArgs {
    /// MAGVIT-v2 checkpoint: folder with pytorch_model.safetensors (+ config.json) or the file itself.
    #[arg(long)]
    pub vq: PathBuf,
    /// Input image (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// Output safetensors file holding int64 `codes` [1, N].
    #[arg(long)]
    pub out: PathBuf,
    /// Square size the image is resized/cropped to (default: the config's `resolution`, 256).
    #[arg(long)]
    pub resolution: Option<i64>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `inspect decode`: MAGVIT-v2 codes → image(s).
#[derive(clap::Args, Debug, Clone)]
pub struct DecodeArgs {
    /// MAGVIT-v2 checkpoint: folder with pytorch_model.safetensors (+ config.json) or the file itself.
    #[arg(long)]
    pub vq: PathBuf,
    /// Safetensors file holding integer `codes` [B, N] (N a square number).
    #[arg(long)]
    pub codes: PathBuf,
    /// Output: `*.png` writes PNG(s) (name-0.png, name-1.png, ... when B > 1); otherwise a
    /// safetensors file holding fp32 `image` [B, 3, H, W] in [−1, 1].
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The `inspect` subcommands of this module.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum InspectVqCommand {
    /// Encode an image into MAGVIT-v2 codes.
    Encode(EncodeArgs),
    /// Decode MAGVIT-v2 codes into image(s).
    Decode(DecodeArgs),
}

pub fn run(cmd: InspectVqCommand) -> Result<()> {
    match cmd {
        InspectVqCommand::Encode(a) => run_encode(a),
        InspectVqCommand::Decode(a) => run_decode(a),
    }
}

pub fn run_encode(a: EncodeArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    inspect_encode_at(&a.vq, &a.image, &a.out, device, a.resolution)
}

pub fn run_decode(a: DecodeArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    inspect_decode(&a.vq, &a.codes, &a.out, device)
}

/// Encodes `image` at the checkpoint config's resolution and writes int64 `codes` [1, N].
pub fn inspect_encode(vq: &Path, image: &Path, out: &Path, device: Device) -> Result<()> {
    inspect_encode_at(vq, image, out, device, None)
}

/// [`inspect_encode`] with an explicit square resolution (e.g. 512 for Show-o 512²).
pub fn inspect_encode_at(
    vq: &Path,
    image: &Path,
    out: &Path,
    device: Device,
    resolution: Option<i64>,
) -> Result<()> {
    let model = Magvit2::load(vq, device)?;
    let r = resolution.unwrap_or(model.config().resolution);
    let f = model.config().downsample_factor();
    ensure!(
        r > 0 && r % f == 0,
        "resolution {r} must be a positive multiple of {f}"
    );
    let x = load_image_tensor(image, r)?;
    let codes = model
        .encode(&x)
        .with_context(|| format!("encoding {}", image.display()))?;
    write_safetensors(out, &[("codes", &codes)])?;
    println!(
        "{}: {}x{} codes -> {}",
        image.display(),
        r / f,
        r / f,
        out.display()
    );
    Ok(())
}

/// Decodes int64 `codes` [B, N] and writes fp32 `image` [B, 3, H, W] (safetensors) or PNG(s).
pub fn inspect_decode(vq: &Path, codes: &Path, out: &Path, device: Device) -> Result<()> {
    let tensors =
        Tensor::read_safetensors(codes).with_context(|| format!("reading {}", codes.display()))?;
    let Some((_, c)) = tensors.into_iter().find(|(n, _)| n == "codes") else {
        bail!("{}: no tensor named `codes`", codes.display());
    };
    ensure!(
        matches!(
            c.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        ),
        "{}: `codes` must be an integer tensor, found {:?}",
        codes.display(),
        c.kind()
    );
    let model = Magvit2::load(vq, device)?;
    let images = model
        .decode(&c)
        .with_context(|| format!("decoding {}", codes.display()))?;
    let is_png = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        let pngs = images_to_rgb8(&images)?;
        let paths = png_paths(out, pngs.len());
        for (img, path) in pngs.iter().zip(&paths) {
            write_png(path, img)?;
        }
        println!(
            "{} image(s) -> {}",
            pngs.len(),
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        write_safetensors(out, &[("image", &images)])?;
        println!("image {:?} -> {}", images.size(), out.display());
    }
    Ok(())
}

/// `out` for one image; `stem-0.png`, `stem-1.png`, ... next to it for several.
pub fn png_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = out
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..n)
        .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// Show-o's image transform: resize the short side to `r` (bicubic; the long side is truncated as
/// torchvision does), then center-crop r×r (offsets rounded half-to-even, like Python's `round`).
/// The bicubic kernel is image-rs's Catmull-Rom, close to but not bit-identical with PIL's.
pub fn preprocess(img: &RgbImage, r: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (r, (r as u64 * h as u64 / w as u64) as u32)
    } else {
        ((r as u64 * w as u64 / h as u64) as u32, r)
    };
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        image::imageops::resize(img, nw, nh, FilterType::CatmullRom)
    };
    let left = half_even(nw - r);
    let top = half_even(nh - r);
    image::imageops::crop_imm(&resized, left, top, r, r).to_image()
}

/// round(d / 2) with ties to even.
fn half_even(d: u32) -> u32 {
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// Reads an image file (alpha dropped), preprocesses it to r×r and returns [1, 3, r, r] in [−1, 1].
pub fn load_image_tensor(path: &Path, r: i64) -> Result<Tensor> {
    ensure!(r > 0 && r <= u32::MAX as i64, "invalid resolution {r}");
    let img = image::open(path)
        .with_context(|| format!("reading image {}", path.display()))?
        .to_rgb8();
    ensure!(
        img.width() > 0 && img.height() > 0,
        "{}: empty image",
        path.display()
    );
    Ok(rgb8_to_tensor(&preprocess(&img, r as u32)))
}

/// HWC u8 → [1, 3, H, W] f32 in [−1, 1] (ToTensor then Normalize(0.5, 0.5)).
pub fn rgb8_to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0);
    (t.to_kind(Kind::Float) / 255.0 - 0.5) / 0.5
}

/// [B, 3, H, W] in [−1, 1] → RGB8 images with pixel = trunc(clamp((x+1)/2, 0, 1)·255).
pub fn images_to_rgb8(images: &Tensor) -> Result<Vec<RgbImage>> {
    let size = images.size();
    ensure!(
        size.len() == 4 && size[1] == 3,
        "images must be [B, 3, H, W], got {size:?}"
    );
    let (b, h, w) = (size[0], size[2] as u32, size[3] as u32);
    // Float → Uint8 conversion truncates toward zero, like numpy's astype(np.uint8).
    let px = (((images.to_device(Device::Cpu).to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0)
        * 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    (0..b)
        .map(|i| {
            let data = Vec::<u8>::try_from(px.get(i).flatten(0, -1)).context("copying pixels")?;
            RgbImage::from_raw(w, h, data).context("building image")
        })
        .collect()
}

fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .with_context(|| format!("encoding PNG {}", path.display()))?;
    atomic_write(path, &bytes)
}

/// Writes f32 / i64 tensors as safetensors (metadata {"format": "pt"}), atomically.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let owned: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.shallow_clone()))
        .collect();
    crate::train::ckpt::write_safetensors(path, &owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_half_to_even() {
        // Python: round(0.5)=0, round(1.5)=2, round(2.5)=2, round(3.5)=4.
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 7].map(half_even),
            [0, 0, 1, 2, 2, 2, 3, 4]
        );
    }

    #[test]
    fn preprocess_short_side_then_center_crop() {
        let img = RgbImage::from_fn(40, 20, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let out = preprocess(&img, 20);
        assert_eq!(out.dimensions(), (20, 20));
        // No resize needed (short side already 20): a pure crop starting at column 10.
        assert_eq!(out.get_pixel(0, 0).0, [10, 0, 0]);
        assert_eq!(preprocess(&img, 8).dimensions(), (8, 8));
        let tall = RgbImage::new(7, 30);
        assert_eq!(preprocess(&tall, 16).dimensions(), (16, 16));
    }

    #[test]
    fn pixel_conversion_truncates_like_show_o() {
        let x = Tensor::from_slice(&[
            -2.0f32, -1.0, 0.0, 0.999, 1.0, 3.0, 0.5, -0.5, 0.25, 0.0, 0.0, 0.0,
        ])
        .view([1, 3, 2, 2]);
        let imgs = images_to_rgb8(&x).unwrap();
        // (x+1)/2*255: 0.0 → 127.5 → 127; 0.999 → 254.87 → 254; 0.5 → 191.25 → 191; -0.5 → 63.75 → 63; 0.25 → 159.375 → 159.
        assert_eq!(imgs[0].get_pixel(0, 0).0, [0, 255, 159]);
        assert_eq!(imgs[0].get_pixel(1, 0).0, [0, 255, 127]);
        assert_eq!(imgs[0].get_pixel(0, 1).0, [127, 191, 127]);
        assert_eq!(imgs[0].get_pixel(1, 1).0, [254, 63, 127]);
    }

    #[test]
    fn png_names() {
        assert_eq!(
            png_paths(Path::new("a/x.png"), 1),
            vec![PathBuf::from("a/x.png")]
        );
        assert_eq!(
            png_paths(Path::new("a/x.png"), 2),
            vec![PathBuf::from("a/x-0.png"), PathBuf::from("a/x-1.png")]
        );
    }
}
