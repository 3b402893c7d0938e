//! The glyph world (shared/design/glyph-world.md): grammar, prompts, renderer, exact detector.
//!
//! - [`world`]: shapes, colors, codes, the exact renderer and nearest-patch encoder;
//! - [`detect`]: codes → GenEval detections, plus the `strict` and `glyphs_per_image` diagnostics;
//! - [`prompts`]: the grammar, the full prompt space, glyph-geneval and the training prompts;
//! - [`scene`]: random ground-truth scenes that satisfy a metadata line;
//! - [`tokenizer`]: the word-level `tokenizer.json` in Show-o's special-token layout;
//! - [`png`]: PNG read/write for RGB images; [`rng`]: portable seeded randomness.
//!
//! The tensor-side tokenizer is [`crate::models::glyph_vq::GlyphTokenizer`].
pub mod detect;
pub mod png;
pub mod prompts;
pub mod rng;
pub mod scene;
pub mod tokenizer;
pub mod world;

pub use detect::{detect, glyphs_per_image, strict};
pub use world::{encode, render, Codes, Glyph};

use anyhow::Result;
use std::path::Path;

/// Regenerates every committed glyph data file in `dir` (normally [`prompts::data_dir`]):
/// `eval_metadata.jsonl`, `train_prompts.jsonl` and `tokenizer.json`.
pub fn write_data_files(dir: &Path) -> Result<()> {
    prompts::write_data_files(dir)?;
    tokenizer::write_tokenizer(dir)
}
