//! Evaluation: GenEval layout, exact correctness rules, summaries and detector backends.
pub mod geneval;
