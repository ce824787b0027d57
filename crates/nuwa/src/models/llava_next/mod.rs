//! LLaVA-NeXT (LLaVA-1.6, Liu et al. 2024), after transformers' `LlavaNextForConditionalGeneration`: the
//! LLaVA-1.5 networks over "anyres" views — a base view of the whole image plus up to four 336-pixel
//! crops — whose crop patches are stitched, cut back to the image's aspect ratio and closed row by row
//! with a learned newline token (the project's LLaVA-NeXT specification).
//!
//! Layout: grid 0 is the base view (24×24, raster order), grid 1 the unpadded crop grid H'×W', each of
//! its rows followed by a [`Slot::Newline`]. Newline slots carry zero vision features: their embedding is
//! the checkpoint's `image_newline`, already in the decoder's space ([`VisionLanguageModel::newline_embedding`]).

pub mod anyres;
pub mod config;
pub mod processor;

pub use anyres::Anyres;
pub use config::Config;

use super::llava::{self, Llava, WeightPrefixes, SIMILARITY_LAYERS};
use super::{clip, decoder, Family, LoadOptions, VisionLanguageModel};
use crate::checkpoint::Checkpoint;
use crate::layout::{Grid, Needs, Saliency, SequenceLayout, Slot, VisionEvidence, VisualLayout};
use crate::preprocess::Geometry;
use crate::prompt::{Conversation, PromptTokens, TextTokenizer};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::time::Instant;

pub const FAMILY: Family = Family { name: "llava-next", model_types: &["llava_next"], load };

#[derive(Debug, Clone)]
pub struct LlavaNext {
    /// Vision tower, projector and decoder: LLaVA-1.5's networks.
    pub base: Llava,
    /// `image_newline`, (text hidden).
    pub image_newline: Tensor,
    pub pinpoints: Vec<[u32; 2]>,
    pub template: config::Template,
}

