//! Mask schedules and the MaskGIT sampler with classifier-free guidance (spec-showo.md §4).
pub mod literal;
pub mod sampler;
pub mod schedule;

pub use sampler::{
    derive_seed, group_rows, sample, IntermediateView, NoHook, SampleOutput, SamplerConfig,
    StepHook, StepState,
};
pub use schedule::Schedule;
