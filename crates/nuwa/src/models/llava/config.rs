//! LLaVA's `config.json` (transformers' `LlavaConfig`) and where its weights live in a checkpoint.

use crate::models::{clip, decoder};
use crate::{Error, Result};
use serde::Deserialize;

/// `LlavaConfig` from a llava-hf `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_vision_config")]
    pub vision_config: clip::Config,
    #[serde(default = "default_text_config")]
    pub text_config: decoder::Config,
    #[serde(default = "default_image_token_index", alias = "image_token_id")]
    pub image_token_index: u32,
    #[serde(default = "default_projector_hidden_act")]
    pub projector_hidden_act: String,
    #[serde(default = "default_vision_feature_layer")]
    pub vision_feature_layer: i64,
    #[serde(default = "default_select_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
    /// Older llava-hf configs keep the vocabulary size here rather than in `text_config`.
    pub vocab_size: Option<usize>,
    #[serde(alias = "dtype")]
    pub torch_dtype: Option<String>,
    /// Sections absent from the file, filled with transformers' defaults (named if the weights disagree).
    #[serde(skip)]
    pub defaulted_sections: Vec<&'static str>,
}

fn default_vision_config() -> clip::Config {
    // transformers' LlavaConfig builds CLIP ViT-L/14-336 when the key is absent.
    serde_json::from_value(serde_json::json!({
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768,
    }))
    .expect("static CLIP config")
}
fn default_text_config() -> decoder::Config {
    serde_json::from_value(serde_json::json!({})).expect("static LLaMA config")
}
fn default_image_token_index() -> u32 {
    32000
}
fn default_projector_hidden_act() -> String {
    "gelu".into()
}
fn default_vision_feature_layer() -> i64 {
    -2
}
fn default_select_strategy() -> String {
    "default".into()
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Parses a `config.json`, resolving values a hub config may leave out, and checks what this
    /// implementation supports. Errors name the field.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| match e.path().to_string() {
            p if p == "." => format!("malformed config: {}", e.inner()),
            p => format!("field `{p}`: {}", e.inner()),
        })?;
        let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("malformed config: {e}"))?;
        cfg.defaulted_sections =
            ["vision_config", "text_config"].into_iter().filter(|k| raw.get(k).is_none_or(|v| v.is_null())).collect();
        if cfg.text_config.vocab_size.is_none() {
            cfg.text_config.vocab_size = cfg.vocab_size;
        }
        cfg.text_config.validate()?;
        cfg.vision_config.validate()?;
        if cfg.projector_hidden_act != "gelu" {
            return Err(format!("projector_hidden_act {:?} is not supported (gelu)", cfg.projector_hidden_act));
        }
        if cfg.vision_feature_select_strategy != "default" {
            return Err(format!(
                "vision_feature_select_strategy {:?} is not supported (\"default\": patch tokens without [CLS])",
                cfg.vision_feature_select_strategy
            ));
        }
        cfg.feature_layer()?;
        Ok(cfg)
    }

    /// Index into the vision encoder's hidden states that feeds the projector (`-2` → `L - 1`).
    pub fn feature_layer(&self) -> std::result::Result<usize, String> {
        // i128 holds any layer count and index without overflow (a config can say 2^63 layers).
        let depth = self.vision_config.num_hidden_layers as i128;
        let layer = i128::from(self.vision_feature_layer);
        let idx = if layer < 0 { depth + 1 + layer } else { layer };
        if !(1..=depth).contains(&idx) {
            return Err(format!(
                "vision_feature_layer {} is outside the vision encoder's {} layers",
                self.vision_feature_layer, depth
            ));
        }
        Ok(idx as usize)
    }
}

/// Where each part's weights live in the checkpoint: llava-hf releases before transformers 4.52 use
/// `language_model.model.*`, later ones `model.language_model.*`; the vision tower may or may not nest
/// its weights under `vision_model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightPrefixes {
    pub vision: String,
    pub projector: String,
    pub llm: String,
    pub lm_head: String,
}

impl WeightPrefixes {
    /// Derives the prefixes from the tensor names in a checkpoint.
    pub fn detect<'a>(names: impl Iterator<Item = &'a str> + Clone) -> std::result::Result<Self, String> {
        let has = |needle: &str| names.clone().any(|n| n.starts_with(needle));
        let (root, llm, lm_head) = if has("model.language_model.") {
            ("model.", "model.language_model", "lm_head")
        } else if has("language_model.model.") {
            ("", "language_model.model", "language_model.lm_head")
        } else {
            return Err("no decoder weights: expected tensors named `language_model.model.*` or \
                        `model.language_model.*` (a llava-hf checkpoint)"
                .into());
        };
        let tower = format!("{root}vision_tower.");
        let vision = if has(&format!("{tower}vision_model.")) {
            format!("{tower}vision_model")
        } else if has(&tower) {
            format!("{root}vision_tower")
        } else {
            return Err(format!("no vision weights: expected tensors named `{tower}vision_model.*` or `{tower}*`"));
        };
        Ok(Self { vision, projector: format!("{root}multi_modal_projector"), llm: llm.into(), lm_head: lm_head.into() })
    }
}

impl Config {
    /// The configuration of a checkpoint, errors naming `config.json` and the field.
    pub fn from_checkpoint(ckpt: &crate::checkpoint::Checkpoint) -> Result<Self> {
        Self::from_json(&ckpt.config_text).map_err(|m| Error::config(&ckpt.config_path, m))
    }

    /// Shortens the decoder and/or the vision encoder (benchmarks on machines too small for the whole
    /// model). The vision encoder keeps feeding the projector from its second-to-last layer.
    pub fn trim(&mut self, llm_layers: Option<usize>, vision_layers: Option<usize>) -> Result<()> {
        if let Some(n) = llm_layers {
            let full = self.text_config.num_hidden_layers;
            if n < 2 || n > full {
                return Err(Error::invalid(
                    "llm_layers",
                    format!("must be within 2..={full} (stage 2 cuts between two decoder layers), got {n}"),
                ));
            }
            self.text_config.num_hidden_layers = n;
        }
        if let Some(n) = vision_layers {
            let full = self.vision_config.num_hidden_layers;
            if n < 2 || n > full {
                return Err(Error::invalid(
                    "vision_layers",
                    format!("must be within 2..={full} (the projector reads the second-to-last layer), got {n}"),
                ));
            }
            self.vision_config.num_hidden_layers = n;
            // A layer the shorter encoder lacks (from either end) falls back to the second-to-last.
            if self.feature_layer().is_err() {
                self.vision_feature_layer = -2;
            }
        }
        Ok(())
    }
}
