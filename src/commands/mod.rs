//! One module per `imgcot-train` subcommand family; `main.rs` only parses and dispatches.
pub mod bench;
pub mod doctor;
pub mod dpo;
pub mod eval;
pub mod geneval;
pub mod inspect;
pub mod inspect_vq;
pub mod iterate;
pub mod pretrain;
pub mod sample;
