//! LLaVA-NeXT's `config.json` (transformers' `LlavaNextConfig`): LLaVA-1.5's keys plus the anyres
//! pinpoints, each `[height, width]` in pixels.

use crate::models::llava;
use serde_json::Value;

/// transformers' default `image_grid_pinpoints`.
pub const DEFAULT_PINPOINTS: [[u32; 2]; 5] = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

/// The conversation format of the checkpoint's language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Vicuna-based checkpoints (`llava-v1.6-vicuna-*`): LLaVA's `llava_v1`, the same as LLaVA-1.5's.
    VicunaV1,
    /// Mistral-based checkpoints (`llava-v1.6-mistral-7b-hf`): `[INST] <image>\n{question} [/INST]`.
    MistralInst,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The networks' shapes: the same keys as LLaVA-1.5.
    pub llava: llava::Config,
    /// Candidate resolutions, `[height, width]`, each a multiple of the vision input size.
    pub pinpoints: Vec<[u32; 2]>,
    pub template: Template,
}

impl Config {
    /// Parses a `config.json`; errors name the field.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let llava = llava::Config::from_json(text)?;
        let raw: Value = serde_json::from_str(text).map_err(|e| format!("malformed config: {e}"))?;
        let pinpoints = match raw.get("image_grid_pinpoints").filter(|v| !v.is_null()) {
            None => DEFAULT_PINPOINTS.to_vec(),
            Some(v) => pinpoints(v, llava.vision_config.image_size)?,
        };
        let text = raw.get("text_config");
        let template = match text.and_then(|t| t.get("model_type")).and_then(Value::as_str) {
            None | Some("llama") => Template::VicunaV1,
            Some("mistral") => Template::MistralInst,
            Some(other) => {
                return Err(format!(
                    "field `text_config.model_type`: {other:?} is not a supported LLaVA-NeXT language model (llama, mistral)"
                ))
            }
        };
        let mut llava = llava;
        // Attention over a sliding window is full attention up to its length; beyond it is refused.
        if let Some(window) = text.and_then(|t| t.get("sliding_window")).and_then(Value::as_u64) {
            let mpe = &mut llava.text_config.max_position_embeddings;
            *mpe = (*mpe).min(window as usize);
        }
        Ok(Self { llava, pinpoints, template })
    }
}

/// `image_grid_pinpoints` checked: a non-empty list of `[height, width]`, positive multiples of `side`.
pub fn pinpoints(v: &Value, side: usize) -> std::result::Result<Vec<[u32; 2]>, String> {
    let bad = |why: String| format!("field `image_grid_pinpoints`: {why}");
    let list: Vec<Vec<u64>> = serde_json::from_value(v.clone())
        .map_err(|e| bad(format!("expected a list of [height, width] pairs ({e})")))?;
    if list.is_empty() {
        return Err(bad("is empty".into()));
    }
    list.iter()
        .enumerate()
        .map(|(i, p)| match p.as_slice() {
            &[h, w] if h > 0 && w > 0 && h % side as u64 == 0 && w % side as u64 == 0 && h.max(w) <= 1 << 16 => {
                Ok([h as u32, w as u32])
            }
            _ => Err(bad(format!("entry {i} is {p:?}: expected [height, width], positive multiples of {side}"))),
        })
        .collect()
}
