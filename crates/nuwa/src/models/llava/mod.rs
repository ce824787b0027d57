//! LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023), after transformers'
//! `LlavaForConditionalGeneration`: a CLIP vision tower, a two-layer GELU projector, a LLaMA decoder.
//! One 24×24 patch grid per image (the [CLS] token never reaches the decoder), 1-D positions, the
//! vicuna_v1 conversation, boxes answered in the padded square.

pub mod config;
pub mod processor;

pub use config::{Config, WeightPrefixes};
pub use processor::PreprocessConfig;

use super::linear::Linear;
use super::{clip, decoder, Family, LoadOptions, VisionLanguageModel};
use crate::checkpoint::Checkpoint;
use crate::layout::{Needs, Saliency, SequenceLayout, VisionEvidence, VisualLayout};
use crate::preprocess::Geometry;
use crate::prompt::{Conversation, PromptTokens, TextTokenizer};
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::time::Instant;

pub const FAMILY: Family = Family { name: "llava-1.5", model_types: &["llava"], load };

/// How many trailing encoder hidden states feed the patch-similarity features (Nüwa's M).
pub const SIMILARITY_LAYERS: usize = 9;

#[derive(Debug, Clone)]
pub struct Projector {
    linear_1: Linear,
    linear_2: Linear,
}

impl Projector {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (v, t) = (cfg.vision_config.hidden_size, cfg.text_config.hidden_size);
        let (bias, q) = (cfg.multimodal_projector_bias, cfg.text_config.weights);
        Ok(Self {
            linear_1: Linear::load(v, t, bias, q, vb.pp("linear_1"))?,
            linear_2: Linear::load(t, t, bias, q, vb.pp("linear_2"))?,
        })
    }
}

impl Module for Projector {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.gelu_erf()?)
    }
}

#[derive(Debug, Clone)]
pub struct Llava {
    pub vision: clip::ClipVisionModel,
    pub projector: Projector,
    pub llm: decoder::Decoder,
    pub config: Config,
    pub processor: PreprocessConfig,
}

impl Llava {
    pub fn new(cfg: &Config, prefixes: &WeightPrefixes, processor: PreprocessConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            vision: clip::ClipVisionModel::new(&cfg.vision_config, vb.pp(&prefixes.vision))?,
            projector: Projector::new(cfg, vb.pp(&prefixes.projector))?,
            llm: decoder::Decoder::new(&cfg.text_config, vb.pp(&prefixes.llm), vb.pp(&prefixes.lm_head))?,
            config: cfg.clone(),
            processor,
        })
    }

    /// Loads a llava-hf checkpoint, trimmed as `opts` says.
    pub fn load(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        Self::load_with(ckpt, Config::from_checkpoint(ckpt)?, opts)
    }

    /// Loads the networks of a checkpoint whose configuration a family has already read (and adjusted).
    pub fn load_with(ckpt: &Checkpoint, mut config: Config, opts: &LoadOptions) -> Result<Self> {
        if opts.max_pixels.is_some() {
            return Err(Error::invalid(
                "max_pixels",
                "applies to models that resize images freely (Qwen2.5-VL); LLaVA's views are fixed 336-pixel squares",
            ));
        }
        config.trim(opts.llm_layers, opts.vision_layers)?;
        config.text_config.weights = opts.weights();
        config.vision_config.weight_dtype = opts.weights().dtype;
        let prefixes = WeightPrefixes::detect(ckpt.tensor_names.iter().map(String::as_str))
            .map_err(|m| Error::checkpoint(&ckpt.dir, m))?;
        let processor = match &ckpt.preprocessor_file {
            Some(p) => PreprocessConfig::from_file(p)?,
            None => PreprocessConfig::default(),
        };
        let side = config.vision_config.image_size as u32;
        if let Some((w, h)) = processor.output_size().filter(|&s| s != (side, side)) {
            let file = ckpt.preprocessor_file.as_ref().map_or_else(
                || "preprocessor_config.json is missing and CLIPImageProcessor's default".to_owned(),
                |p| format!("{} (crop_size/size)", p.display()),
            );
            return Err(Error::config(
                &ckpt.config_path,
                format!("{file} makes {w}x{h} images but vision_config.image_size is {side}"),
            ));
        }
        let vb = ckpt.var_builder(opts.compute_dtype(), &opts.device)?;
        Self::new(&config, &prefixes, processor, vb).map_err(|e| match e {
            Error::Tensor(e) if !config.defaulted_sections.is_empty() => Error::checkpoint(
                &ckpt.dir,
                format!(
                    "{e} — config.json has no {} section, and transformers' defaults for it (LLaVA-1.5-7B's) do not \
                     match these weights",
                    config.defaulted_sections.join(" or ")
                ),
            ),
            Error::Tensor(e) => Error::checkpoint(&ckpt.dir, e.to_string()),
            e => e,
        })
    }

    fn grid(&self) -> (usize, usize) {
        let g = self.config.vision_config.grid_side();
        (g, g)
    }
}

