//! PNG files for RGB images (HWC bytes), written atomically.
use anyhow::{anyhow, ensure, Context, Result};
use std::path::Path;

/// Encodes a `width × height` RGB image (HWC bytes) as PNG bytes.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        rgb.len() == width as usize * height as usize * 3,
        "RGB buffer has {} bytes, expected {width}x{height}x3",
        rgb.len()
    );
    let img = image::RgbImage::from_raw(width, height, rgb.to_vec())
        .ok_or_else(|| anyhow!("RGB buffer does not fit {width}x{height}"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .context("encoding PNG")?;
    Ok(out.into_inner())
}

/// Writes a `width × height` RGB image (HWC bytes) to `path` as PNG (temp file + rename).
pub fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let bytes =
        encode_png(width, height, rgb).with_context(|| format!("writing {}", path.display()))?;
    crate::util::atomic_write(path, &bytes)
}

/// Reads an image file as RGB: `(width, height, HWC bytes)`. Other color types are converted.
pub fn read_rgb(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let img = image::open(path)
        .with_context(|| format!("reading image {}", path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok((w, h, img.into_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip() {
        let dir = std::env::temp_dir().join(format!("imgcot-glyph-png-{}", std::process::id()));
        let path = dir.join("x.png");
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 17 % 256) as u8).collect();
        write_png(&path, 5, 3, &rgb).unwrap();
        assert_eq!(read_rgb(&path).unwrap(), (5, 3, rgb));
        assert!(write_png(&path, 4, 4, &[0; 3]).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
