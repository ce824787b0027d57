//! Referring-expression grounding: the standard harness's question, and the answer's box in the
//! three frames a user needs.
//!
//! LLaVA-1.5 answers with a box normalised to the padded square it was shown (`expand2square`), so
//! on a non-square image the box must be mapped through the padding before it means anything on
//! the original picture.

use crate::preprocess::Geometry;
use crate::score::rec::{parse_box, PROMPT_PREFIX};
use serde::Serialize;

/// The question the standard harness (lmms-eval `refcoco_bbox_rec`) asks LLaVA models for `expression`.
pub fn prompt(expression: &str) -> String {
    format!("{PROMPT_PREFIX}{expression}")
}

/// The question Qwen2.5-VL's released grounding scripts ask: `Locate {expression} in this image and
/// output the bbox coordinates in JSON format.`, a leading article of the expression removed.
pub fn qwen_prompt(expression: &str) -> String {
    let e = expression.trim();
    let lower = e.to_ascii_lowercase();
    let stripped =
        ["the ", "a ", "an "].iter().find(|a| lower.starts_with(*a)).map_or(e, |a| e[a.len()..].trim_start());
    format!("Locate {stripped} in this image and output the bbox coordinates in JSON format.")
}

/// One box, `[x1, y1, x2, y2]`, in each frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroundBox {
    /// As parsed, in the model's frame: normalised to the padded square (LLaVA-1.5) or to the image
    /// (LLaVA-NeXT), or in pixels of the resized image (Qwen2.5-VL); unclamped, as the harness scores it.
    pub square: [f64; 4],
    /// On the original image, normalised to it and clamped to [0, 1] (the padding mapped away).
    pub original_normalized: [f64; 4],
    /// On the original image, in pixels.
    pub original_pixels: [f64; 4],
}

impl GroundBox {
    /// Maps a box as the model answered it onto the original image.
    pub fn from_square(square: [f64; 4], geometry: &Geometry) -> Self {
        let original_normalized = geometry.answer_to_original(square);
        Self { square, original_normalized, original_pixels: geometry.to_pixels(original_normalized) }
    }
}

/// The first `[x1, y1, x2, y2]` in `response`, parsed exactly as the harness does, in all three
/// frames; `None` when nothing parses (the harness would score `[0, 0, 0, 0]`).
pub fn ground_box(response: &str, geometry: &Geometry) -> Option<GroundBox> {
    parse_box(response).map(|b| GroundBox::from_square(b, geometry))
}
