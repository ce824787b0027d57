//! Qwen2.5-VL (Bai et al., "Qwen2.5-VL Technical Report", 2025), after transformers'
//! `Qwen2_5_VLForConditionalGeneration`: smart-resized images cut into 14-pixel patches (two temporal
//! copies), a windowed ViT whose 2×2 merger already speaks the decoder's width, a Qwen2 decoder (qkv bias,
//! grouped KV heads) with three-dimensional rotary positions. One merged grid per image, no summary token;
//! boxes are answered in pixels of the resized image.

pub mod config;
pub mod processor;
pub mod vision;

pub use config::Config;
pub use processor::PreprocessConfig;

use super::{decoder, Family, LoadOptions, VisionLanguageModel};
use crate::checkpoint::Checkpoint;
use crate::layout::{Needs, Positions, Saliency, SequenceLayout, Slot, VisionEvidence, VisualLayout};
use crate::preprocess::{Frame, Geometry};
use crate::prompt::{Conversation, Part, PromptTokens, Role, TextTokenizer};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::time::Instant;

pub const FAMILY: Family = Family { name: "qwen2.5-vl", model_types: &["qwen2_5_vl"], load };

/// The system prompt the chat template adds when the conversation has none.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";
pub const IMAGE_PAD: &str = "<|image_pad|>";
/// Blocks whose mean output feeds Nüwa's similarity features (SPEC §7.2).
pub const SIMILARITY_BLOCKS: std::ops::RangeInclusive<usize> = 7..=23;

pub struct Qwen25Vl {
    pub vision: vision::VisionTower,
    pub llm: decoder::Decoder,
    pub config: Config,
    pub processor: PreprocessConfig,
}

fn load(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Box<dyn VisionLanguageModel>> {
    Ok(Box::new(Qwen25Vl::load(ckpt, opts)?))
}

impl Qwen25Vl {
    pub fn load(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let mut config = Config::from_checkpoint(ckpt)?;
        config.trim(opts.llm_layers, opts.vision_layers)?;
        config.text.weights = opts.weights();
        config.vision.weight_dtype = opts.weights().dtype;
        let processor = checkpoint_processor(ckpt)?;
        let processor = match opts.max_pixels {
            Some(max) => processor.with_max_pixels(max)?,
            None => processor,
        };
        let vb = ckpt.var_builder(opts.compute_dtype(), &opts.device)?;
        Self::new(config, processor, vb).map_err(|e| Error::checkpoint(&ckpt.dir, e.to_string()))
    }

    /// The networks of `config` from `vb` (hub tensor names: `visual.*`, `model.*`, `lm_head.*`).
    pub fn new(config: Config, processor: PreprocessConfig, vb: candle_nn::VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            vision: vision::VisionTower::new(&config.vision, vb.pp("visual"))?,
            llm: decoder::Decoder::new(&config.text, vb.pp("model"), vb.pp("lm_head"))?,
            config,
            processor,
        })
    }

    /// The patch grid (rows, cols) of a `width`×`height` image after smart resizing.
    pub fn patch_grid(&self, width: u32, height: u32) -> Result<(usize, usize)> {
        patch_grid(&self.processor, width, height)
    }

    fn layout(&self, gh: usize, gw: usize) -> VisualLayout {
        merged_layout(&self.config.vision, gh, gw)
    }
}

/// The checkpoint's `preprocessor_config.json`, or the release's values without one.
pub fn checkpoint_processor(ckpt: &Checkpoint) -> Result<PreprocessConfig> {
    match &ckpt.preprocessor_file {
        Some(p) => PreprocessConfig::from_file(p),
        None => Ok(PreprocessConfig::default()),
    }
}

/// The patch grid (rows, cols) `processor` makes of a `width`×`height` image (smart resizing).
pub fn patch_grid(processor: &PreprocessConfig, width: u32, height: u32) -> Result<(usize, usize)> {
    let p = processor;
    let factor = p.patch_size.checked_mul(p.merge_size).ok_or_else(|| Error::invalid("patch_size", "overflows"))?;
    let (h, w) = processor::smart_resize(height, width, factor, p.min_pixels, p.max_pixels)?;
    Ok(((h / p.patch_size) as usize, (w / p.patch_size) as usize))
}

