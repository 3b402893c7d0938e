//! imgcot — verify and preference-align masked-token text-to-image generators.
//!
//! Implements the method of "Can We Generate Images with CoT? Let's Verify and Reinforce Image
//! Generation Step by Step" (arXiv 2501.13926) on libtorch through `tch`: Show-o sampling with
//! MaskGIT decoding, outcome/step judges, DPO on masked image tokens, and GenEval scoring — plus the
//! glyph world, a small exactly specified task on which the whole loop runs on a CPU.

pub mod commands;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod glyphs;
pub mod judge;
pub mod models;
pub mod nn;
pub mod preference;
pub mod recipe;
pub mod train;
pub mod util;
pub mod verify;
pub mod world;
