//! Scoring model answers against ground truth, as the standard evaluation harnesses do.
pub mod rec;
pub mod choice;
pub mod vqa;
pub mod yesno;
