//! Qwen2.5-VL's `config.json` (transformers' `Qwen2_5_VLConfig`): the text model's keys at the root, the
//! vision tower's under `vision_config`, M-RoPE's split in `rope_scaling`. Absent keys take transformers'
//! defaults, several of which differ from the 7B's (SPEC-qwen2.5-vl §1.2).

use crate::models::decoder;
use crate::{Error, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d32")]
    pub depth: usize,
    #[serde(default = "d3584")]
    pub hidden_size: usize,
    #[serde(default = "d16")]
    pub num_heads: usize,
    #[serde(default = "d3420")]
    pub intermediate_size: usize,
    #[serde(default = "d3584")]
    pub out_hidden_size: usize,
    #[serde(default = "d14")]
    pub patch_size: usize,
    #[serde(default = "d2")]
    pub temporal_patch_size: usize,
    #[serde(default = "d2")]
    pub spatial_merge_size: usize,
    #[serde(default = "d112")]
    pub window_size: usize,
    #[serde(default = "default_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default = "d3", alias = "in_chans")]
    pub in_channels: usize,
    /// The linears' weight dtype when it is not the activations' (set at load).
    #[serde(skip)]
    pub weight_dtype: Option<candle_core::DType>,
}

impl VisionConfig {
    /// How the tower's linears hold their weights (never quantised).
    pub fn weights(&self) -> crate::models::linear::Weights {
        crate::models::linear::Weights { dtype: self.weight_dtype, quantize: None }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Values of one patch row: channels × temporal copies × patch²  (1176 for the 7B).
    pub fn patch_values(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Side of an attention window in merged tokens (112 px / 2 / 14 = 4).
    pub fn window_side(&self) -> usize {
        (self.window_size / self.spatial_merge_size / self.patch_size).max(1)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("depth", self.depth),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
            ("out_hidden_size", self.out_hidden_size),
            ("patch_size", self.patch_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("spatial_merge_size", self.spatial_merge_size),
            ("window_size", self.window_size),
            ("in_channels", self.in_channels),
        ] {
            if v == 0 || v > 1 << 20 {
                return Err(format!("field `vision_config.{name}`: must be within 1..=1048576, got {v}"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) || !self.head_dim().is_multiple_of(4) {
            return Err(format!(
                "field `vision_config.hidden_size`: {} over {} heads must give a head size divisible by 4 (2-D RoPE)",
                self.hidden_size, self.num_heads
            ));
        }
        if self.spatial_merge_size != 2 {
            return Err(format!(
                "field `vision_config.spatial_merge_size`: only 2 is supported, got {}",
                self.spatial_merge_size
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "field `vision_config.hidden_act`: only \"silu\" is supported, got {:?}",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub mrope_section: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Raw {
    #[serde(default = "d8192")]
    hidden_size: usize,
    #[serde(default = "d29568")]
    intermediate_size: usize,
    #[serde(default = "d80")]
    num_hidden_layers: usize,
    #[serde(default = "d64")]
    num_attention_heads: usize,
    #[serde(default = "d8_opt")]
    num_key_value_heads: Option<usize>,
    #[serde(default = "eps")]
    rms_norm_eps: f64,
    #[serde(default = "theta")]
    rope_theta: f64,
    rope_scaling: Option<RopeScaling>,
    #[serde(default = "vocab")]
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "silu")]
    hidden_act: String,
    #[serde(default = "d128000")]
    max_position_embeddings: usize,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default = "image_token")]
    image_token_id: u32,
    #[serde(default = "vision_start")]
    vision_start_token_id: u32,
    #[serde(default = "vision_end")]
    vision_end_token_id: u32,
    #[serde(default = "default_vision")]
    vision_config: VisionConfig,
}

/// What the family reads from `config.json`.
#[derive(Debug, Clone)]
pub struct Config {
    pub text: decoder::Config,
    pub vision: VisionConfig,
    pub mrope_section: [usize; 3],
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

impl Config {
    /// Parses a `config.json`; errors name the field.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: Raw = serde_path_to_error::deserialize(de).map_err(|e| match e.path().to_string() {
            p if p == "." => format!("malformed config: {}", e.inner()),
            p => format!("field `{p}`: {}", e.inner()),
        })?;
        raw.vision_config.validate()?;
        if raw.use_sliding_window {
            return Err("field `use_sliding_window`: sliding-window attention is not supported (Qwen2.5-VL \
                        checkpoints ship it off)"
                .into());
        }
        let heads = raw.num_attention_heads;
        let head_dim = raw.hidden_size.checked_div(heads).unwrap_or(0);
        let section = raw.rope_scaling.as_ref().and_then(|r| r.mrope_section.clone()).unwrap_or(vec![16, 24, 24]);
        if let Some(t) = raw.rope_scaling.as_ref().and_then(|r| r.rope_type.as_deref()) {
            if !matches!(t, "mrope" | "default") {
                return Err(format!("field `rope_scaling.type`: {t:?} is not supported (\"mrope\")"));
            }
        }
        let mrope_section: [usize; 3] = section.as_slice().try_into().map_err(|_| {
            format!("field `rope_scaling.mrope_section`: expected 3 entries (t, h, w), got {section:?}")
        })?;
        if mrope_section.iter().sum::<usize>() * 2 != head_dim {
            return Err(format!(
                "field `rope_scaling.mrope_section`: {mrope_section:?} must sum to half the head size ({})",
                head_dim / 2
            ));
        }
        let text = decoder::Config {
            vocab_size: Some(raw.vocab_size),
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: raw.num_key_value_heads,
            head_dim: None,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: Some(raw.rope_theta),
            rope_parameters: None,
            rope_scaling: None,
            hidden_act: raw.hidden_act,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: raw.tie_word_embeddings,
            qkv_bias: true,
            mrope_section: Some(mrope_section),
            weights: Default::default(),
        };
        text.validate()?;
        Ok(Self {
            text,
            vision: raw.vision_config,
            mrope_section,
            image_token_id: raw.image_token_id,
            vision_start_token_id: raw.vision_start_token_id,
            vision_end_token_id: raw.vision_end_token_id,
        })
    }

    pub fn from_checkpoint(ckpt: &crate::checkpoint::Checkpoint) -> Result<Self> {
        Self::from_json(&ckpt.config_text).map_err(|m| Error::config(&ckpt.config_path, m))
    }

    /// Shortens the decoder and/or the vision tower (benchmarks on small machines). A shorter tower keeps
    /// its saliency block full-attention: the last block becomes one.
    pub fn trim(&mut self, llm_layers: Option<usize>, vision_layers: Option<usize>) -> Result<()> {
        if let Some(n) = llm_layers {
            let full = self.text.num_hidden_layers;
            if n < 2 || n > full {
                return Err(Error::invalid(
                    "llm_layers",
                    format!("must be within 2..={full} (stage 2 cuts between two decoder layers), got {n}"),
                ));
            }
            self.text.num_hidden_layers = n;
        }
        if let Some(n) = vision_layers {
            let full = self.vision.depth;
            if n < 1 || n > full {
                return Err(Error::invalid("vision_layers", format!("must be within 1..={full}, got {n}")));
            }
            self.vision.depth = n;
            self.vision.fullatt_block_indexes.retain(|&b| b < n);
            if !self.vision.fullatt_block_indexes.contains(&(n - 1)) {
                self.vision.fullatt_block_indexes.push(n - 1);
            }
        }
        Ok(())
    }
}

fn default_vision() -> VisionConfig {
    serde_json::from_value(serde_json::json!({})).expect("static vision config")
}
fn default_fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}
fn silu() -> String {
    "silu".into()
}
fn eps() -> f64 {
    1e-5
}
fn theta() -> f64 {
    1e6
}
fn vocab() -> usize {
    152064
}
fn image_token() -> u32 {
    151655
}
fn vision_start() -> u32 {
    151652
}
fn vision_end() -> u32 {
    151653
}
fn d8_opt() -> Option<usize> {
    Some(8)
}
macro_rules! consts {
    ($($name:ident = $v:expr),*) => { $(fn $name() -> usize { $v })* };
}
consts!(
    d2 = 2,
    d3 = 3,
    d14 = 14,
    d16 = 16,
    d32 = 32,
    d64 = 64,
    d80 = 80,
    d112 = 112,
    d3420 = 3420,
    d3584 = 3584,
    d8192 = 8192,
    d29568 = 29568,
    d128000 = 128000
);