fn load(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Box<dyn VisionLanguageModel>> {
    Ok(Box::new(Llava::load(ckpt, opts)?))
}

impl VisionLanguageModel for Llava {
    fn family(&self) -> &'static str {
        FAMILY.name
    }

    fn decoder(&self) -> &decoder::Decoder {
        &self.llm
    }

    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> Result<(Tensor, Geometry)> {
        let pre = processor::preprocess(img, &self.processor);
        let pixels = Tensor::from_vec(pre.pixels, (3, pre.height as usize, pre.width as usize), device)?;
        Ok((pixels, pre.geometry))
    }

    fn check_pixels(&self, p: &Tensor) -> Result<Tensor> {
        let cfg = &self.config.vision_config;
        let p = if p.rank() == 4 && p.dim(0)? == 1 { p.squeeze(0)? } else { p.clone() };
        let (c, s) = (cfg.num_channels, cfg.image_size);
        if p.dims() != [c, s, s] {
            return Err(Error::invalid(
                "pixel_values",
                format!("has shape {:?}; this model expects [{c}, {s}, {s}] or [1, {c}, {s}, {s}]", p.dims()),
            ));
        }
        super::finite_pixels(&p)
    }

    /// One CLIP pass keeping the projector's input layer, the [CLS] saliency row at the layer before
    /// (one row of work, always read so overlays have it), that layer's head-mean keys, and with
    /// `needs.similarity` the mean of the trailing hidden states.
    fn encode(&self, pixels: &Tensor, _image_size: Option<(u32, u32)>, needs: Needs) -> Result<VisionEvidence> {
        let cfg = &self.config;
        let depth = cfg.vision_config.num_hidden_layers;
        let feature_layer = cfg.feature_layer().map_err(Error::Unsupported)?;
        let mut request =
            clip::VisionRequest { hidden_states: vec![feature_layer], cls_attention_layer: Some(feature_layer - 1) };
        let first_similarity = (depth + 1).saturating_sub(SIMILARITY_LAYERS);
        if needs.similarity {
            request.hidden_states.extend(first_similarity..=depth);
        }
        let pixels = pixels.to_device(self.llm.device())?;
        let t0 = Instant::now();
        let out = self.vision.forward(&pixels, &request)?;
        let vision_ms = ms(t0);
        // Patch rows only: the [CLS] token never reaches the decoder.
        let patches = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(0, 1, t.dim(0)? - 1)?) };
        let cls = out.cls_attention.as_ref().expect("requested above");
        let t1 = Instant::now();
        let similarity = if needs.similarity {
            let hidden =
                (first_similarity..=depth).map(|i| patches(&out.hidden_states[&i])).collect::<Result<Vec<_>>>()?;
            Some(similarity_features(&hidden)?)
        } else {
            None
        };
        let similarity_ms = ms(t1);
        let features = &out.hidden_states[&feature_layer];
        Ok(VisionEvidence {
            model: FAMILY.name,
            layout: VisualLayout::grid(self.grid().0, self.grid().1),
            features: patches(features)?,
            saliency: Some(Saliency {
                summed: clip::cls_saliency(cls)?.to_vec1::<f32>()?,
                heads: cfg.vision_config.num_attention_heads,
            }),
            similarity,
            similarity_ms,
            keys: Some(patches(out.mean_keys.as_ref().expect("requested with the attention row"))?),
            summary: Some(features.narrow(0, 0, 1)?),
            geometry: None,
            encoder_order: None,
            vision_ms,
        })
    }

    fn project(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.projector.forward(features)?)
    }

    fn prompt(&self, tokenizer: &TextTokenizer, conversation: &Conversation) -> Result<PromptTokens> {
        conversation.validate()?;
        let text = processor::vicuna_v1(conversation);
        let image = conversation.has_image();
        tokenizer.conversation(&text, self.config.image_token_index, processor::IMAGE_PLACEHOLDER, image)
    }

    fn sequence_layout(&self, prompt: &PromptTokens, image: Option<&VisualLayout>) -> SequenceLayout {
        SequenceLayout::linear(prompt.prefix.len(), image.map_or(0, VisualLayout::len), prompt.suffix.len())
    }

    fn default_eos(&self, tokenizer: Option<&TextTokenizer>) -> Vec<u32> {
        tokenizer.and_then(|t| t.token_id("</s>")).into_iter().collect()
    }
}

/// Nüwa's similarity features M: the mean of the encoder's trailing hidden states (each (N, D)), in f32.
///
/// Summed one tensor at a time in order, then scaled: the same additions `stack(..).mean(0)` makes (the
/// result is bit for bit the same) without the stacked copy or a strided reduction over the first
/// dimension, which made this 10–30× slower than stage 1's own work.
pub fn similarity_features(tensors: &[Tensor]) -> Result<Tensor> {
    let (first, rest) = tensors.split_first().ok_or_else(|| Error::Internal("a mean of no tensors".into()))?;
    let mut sum = first.to_dtype(DType::F32)?;
    for t in rest {
        sum = (sum + t.to_dtype(DType::F32)?)?;
    }
    Ok((sum / tensors.len() as f64)?)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