fn load(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Box<dyn VisionLanguageModel>> {
    Ok(Box::new(LlavaNext::load(ckpt, opts)?))
}

impl LlavaNext {
    /// Loads a llava-hf LLaVA-NeXT checkpoint, trimmed as `opts` says.
    pub fn load(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let cfg = Config::from_json(&ckpt.config_text).map_err(|m| Error::config(&ckpt.config_path, m))?;
        let base = Llava::load_with(ckpt, cfg.llava, opts)?;
        let prefixes = WeightPrefixes::detect(ckpt.tensor_names.iter().map(String::as_str))
            .map_err(|m| Error::checkpoint(&ckpt.dir, m))?;
        let vb = ckpt.var_builder(opts.compute_dtype(), &opts.device)?;
        Self::new(base, &prefixes, cfg.pinpoints, cfg.template, vb).map_err(|e| match e {
            Error::Tensor(e) => Error::checkpoint(&ckpt.dir, e.to_string()),
            e => e,
        })
    }

    /// Adds NeXT's newline vector (next to the projector's weights) to LLaVA-1.5's networks.
    pub fn new(
        base: Llava,
        prefixes: &WeightPrefixes,
        pinpoints: Vec<[u32; 2]>,
        template: config::Template,
        vb: candle_nn::VarBuilder,
    ) -> Result<Self> {
        let root = prefixes.projector.strip_suffix("multi_modal_projector").unwrap_or("");
        let width = base.config.text_config.hidden_size;
        let image_newline = vb.get(width, &format!("{root}image_newline"))?;
        Ok(Self { base, image_newline, pinpoints, template })
    }

    fn side(&self) -> (u32, usize) {
        let v = &self.base.config.vision_config;
        (v.image_size as u32, v.grid_side())
    }

    /// The anyres plan for a `width`×`height` image.
    pub fn plan(&self, width: u32, height: u32) -> Result<Anyres> {
        plan(&self.base.config.vision_config, &self.pinpoints, width, height)
    }

    pub fn layout(&self, plan: &Anyres) -> VisualLayout {
        layout(&self.base.config.vision_config, plan)
    }
}

/// The anyres plan of a `width`×`height` image for a vision tower of `vision`'s shape.
pub fn plan(vision: &clip::Config, pinpoints: &[[u32; 2]], width: u32, height: u32) -> Result<Anyres> {
    Anyres::plan(width, height, pinpoints, vision.image_size as u32, vision.grid_side())
}

/// The token layout of an image planned as `plan`: the base grid, then the unpadded grid's rows, each
/// closed by a newline.
pub fn layout(vision: &clip::Config, plan: &Anyres) -> VisualLayout {
    let g = vision.grid_side();
    let (h, w) = plan.unpadded_hw;
    let mut slots: Vec<Slot> = (0..g * g).map(|i| Slot::Patch { grid: 0, row: i / g, col: i % g }).collect();
    for row in 0..h {
        slots.extend((0..w).map(|col| Slot::Patch { grid: 1, row, col }));
        slots.push(Slot::Newline { grid: 1, row });
    }
    let grids = vec![Grid { t: 1, rows: g, cols: g }, Grid { t: 1, rows: h, cols: w }];
    VisualLayout { grids, slots, views: plan.views() }
}

/// For each slot of `layout`, the row of `[base patches (g²); local patches in view order ((V−1)·g²);
/// one zero row]` it takes: base patch i → i; local (ρ, c) → its crop's patch; newline → the zero row.
fn slot_rows(layout: &VisualLayout, plan: &Anyres, g: usize) -> Vec<u32> {
    let zero = (plan.views() * g * g) as u32;
    layout
        .slots
        .iter()
        .map(|s| match *s {
            Slot::Patch { grid: 0, row, col } => (row * g + col) as u32,
            Slot::Patch { row, col, .. } => {
                let stitched = plan.stitched_index(row * plan.unpadded_hw.1 + col);
                let (crop, patch) = plan.crop_patch(stitched / plan.stitched_hw.1, stitched % plan.stitched_hw.1, g);
                ((1 + crop) * g * g + patch) as u32
            }
            Slot::Newline { .. } | Slot::Summary => zero,
        })
        .collect()
}

impl VisionLanguageModel for LlavaNext {
    fn family(&self) -> &'static str {
        FAMILY.name
    }

    fn decoder(&self) -> &decoder::Decoder {
        &self.base.llm
    }

    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> Result<(Tensor, Geometry)> {
        let plan = self.plan(img.width(), img.height())?;
        let side = self.side().0;
        let pixels = processor::views(img, &plan, &self.base.processor, side);
        let pixels = Tensor::from_vec(pixels, (plan.views(), 3, side as usize, side as usize), device)?;
        Ok((pixels, Geometry::original_frame(img.width(), img.height())))
    }

    /// The base view squeezes the whole image; the crop grid covers what unpadding kept of the canvas.
    fn grid_windows(&self, geometry: &Geometry, _: &VisualLayout) -> Vec<[f64; 4]> {
        let (w, h) = (geometry.width, geometry.height);
        let (crop, patches) = self.side();
        match self.plan(w, h) {
            Ok(plan) => vec![[0.0, 0.0, f64::from(w), f64::from(h)], plan.unpadded_window(w, h, crop, patches)],
            // Only an empty image has no plan, and it has nothing to draw on.
            Err(_) => Vec::new(),
        }
    }

    fn check_pixels(&self, p: &Tensor) -> Result<Tensor> {
        let cfg = &self.base.config.vision_config;
        let p = if p.rank() == 5 && p.dim(0)? == 1 { p.squeeze(0)? } else { p.clone() };
        let (c, s) = (cfg.num_channels, cfg.image_size);
        if p.rank() != 4 || p.dims()[1..] != [c, s, s] || p.dim(0)? < 2 {
            return Err(Error::invalid(
                "pixel_values",
                format!(
                    "has shape {:?}; this model expects [V, {c}, {s}, {s}] or [1, V, {c}, {s}, {s}] (V ≥ 2 views)",
                    p.dims()
                ),
            ));
        }
        super::finite_pixels(&p)
    }

    /// One CLIP pass per view, then the views' patches laid out as the decoder sees them (§4 of the
    /// spec): every per-slot tensor has a zero row at each newline slot.
    fn encode(&self, pixels: &Tensor, image_size: Option<(u32, u32)>, needs: Needs) -> Result<VisionEvidence> {
        let (width, height) = image_size.ok_or_else(|| {
            Error::invalid(
                "pixel_values",
                "alone do not say the image's size, which LLaVA-NeXT's layout needs (`image_sizes`)",
            )
        })?;
        let plan = self.plan(width, height)?;
        let views = pixels.dim(0)?;
        if views != plan.views() {
            return Err(Error::invalid(
                "pixel_values",
                format!(
                    "hold {views} views; a {width}×{height} image has {} (the base view and {}×{} crops)",
                    plan.views(),
                    plan.rows,
                    plan.cols
                ),
            ));
        }
        let cfg = &self.base.config;
        let depth = cfg.vision_config.num_hidden_layers;
        let g = self.side().1;
        let feature_layer = cfg.feature_layer().map_err(Error::Unsupported)?;
        let first_similarity = (depth + 1).saturating_sub(SIMILARITY_LAYERS);
        let mut request =
            clip::VisionRequest { hidden_states: vec![feature_layer], cls_attention_layer: Some(feature_layer - 1) };
        if needs.similarity {
            request.hidden_states.extend(first_similarity..=depth);
        }
        let pixels = pixels.to_device(self.base.llm.device())?;
        let t0 = Instant::now();
        let (mut features, mut saliency, mut keys, mut similarity, mut summary) =
            (vec![], vec![], vec![], vec![], None);
        let mut similarity_ms = 0.0;
        for v in 0..views {
            let out = self.base.vision.forward(&pixels.get(v)?, &request)?;
            let patches = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(0, 1, t.dim(0)? - 1)?) };
            let hidden = &out.hidden_states[&feature_layer];
            if v == 0 {
                summary = Some(hidden.narrow(0, 0, 1)?);
            }
            features.push(patches(hidden)?);
            saliency.extend(clip::cls_saliency(out.cls_attention.as_ref().expect("requested"))?.to_vec1::<f32>()?);
            keys.push(patches(out.mean_keys.as_ref().expect("requested with the attention row"))?);
            if needs.similarity {
                let t1 = Instant::now();
                let hs =
                    (first_similarity..=depth).map(|i| patches(&out.hidden_states[&i])).collect::<Result<Vec<_>>>()?;
                similarity.push(llava::similarity_features(&hs)?);
                similarity_ms += t1.elapsed().as_secs_f64() * 1e3;
            }
        }
        let layout = self.layout(&plan);
        let rows = slot_rows(&layout, &plan, g);
        let idx = Tensor::new(rows.as_slice(), features[0].device())?;
        let per_slot = |parts: &[Tensor]| -> Result<Tensor> {
            let all = Tensor::cat(parts, 0)?;
            let zero = Tensor::zeros((1, all.dim(1)?), all.dtype(), all.device())?;
            Ok(Tensor::cat(&[&all, &zero], 0)?.index_select(&idx, 0)?)
        };
        let summed = rows.iter().map(|&r| saliency.get(r as usize).copied().unwrap_or(0.0)).collect();
        Ok(VisionEvidence {
            model: FAMILY.name,
            features: per_slot(&features)?,
            saliency: Some(Saliency { summed, heads: cfg.vision_config.num_attention_heads }),
            similarity: if needs.similarity { Some(per_slot(&similarity)?) } else { None },
            similarity_ms,
            keys: Some(per_slot(&keys)?),
            summary,
            geometry: None,
            encoder_order: None,
            vision_ms: t0.elapsed().as_secs_f64() * 1e3 - similarity_ms,
            layout,
        })
    }

    fn project(&self, features: &Tensor) -> Result<Tensor> {
        self.base.project(features)
    }

    fn newline_embedding(&self) -> Option<&Tensor> {
        Some(&self.image_newline)
    }

    fn prompt(&self, tokenizer: &TextTokenizer, conversation: &Conversation) -> Result<PromptTokens> {
        match self.template {
            config::Template::VicunaV1 => self.base.prompt(tokenizer, conversation),
            config::Template::MistralInst => {
                conversation.validate()?;
                let text = processor::mistral_inst(conversation);
                let (image_token, placeholder) =
                    (self.base.config.image_token_index, llava::processor::IMAGE_PLACEHOLDER);
                tokenizer.conversation(&text, image_token, placeholder, conversation.has_image())
            }
        }
    }

    fn sequence_layout(&self, prompt: &PromptTokens, image: Option<&VisualLayout>) -> SequenceLayout {
        self.base.sequence_layout(prompt, image)
    }

    fn default_eos(&self, tokenizer: Option<&TextTokenizer>) -> Vec<u32> {
        self.base.default_eos(tokenizer)
    }
}
