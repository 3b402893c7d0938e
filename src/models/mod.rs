//! Model architectures. Each module mirrors one original checkpoint layout.
use anyhow::Result;
use tch::Tensor;

pub mod glyph_vq;
pub mod llava_ov;
pub mod magvit2;
pub mod showo;

/// An image tokenizer: images in [-1, 1] ↔ discrete codes. MAGVIT-v2 and the glyph world's
/// 37-code tokenizer both implement it, so the generator and trainer never know which world they are in.
pub trait ImageTokenizer {
    /// Number of distinct codes.
    fn codebook_size(&self) -> i64;
    /// Side of the code grid for an image of `image_size` pixels (16 for 256² MAGVIT, 8 for 128² glyphs).
    fn grid_size(&self, image_size: i64) -> i64;
    /// `images`: float [B, 3, H, W] in [-1, 1] → int64 codes [B, h·w] in row-major order.
    fn encode(&self, images: &Tensor) -> Result<Tensor>;
    /// int64 codes [B, N] (N a square) → float [B, 3, H, W] in [-1, 1].
    fn decode(&self, codes: &Tensor) -> Result<Tensor>;
}