/// The merged-token layout of a `gh`×`gw` patch grid: one raster grid.
pub fn merged_layout(vision: &config::VisionConfig, gh: usize, gw: usize) -> VisualLayout {
    let m = vision.spatial_merge_size;
    VisualLayout::grid(gh / m, gw / m)
}

impl VisionLanguageModel for Qwen25Vl {
    fn family(&self) -> &'static str {
        FAMILY.name
    }

    fn decoder(&self) -> &decoder::Decoder {
        &self.llm
    }

    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> Result<(Tensor, Geometry)> {
        let out = processor::preprocess(img, &self.processor)?;
        let rows = out.grid_thw.iter().product::<usize>();
        let pixels = Tensor::from_vec(out.pixels, (rows, self.config.vision.patch_values()), device)?;
        let frame = Frame::ResizedPixels { width: out.resized_hw.1, height: out.resized_hw.0 };
        Ok((pixels, Geometry { frame, ..Geometry::original_frame(img.width(), img.height()) }))
    }

    /// The resized image itself: its sides are multiples of 28 within the pixel limits, so smart resizing
    /// keeps it (checked).
    fn size_of_grid(&self, [t, gh, gw]: [usize; 3]) -> Result<(u32, u32)> {
        let patch = self.processor.patch_size as usize;
        let size = u32::try_from(gw * patch).ok().zip(u32::try_from(gh * patch).ok());
        match size {
            Some((w, h)) if t == 1 && self.patch_grid(w, h).ok() == Some((gh, gw)) => Ok((w, h)),
            _ => Err(Error::invalid(
                "pixel_values",
                format!("come with `image_grid_thw` [{t}, {gh}, {gw}], which no single image preprocesses to here"),
            )),
        }
    }

    fn grounding_prompt(&self, expression: &str) -> String {
        crate::ground::qwen_prompt(expression)
    }

    fn check_pixels(&self, p: &Tensor) -> Result<Tensor> {
        let values = self.config.vision.patch_values();
        if p.rank() != 2 || p.dim(1)? != values || p.dim(0)? == 0 || !p.dim(0)?.is_multiple_of(4) {
            return Err(Error::invalid(
                "pixel_values",
                format!(
                    "has shape {:?}; this model expects [patches, {values}] with patches a multiple of 4",
                    p.dims()
                ),
            ));
        }
        super::finite_pixels(p)
    }

    /// One tower pass: merged tokens in raster order as the features (they are already in the decoder's
    /// width), the last block's attention column sums as saliency, and with `needs.similarity` the merger
    /// applied to the mean of blocks 7…23, put in raster order.
    fn encode(&self, pixels: &Tensor, image_size: Option<(u32, u32)>, needs: Needs) -> Result<VisionEvidence> {
        let (width, height) = image_size.ok_or_else(|| {
            Error::invalid(
                "pixel_values",
                "alone do not say the image's size, which Qwen2.5-VL's grid needs (`image_grid_thw`)",
            )
        })?;
        let (gh, gw) = self.patch_grid(width, height)?;
        if pixels.dim(0)? != gh * gw {
            return Err(Error::invalid(
                "pixel_values",
                format!("hold {} patch rows; a {width}×{height} image has {gh}×{gw} = {}", pixels.dim(0)?, gh * gw),
            ));
        }
        let depth = self.config.vision.depth;
        let mean_of = needs.similarity.then(|| {
            let last = depth - 1;
            (*SIMILARITY_BLOCKS.start()).min(last)..=(*SIMILARITY_BLOCKS.end()).min(last)
        });
        let req = vision::TowerRequest { mean_of, saliency_block: Some(depth - 1), ..Default::default() };
        let pixels = pixels.to_device(self.llm.device())?.to_dtype(self.llm.dtype())?;
        let t0 = Instant::now();
        let out = self.vision.forward(&pixels, gh, gw, &req)?;
        let vision_ms = t0.elapsed().as_secs_f64() * 1e3;
        let group = self.config.vision.spatial_merge_size.pow(2);
        let per_token = vision::group_mean(out.saliency.as_deref().expect("requested above"), group);
        let mut summed = vec![0f32; per_token.len()];
        for (k, &r) in out.window_index.iter().enumerate() {
            summed[r] = per_token[k];
        }
        let t1 = Instant::now();
        let similarity = match &out.mean {
            Some(mean) => Some(vision::to_raster(
                &self.vision.merger.forward(&mean.to_dtype(self.llm.dtype())?)?,
                &out.window_index,
            )?),
            None => None,
        };
        let similarity_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(VisionEvidence {
            model: FAMILY.name,
            layout: self.layout(gh, gw),
            features: vision::to_raster(&out.merged, &out.window_index)?,
            // Already averaged over heads: one "head".
            saliency: Some(Saliency { summed, heads: 1 }),
            similarity,
            similarity_ms,
            keys: None,
            summary: None,
            geometry: None,
            encoder_order: Some(out.window_index),
            vision_ms,
        })
    }

    /// The merger's output is the decoder's input.
    fn project(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features.clone())
    }

    fn prompt(&self, tokenizer: &TextTokenizer, conversation: &Conversation) -> Result<PromptTokens> {
        conversation.validate()?;
        let text = chat_template(conversation);
        tokenizer.conversation(&text, self.config.image_token_id, IMAGE_PAD, conversation.has_image())
    }

    /// `get_rope_index` for one image: text before it counts 0…P−1; merged token (r, c) is (P, P + r, P + c);
    /// text after it starts at P + max(Hm, Wm).
    fn sequence_layout(&self, prompt: &PromptTokens, image: Option<&VisualLayout>) -> SequenceLayout {
        let p = prompt.prefix.len();
        let (hm, wm, n) = match image.and_then(|l| l.grids.first().map(|g| (*g, l.len()))) {
            Some((g, n)) => (g.rows, g.cols, n),
            None => (0, 0, 0),
        };
        let mut axes: [Vec<u32>; 3] = std::array::from_fn(|_| (0..p as u32).collect());
        if let Some(l) = image {
            for s in &l.slots {
                let (r, c) = match *s {
                    Slot::Patch { row, col, .. } => (row, col),
                    _ => (0, 0),
                };
                axes[0].push(p as u32);
                axes[1].push((p + r) as u32);
                axes[2].push((p + c) as u32);
            }
        }
        let start = (p + if n > 0 { hm.max(wm) } else { 0 }) as u32;
        for a in axes.iter_mut() {
            a.extend(start..start + prompt.suffix.len() as u32);
        }
        SequenceLayout { unpruned: Positions::MRope(axes), prefix_len: p, n_slots: n }
    }

    fn default_eos(&self, tokenizer: Option<&TextTokenizer>) -> Vec<u32> {
        let t = tokenizer.map(|t| (t.token_id("<|im_end|>"), t.token_id("<|endoftext|>")));
        t.map_or(vec![], |(a, b)| a.into_iter().chain(b).collect())
    }
}

/// The checkpoint's chat template for `conversation`: the default system prompt unless one is given, each
/// message as `<|im_start|>{role}\n{content}<|im_end|>\n` with an image written
/// `<|vision_start|><|image_pad|><|vision_end|>` where it stands, then the generation prompt.
pub fn chat_template(conversation: &Conversation) -> String {
    let mut out = String::new();
    if conversation.messages.first().is_none_or(|m| m.role != Role::System) {
        out.push_str(&format!("<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"));
    }
    for m in &conversation.messages {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        out.push_str(&format!("<|im_start|>{role}\n"));
        for p in &m.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Image => out.push_str(&format!("<|vision_start|>{IMAGE_PAD}<|vision_end|>")),
            }
        }
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}
