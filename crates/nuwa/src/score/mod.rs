//! Scoring model answers against ground truth, as the standard evaluation harnesses do.
pub mod choice;
pub mod rec;
pub mod vqa;
pub mod yesno;
