//! Scoring model answers against ground truth, as the standard evaluation harnesses do.
pub mod rec;
