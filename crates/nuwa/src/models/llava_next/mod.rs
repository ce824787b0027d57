//! LLaVA-NeXT (LLaVA-1.6, Liu et al. 2024), after transformers' `LlavaNextForConditionalGeneration`: the
//! LLaVA-1.5 networks over "anyres" views — a base view of the whole image plus up to four 336-pixel
//! crops — whose crop patches are stitched, cut back to the image's aspect ratio and closed row by row
//! with a learned newline token (`../shared/SPEC-llava-next.md`).

pub mod anyres;
