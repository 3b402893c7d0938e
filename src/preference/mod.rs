//! Preference pairs: the JSONL dataset, validation, cached image codes, pair building.

pub mod build;
pub mod cache;
pub mod hash;
pub mod pairs;
