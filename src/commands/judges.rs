//! `imgcot-train judge-data`, `reward-ft` and `inspect judge`: building ORM/PARM data from a
//! generator, fine-tuning LLaVA-OneVision judges on it, and scoring one image with a judge.
//! The implementation lives in [`crate::judge::cli`]; this module is the command-family entry point.
pub use crate::judge::cli::*;
