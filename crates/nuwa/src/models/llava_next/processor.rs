//! LLaVA-NeXT's image processor (transformers' `LlavaNextImageProcessor`, PIL backend): the image
//! resized into its best pinpoint and padded with black, cut into 336-pixel crops row by row, behind a
//! base view of the whole image squeezed to 336×336; each view then goes through the CLIP pipeline.

use super::anyres::Anyres;
use crate::models::llava::processor::{self as llava_processor, PreprocessConfig};
use crate::preprocess::resize;
use crate::prompt::{Conversation, Role};
use image::{Rgb, RgbImage};

/// The Mistral-instruct conversation of `llava-v1.6-mistral-7b-hf`: `[INST] {user} [/INST] {answer}</s>[INST]
/// … [/INST]`, an image part as `<image>\n` where it stands. Mistral has no system turn: a system message
/// opens the first user turn.
pub fn mistral_inst(conversation: &Conversation) -> String {
    let system: Vec<String> =
        conversation.messages.iter().filter(|m| m.role == Role::System).map(llava_processor::text_of).collect();
    let mut system = (!system.is_empty()).then(|| system.join("\n"));
    let mut out = String::new();
    for m in conversation.messages.iter().filter(|m| m.role != Role::System) {
        match m.role {
            Role::User => {
                let turn = llava_processor::user_turn(m);
                let turn = match system.take() {
                    Some(s) => format!("{s}\n\n{turn}"),
                    None => turn,
                };
                out.push_str(&format!("[INST] {turn} [/INST]"));
            }
            Role::Assistant => out.push_str(&format!(" {}</s>", llava_processor::text_of(m).trim())),
            Role::System => unreachable!("filtered above"),
        }
    }
    out
}

/// The views of `img` as `plan` lays them out, base first: `plan.views()` × 3 × `side` × `side` values.
pub fn views(img: &RgbImage, plan: &Anyres, cfg: &PreprocessConfig, side: u32) -> Vec<f32> {
    let (rh, rw) = plan.resized_hw;
    let resized = resize(img, rw, rh, cfg.resample);
    let (ph, pw) = plan.best_hw;
    let (top, left) = (plan.pad[0], plan.pad[2]);
    // Black padding, in 8-bit space (before rescaling), as the processor pads.
    let padded = RgbImage::from_fn(pw, ph, |x, y| match (x.checked_sub(left), y.checked_sub(top)) {
        (Some(sx), Some(sy)) if sx < rw && sy < rh => *resized.get_pixel(sx, sy),
        _ => Rgb([0, 0, 0]),
    });
    let base = resize(img, side, side, cfg.resample);
    let crops = (0..plan.rows * plan.cols).map(|k| {
        let (r, c) = ((k / plan.cols) as u32, (k % plan.cols) as u32);
        image::imageops::crop_imm(&padded, c * side, r * side, side, side).to_image()
    });
    std::iter::once(base).chain(crops).flat_map(|view| llava_processor::preprocess(&view, cfg).pixels).collect()
}
