//! LLaVA-OneVision (SigLIP + mlp2x_gelu projector + Qwen2) as the paper's ORM/PARM judges.
//!
//! Exact to `lmms-lab/llava-onevision-qwen2-7b-ov` and its fine-tunes (spec-judges.md): weights by
//! their original LLaVA-NeXT names (HF layouts are renamed at load), the truncated SigLIP tower, the
//! seed's "pad" inference path and the `anyres_max_9` training path, the seed's prompts, and yes/no
//! scores from one forward pass.
pub mod config;
pub mod image_processing;
pub mod judge;
pub mod model;
pub mod projector;
pub mod prompt;
pub mod qwen2;
pub mod scoring;
pub mod siglip;
pub mod train;
pub mod weights;

pub use config::{AspectMode, LlavaOvConfig, Qwen2Config, SiglipVisionConfig};
pub use judge::{LlavaJudge, OutcomeQuestion};
pub use model::LlavaOnevision;
pub use projector::Projector;
pub use qwen2::Qwen2ForCausalLM;
pub use scoring::ScoreMode;
pub use siglip::SiglipVisionTower;
pub use weights::Weights;
