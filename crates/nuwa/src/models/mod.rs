//! The model families and the networks they are built from. A family turns an image and a question into
//! a decoder sequence and exposes hooks (requested hidden states, one attention row, a token dropper);
//! none of this knows a pruning method.
//!
//! Adding a family is a folder here implementing [`VisionLanguageModel`] plus one line in [`FAMILIES`].
pub mod activation;
pub mod attention;
pub mod clip;
pub mod decoder;
pub mod gemm;
pub mod linear;
pub mod llava;
pub mod llava_next;
pub mod qwen2_5_vl;

use crate::checkpoint::Checkpoint;
use crate::layout::{Needs, SequenceLayout, VisionEvidence, VisualLayout};
use crate::preprocess::Geometry;
use crate::prompt::{Conversation, PromptTokens, TextTokenizer};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// How a checkpoint is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// Keep only this many decoder layers (benchmarks on machines too small for the whole model).
    pub llm_layers: Option<usize>,
    /// Keep only this many vision-encoder layers.
    pub vision_layers: Option<usize>,
    /// Qwen2.5-VL: the most pixels an image is resized to (lowers `preprocessor_config.json`'s
    /// `max_pixels`, so fewer vision tokens); families with a fixed input size refuse it.
    pub max_pixels: Option<u64>,
    /// Quantise the decoder's linears and LM head (and LLaVA's projector) at load.
    pub quantize: Option<linear::Quantize>,
}

impl LoadOptions {
    /// The activations' dtype (the KV cache's is [`linear::Weights::cache_dtype`]). On the CPU
    /// half-precision weights compute in f32, as llama.cpp's CPU backend does: our kernels read the
    /// half-precision weights directly, and candle's half-precision elementwise ops and attention
    /// matmuls are several times slower than its f32 ones.
    pub fn compute_dtype(&self) -> DType {
        match self.dtype {
            DType::BF16 | DType::F16 if self.device.is_cpu() => DType::F32,
            d => d,
        }
    }

    /// How the linears hold their weights: in `dtype`, or quantised.
    pub fn weights(&self) -> linear::Weights {
        let dtype = (self.compute_dtype() != self.dtype).then_some(self.dtype);
        linear::Weights { dtype, quantize: self.quantize }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            llm_layers: None,
            vision_layers: None,
            max_pixels: None,
            quantize: None,
        }
    }
}

/// One model family: everything between an image plus a question and the decoder.
pub trait VisionLanguageModel: Send + Sync {
    /// The family's name, for reports and messages (`llava-1.5`).
    fn family(&self) -> &'static str;

    /// The language model all families end in.
    fn decoder(&self) -> &decoder::Decoder;

    /// Turns a decoded image into the encoder's input, with the geometry that maps the frame the family
    /// answers boxes in (and its patches) back onto the image.
    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> Result<(Tensor, Geometry)>;

    /// Where each grid of `layout` lies on the image `geometry` describes, `[x0, y0, x1, y1]` in its
    /// pixels (overlays draw the grid's patches there). The default puts every grid over the model
    /// input; families whose grids cover other regions (crops, a squeezed base view) override it.
    fn grid_windows(&self, geometry: &Geometry, layout: &VisualLayout) -> Vec<[f64; 4]> {
        vec![geometry.input_rect(); layout.grids.len()]
    }

    /// The image size whose preprocessing gives the patch grid `grid_thw`, for pixel values that come with
    /// their grid instead of the image's size. Families without such grids refuse.
    fn size_of_grid(&self, grid_thw: [usize; 3]) -> Result<(u32, u32)> {
        Err(Error::invalid(
            "pixel_values",
            format!("come with `image_grid_thw` {grid_thw:?}, which {} pixel values do not have", self.family()),
        ))
    }

    /// The grounding question for a referring expression, as the family's evaluation asks it.
    fn grounding_prompt(&self, expression: &str) -> String {
        crate::ground::prompt(expression)
    }

    /// Checks pixel values supplied directly (already preprocessed) and puts them in the encoder's shape.
    fn check_pixels(&self, pixels: &Tensor) -> Result<Tensor>;

    /// One vision-encoder pass: the layout of the image's tokens and the evidence `needs` asks for.
    /// `image_size` is the original (width, height), for families whose layout depends on it.
    fn encode(&self, pixels: &Tensor, image_size: Option<(u32, u32)>, needs: Needs) -> Result<VisionEvidence>;

    /// Vision features (K, vision hidden) into the decoder's embedding space.
    fn project(&self, features: &Tensor) -> Result<Tensor>;

    /// The decoder-space embedding of [`crate::layout::Slot::Newline`] tokens, which skip the projector.
    fn newline_embedding(&self) -> Option<&Tensor> {
        None
    }

    /// The family's chat template over a conversation, tokenised and split at the image.
    fn prompt(&self, tokenizer: &TextTokenizer, conversation: &Conversation) -> Result<PromptTokens>;

    /// How the unpruned sequence (prefix, the image's slots, suffix) is numbered.
    fn sequence_layout(&self, prompt: &PromptTokens, image: Option<&VisualLayout>) -> SequenceLayout;

    /// End-of-sequence ids when the checkpoint names none.
    fn default_eos(&self, tokenizer: Option<&TextTokenizer>) -> Vec<u32>;
}

/// Pixel values in f32, refused when any is NaN or infinite (every family's last check on supplied pixels).
fn finite_pixels(p: &Tensor) -> Result<Tensor> {
    let p = p.to_dtype(DType::F32)?;
    if p.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid("pixel_values", "hold NaN or infinite values"));
    }
    Ok(p)
}

/// A family the loader knows: whether a `config.json` is one of its own, and how to load it.
pub struct Family {
    pub name: &'static str,
    /// `model_type` values of its configs.
    pub model_types: &'static [&'static str],
    pub load: fn(&Checkpoint, &LoadOptions) -> Result<Box<dyn VisionLanguageModel>>,
}

/// Every supported family.
pub const FAMILIES: &[Family] = &[llava::FAMILY, llava_next::FAMILY, qwen2_5_vl::FAMILY];

/// The family of a checkpoint, from `model_type` (or, when absent, `architectures`) in its config.
pub fn detect(ckpt: &Checkpoint) -> Result<&'static Family> {
    let v: serde_json::Value = serde_json::from_str(&ckpt.config_text)
        .map_err(|e| Error::config(&ckpt.config_path, format!("malformed config: {e}")))?;
    let model_type = v.get("model_type").and_then(|t| t.as_str());
    let architectures: Vec<&str> = v
        .get("architectures")
        .and_then(|a| a.as_array())
        .map_or(vec![], |a| a.iter().filter_map(|x| x.as_str()).collect());
    let found = match model_type {
        Some(t) => FAMILIES.iter().find(|f| f.model_types.contains(&t)),
        // Old conversions may omit `model_type`: LLaVA's architecture name says it.
        None if architectures.contains(&"LlavaForConditionalGeneration") || architectures.is_empty() => {
            FAMILIES.iter().find(|f| f.name == llava::FAMILY.name)
        }
        None => None,
    };
    found.ok_or_else(|| {
        let known: Vec<&str> = FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect();
        Error::config(
            &ckpt.config_path,
            format!(
                "field `model_type`: {} is not a supported model family (supported: {})",
                model_type.map_or_else(|| format!("architectures {architectures:?}"), |t| format!("{t:?}")),
                known.join(", ")
            ),
        )
    })
}
