//! The glyph world's 37-code image tokenizer (shared/design/glyph-world.md), as an [`super::ImageTokenizer`].
//!
//! Batched tensor version of [`crate::glyphs::world`]: a 16 × 16 cell per code, decode paints the
//! code's patch, encode picks the nearest patch (summed squared RGB difference on 8-bit values,
//! ties to the lowest code). Pixels map to [-1, 1] as `v / 127.5 − 1`, and back as
//! `round((x + 1) · 127.5)` clamped to [0, 255], so encode(decode(c)) = c exactly.
use super::ImageTokenizer;
use crate::glyphs::world::{self, Codes, CELL, IMAGE_BYTES, IMAGE_SIZE, NUM_CELLS, NUM_CODES};
use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

const PATCH: i64 = (CELL * CELL * 3) as i64;
const CELL_I: i64 = CELL as i64;

/// The glyph tokenizer. Holds the 37 painted patches, CHW-flattened, as 8-bit values in f64.
#[derive(Debug)]
pub struct GlyphTokenizer {
    /// [37, 3·16·16], values 0..=255 (exact in f64, so the distance argmin is exact).
    patches: Tensor,
}

impl Default for GlyphTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl GlyphTokenizer {
    pub fn new() -> Self {
        // HWC patches → CHW, to match the tensor layout of images.
        let mut chw = vec![0f64; NUM_CODES * PATCH as usize];
        for (code, p) in world::patches().iter().enumerate() {
            for ch in 0..3 {
                for px in 0..CELL * CELL {
                    chw[code * PATCH as usize + ch * CELL * CELL + px] = p[3 * px + ch] as f64;
                }
            }
        }
        let patches = Tensor::from_slice(&chw).view([NUM_CODES as i64, PATCH]);
        Self { patches }
    }

    /// Images [B, 3, 16h, 16w] in [-1, 1] → 8-bit pixel values as f64 patches [B·h·w, 768]
    /// (cells in row-major order).
    fn image_patches(images: &Tensor) -> Result<(i64, i64, i64, Tensor)> {
        let size = images.size();
        ensure!(
            size.len() == 4 && size[1] == 3 && size[2] % CELL_I == 0 && size[3] % CELL_I == 0 && size[2] > 0,
            "glyph encode expects images [B, 3, H, W] with H, W multiples of {CELL}, found {size:?}"
        );
        ensure!(
            images.is_floating_point(),
            "glyph encode expects float images, found {:?}",
            images.kind()
        );
        let (b, gh, gw) = (size[0], size[2] / CELL_I, size[3] / CELL_I);
        let pixels = ((images.to_kind(Kind::Double) + 1.0) * 127.5)
            .round()
            .clamp(0.0, 255.0);
        let patches = pixels
            .view([b, 3, gh, CELL_I, gw, CELL_I])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * gh * gw, PATCH]);
        Ok((b, gh, gw, patches))
    }
}

impl ImageTokenizer for GlyphTokenizer {
    fn codebook_size(&self) -> i64 {
        NUM_CODES as i64
    }

    fn grid_size(&self, image_size: i64) -> i64 {
        image_size / CELL_I
    }

    fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let (b, gh, gw, x) = Self::image_patches(images)?;
        let p = self.patches.to_device(x.device());
        // ‖x − p‖² = ‖x‖² − 2 x·p + ‖p‖²; ‖x‖² is constant per cell. Integers < 2^53: exact in f64.
        let dist = p
            .square()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
            .unsqueeze(0)
            - x.matmul(&p.tr()) * 2.0;
        // argmin returns the first minimum: ties go to the lowest code.
        Ok(dist.argmin(1, false).view([b, gh * gw]))
    }

    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let size = codes.size();
        ensure!(
            size.len() == 2,
            "glyph decode expects codes [B, N], found {size:?}"
        );
        let (b, n) = (size[0], size[1]);
        let g = (n as f64).sqrt().round() as i64;
        ensure!(
            g * g == n && n > 0,
            "glyph decode expects a square number of codes, found {n}"
        );
        let codes = codes.to_kind(Kind::Int64);
        if b > 0 {
            let (lo, hi) = (codes.min().int64_value(&[]), codes.max().int64_value(&[]));
            ensure!(
                lo >= 0 && hi < NUM_CODES as i64,
                "glyph codes must be in 0..{NUM_CODES}, found range {lo}..={hi}"
            );
        }
        // v / 127.5 − 1 in f64, rounded once to f32.
        let table = (self.patches.to_device(codes.device()) / 127.5 - 1.0).to_kind(Kind::Float);
        Ok(table
            .index_select(0, &codes.flatten(0, 1))
            .view([b, g, g, 3, CELL_I, CELL_I])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, 3, g * CELL_I, g * CELL_I]))
    }
}

/// Host codes → int64 tensor [B, 64] on `device`.
pub fn codes_to_tensor(codes: &[Codes], device: Device) -> Tensor {
    let flat: Vec<i64> = codes
        .iter()
        .flat_map(|c| c.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_slice(&flat)
        .view([codes.len() as i64, NUM_CELLS as i64])
        .to_device(device)
}

/// Int64 tensor [B, 64] → host codes (checked to be in 0..37).
pub fn tensor_to_codes(codes: &Tensor) -> Result<Vec<Codes>> {
    let size = codes.size();
    ensure!(
        size.len() == 2 && size[1] == NUM_CELLS as i64,
        "expected codes [B, {NUM_CELLS}], found {size:?}"
    );
    let flat = Vec::<i64>::try_from(
        codes
            .to_kind(Kind::Int64)
            .to_device(Device::Cpu)
            .flatten(0, 1),
    )
    .context("reading glyph codes")?;
    flat.chunks(NUM_CELLS).map(world::codes_from_i64).collect()
}

/// Host 128 × 128 RGB images (HWC bytes) → float [B, 3, 128, 128] in [-1, 1] on `device`.
pub fn images_to_tensor(images: &[Vec<u8>], device: Device) -> Result<Tensor> {
    let mut flat = Vec::with_capacity(images.len() * IMAGE_BYTES);
    for (i, img) in images.iter().enumerate() {
        ensure!(
            img.len() == IMAGE_BYTES,
            "image {i} has {} bytes, expected {IMAGE_BYTES}",
            img.len()
        );
        flat.extend_from_slice(img);
    }
    let s = IMAGE_SIZE as i64;
    let t = Tensor::from_slice(&flat)
        .view([images.len() as i64, s, s, 3])
        .permute([0, 3, 1, 2]);
    // Same arithmetic as `decode` (f64, then f32), so both give identical floats.
    Ok((t.to_kind(Kind::Double) / 127.5 - 1.0)
        .to_kind(Kind::Float)
        .to_device(device))
}

/// Float [B, 3, H, W] in [-1, 1] → host RGB images (HWC bytes), `round((x + 1)·127.5)` clamped.
pub fn tensor_to_images(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let size = images.size();
    ensure!(
        size.len() == 4 && size[1] == 3,
        "expected images [B, 3, H, W], found {size:?}"
    );
    let bytes = ((images.to_kind(Kind::Double) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu);
    let flat = Vec::<u8>::try_from(bytes.flatten(0, 3)).context("reading image pixels")?;
    let per = (size[1] * size[2] * size[3]) as usize;
    Ok(if per == 0 {
        vec![]
    } else {
        flat.chunks(per).map(<[u8]>::to_vec).collect()
    })
}
