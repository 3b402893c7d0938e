//! What differs between the real world and the glyph world, behind one interface: the image
//! tokenizer (MAGVIT-v2 or the 37-code glyph tokenizer) and image files. Model code never knows
//! which world it is in.
use crate::models::glyph_vq::GlyphTokenizer;
use crate::models::magvit2::Magvit2;
use crate::models::ImageTokenizer;
use anyhow::{Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `glyph` → the glyph tokenizer; anything else is a MAGVIT-v2 checkpoint directory.
pub fn image_tokenizer(spec: &str, device: Device) -> Result<Box<dyn ImageTokenizer>> {
    if spec == "glyph" {
        Ok(Box::new(GlyphTokenizer::new()))
    } else {
        Ok(Box::new(
            Magvit2::load(Path::new(spec), device)
                .with_context(|| format!("loading MAGVIT-v2 from {spec}"))?,
        ))
    }
}

/// Images [B, 3, H, W] in [−1, 1] → interleaved RGB bytes per image. Pixel = round(clamp((x+1)/2)·255);
/// Show-o truncates instead, which darkens every channel by up to one level — rounding keeps
/// the glyph world's exact colours.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let x = ((images.to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0;
    let x = x
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu);
    let b = x.size()[0];
    (0..b)
        .map(|i| {
            let t = x.get(i).flatten(0, -1);
            Ok(Vec::<u8>::try_from(&t)?)
        })
        .collect()
}

/// PNG bytes of every image of a batch.
pub fn to_pngs(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (_, _, h, w) = images.size4().context("images must be [B, 3, H, W]")?;
    to_rgb8(images)?
        .into_iter()
        .map(|rgb| crate::glyphs::png::encode_png(w as u32, h as u32, &rgb))
        .collect()
}

/// A square grid of images (for TensorBoard and previews): RGB bytes and side length.
pub fn grid(images: &Tensor, cols: i64) -> Result<(Vec<u8>, usize)> {
    let (b, c, h, w) = images.size4()?;
    let rows = (b + cols - 1) / cols;
    let side = (rows.max(cols) * h.max(w)) as usize;
    let canvas = Tensor::ones(
        [c, side as i64, side as i64],
        (Kind::Float, images.device()),
    );
    for i in 0..b {
        let (r, cc) = (i / cols, i % cols);
        canvas
            .narrow(1, r * h, h)
            .narrow(2, cc * w, w)
            .copy_(&images.get(i).to_kind(Kind::Float));
    }
    let rgb = to_rgb8(&canvas.unsqueeze(0))?.remove(0);
    Ok((rgb, side))
}
